"""One FAISS index wrapper for offline evaluation, the RL reward and online serving.

``VectorIndex`` hides the index kinds behind one contract: float32 embeddings in,
``(scores, ids)`` out with the caller's own item ids (int64 >= 0 or non-empty strings), rows
sorted best-first with equal scores ordered by id (FAISS itself orders ties differently per
metric), and padding (fewer items than k) marked by ``MISSING`` ids and the worst score.
Saved indexes carry a ``manifest.json`` tying them to the embedder that produced the vectors,
so a server never answers queries from model B with an index built by model A.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from afmrl.config import ConfigError, IndexConfig
from afmrl.utils.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
FORMAT_VERSION = 1
# Training points per k-means centroid below which FAISS warns and clusters get unreliable.
MIN_POINTS_PER_CENTROID = 39
MISSING_INT = -1
MISSING_STR = ""


class IndexMismatchError(ValueError):
    """A saved index does not belong to the embedder/dimension the caller expects."""


def missing_id(ids: np.ndarray) -> Any:
    """The padding/tombstone id for an id array: -1 for integer ids, "" for string ids."""
    return MISSING_STR if ids.dtype.kind == "U" else MISSING_INT


def as_ids(ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Item ids as a new int64 (all >= 0) or unicode (all non-empty) array; -1 and "" are
    reserved for empty result slots."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {ids.shape}")
    if ids.dtype.kind in "iu" or len(ids) == 0:
        ids = ids.astype(np.int64)
        if len(ids) and ids.min() < 0:
            raise ValueError("integer item ids must be >= 0 (-1 marks empty result slots)")
    elif ids.dtype.kind in "UO":
        ids = ids.astype(str)
        if np.any(ids == MISSING_STR):
            raise ValueError('string item ids must be non-empty ("" marks empty result slots)')
    else:
        raise ValueError(f"item ids must be integers or strings, got dtype {ids.dtype}")
    return ids


def as_embeddings(x: np.ndarray, dim: int | None = None, what: str = "embeddings") -> np.ndarray:
    """A C-contiguous float32 (n, dim) matrix, refusing NaN/inf (they poison FAISS silently)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what} must have shape (n, {dim or 'dim'}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf; check the embedder output")
    return x


def rank_results(scores: np.ndarray, ids: np.ndarray, metric: str, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Best-first top-k of candidate rows, ties ordered by id, padding last.

    Used for one index's FAISS output and for merging shards: for "ip" larger scores win, for
    "l2" smaller; padding carries the worst score (-inf / +inf) so it can never outrank an item.
    """
    key = -scores if metric == "ip" else scores
    order = np.lexsort((ids, key), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def prefix_transform(x: np.ndarray, config: IndexConfig) -> np.ndarray:
    """Matryoshka: keep the first ``dim_prefix`` dims, re-L2-normalised for inner product, so
    gallery and queries see the same transform."""
    if config.dim_prefix is None or config.dim_prefix == x.shape[1]:
        return x
    x = np.ascontiguousarray(x[:, :config.dim_prefix])
    if config.metric == "ip":
        faiss.normalize_L2(x)
    return x


def _clamp_clusters(wanted: int, n_train: int, what: str) -> int:
    """Largest cluster count <= wanted that k-means can fit with MIN_POINTS_PER_CENTROID each."""
    fitted = max(1, min(wanted, n_train // MIN_POINTS_PER_CENTROID))
    if fitted < wanted:
        log.info("%s lowered from %d to %d: %d training vectors allow at most %d points per "
                 "centroid", what, wanted, fitted, n_train, MIN_POINTS_PER_CENTROID)
    return fitted


def _new_faiss_index(dim: int, n_train: int, config: IndexConfig
                     ) -> tuple[faiss.Index, dict[str, Any]]:
    """An empty FAISS index of ``config.kind`` supporting ids, and the parameters it was built
    with (after clamping to the training-set size)."""
    metric = faiss.METRIC_INNER_PRODUCT if config.metric == "ip" else faiss.METRIC_L2
    if config.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlat(dim, metric)), {}
    if config.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
        hnsw.hnsw.efConstruction = config.hnsw_ef_construction
        return faiss.IndexIDMap2(hnsw), {"hnsw_m": config.hnsw_m,
                                         "hnsw_ef_construction": config.hnsw_ef_construction}
    if config.kind == "binary":  # sign bits, Hamming search; re-scored in VectorIndex.search
        return faiss.IndexIDMap2(faiss.IndexLSH(dim, dim, False, False)), \
            {"binary_rescore": config.binary_rescore}
    if n_train < 1:
        raise ValueError(f"index kind {config.kind!r} is trained on the vectors and needs at "
                         f"least one at build time; build it from the gallery embeddings")
    int8 = faiss.ScalarQuantizer.QT_8bit
    if config.kind == "sq8":
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, int8, metric)), {}
    nlist = _clamp_clusters(config.nlist, n_train, "index.nlist")
    quantizer = faiss.IndexFlat(dim, metric)
    if config.kind == "ivf_flat":
        return faiss.IndexIVFFlat(quantizer, dim, nlist, metric), {"nlist": nlist}
    if config.kind == "ivf_sq8":
        return faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, int8, metric), \
            {"nlist": nlist}
    if dim % config.pq_m:
        raise ConfigError(f"index.pq_m={config.pq_m} must divide the indexed dimension {dim}; "
                          f"choose a divisor such as {_divisors_near(dim, config.pq_m)}")
    fitted_bits = int(math.log2(max(2, n_train // MIN_POINTS_PER_CENTROID)))
    nbits = min(config.pq_nbits, fitted_bits)
    if nbits < config.pq_nbits:
        log.info("index.pq_nbits lowered from %d to %d for %d training vectors",
                 config.pq_nbits, nbits, n_train)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, config.pq_m, nbits, metric)
    return index, {"nlist": nlist, "pq_m": config.pq_m, "pq_nbits": nbits}


def _divisors_near(dim: int, wanted: int) -> list[int]:
    divisors = [d for d in range(1, dim + 1) if dim % d == 0]
    return sorted(divisors, key=lambda d: abs(d - wanted))[:3]


def _set_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Apply nprobe / efSearch through ParameterSpace, which sees through IDMap and GPU wrappers."""
    space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else \
        faiss.ParameterSpace()
    if config.kind in ("ivf_flat", "ivf_pq", "ivf_sq8"):
        space.set_index_parameter(index, "nprobe", config.nprobe)
    elif config.kind == "hnsw":
        space.set_index_parameter(index, "efSearch", config.hnsw_ef_search)


def _to_gpu(index: faiss.Index, config: IndexConfig) -> faiss.Index:
    """A copy of ``index`` spread over all visible GPUs, or a ConfigError saying what to fix."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        raise ConfigError(f"index.use_gpu=true but this faiss {faiss.__version__} build sees no "
                          f"GPU; install faiss-gpu (pip install faiss-gpu-cu12, the [gpu] extra) "
                          f"on a GPU node, or set index.use_gpu=false")
    if config.kind in ("hnsw", "sq8", "binary"):
        raise ConfigError(f"index.kind={config.kind} has no FAISS GPU implementation; use flat, "
                          f"ivf_flat, ivf_sq8 or ivf_pq with index.use_gpu=true, or set "
                          f"index.use_gpu=false")
    return faiss.index_cpu_to_all_gpus(index)


def read_manifest(path: str | Path, expected_model_hash: str | None = None,
                  expected_dim: int | None = None, layout: str = "single") -> dict[str, Any]:
    """Read ``path/manifest.json`` and refuse an index built for another embedder or dimension
    (or a sharded index where a single one is expected, and vice versa)."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {path}: not a saved afmrl index")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(f"index at {path} has format_version "
                                 f"{manifest.get('format_version')!r}, this afmrl reads "
                                 f"{FORMAT_VERSION}; rebuild the index")
    if manifest.get("layout") != layout:
        loader = ("ShardedIndex.load" if manifest.get("layout") == "sharded"
                  else "VectorIndex.load")
        raise IndexMismatchError(f"index at {path} is a {manifest.get('layout')!r} index, not "
                                 f"{layout!r}; open it with {loader}")
    if expected_model_hash is not None and manifest["model_hash"] != expected_model_hash:
        raise IndexMismatchError(
            f"index at {path} was built from embedder model hash {manifest['model_hash']!r}, "
            f"but the caller expects {expected_model_hash!r}; rebuild the index with this "
            f"embedder or load the matching model")
    if expected_dim is not None and manifest["dim"] != expected_dim:
        raise IndexMismatchError(f"index at {path} holds {manifest['dim']}-dim embeddings, but "
                                 f"the caller expects {expected_dim}; rebuild the index")
    if manifest["faiss_version"] != faiss.__version__:
        log.warning("index at %s was written by faiss %s, reading with faiss %s", path,
                    manifest["faiss_version"], faiss.__version__)
    return manifest


class VectorIndex:
    """A FAISS index plus the item ids it returns and the embedder it belongs to.

    Internally FAISS stores int64 *labels* = positions in ``self._ids`` (append-only); a removed
    item keeps its label with a tombstone id, so labels never shift. Not thread-safe: give each
    thread/actor its own instance (FAISS GPU indexes are not thread-safe, faiss#1572).
    """

    def __init__(self, index: faiss.Index, ids: np.ndarray, dim: int, config: IndexConfig,
                 model_hash: str, build_params: dict[str, Any]) -> None:
        self.dim = dim
        self.config = config
        self.model_hash = model_hash
        self.build_params = build_params
        self._cpu_index = index     # the source of truth: saved, and mutated on add/remove
        self._ids = ids
        self._index = _to_gpu(index, config) if config.use_gpu else index
        _set_search_params(self._index, config)

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: Sequence[Any] | np.ndarray, config: IndexConfig,
              model_hash: str) -> "VectorIndex":
        """Train (IVF kinds, on ``embeddings``) and fill an index. ``model_hash`` identifies the
        embedder run that produced the vectors; it is checked again at load time."""
        embeddings = as_embeddings(embeddings)
        dim = embeddings.shape[1]
        if config.dim_prefix is not None and config.dim_prefix > dim:
            raise ConfigError(f"index.dim_prefix={config.dim_prefix} exceeds the embedding "
                              f"dimension {dim}; use at most {dim} or null")
        index, params = _new_faiss_index(config.dim_prefix or dim, len(embeddings), config)
        if not index.is_trained:
            index.train(prefix_transform(embeddings, config))
        self = cls(index, as_ids([]), dim, config, model_hash, params)
        self.add(embeddings, ids)
        return self

    def __len__(self) -> int:
        return int(self._cpu_index.ntotal)

    def add(self, embeddings: np.ndarray, ids: Sequence[Any] | np.ndarray) -> None:
        """Add items; their ids must be new (ids are unique so ``remove`` is unambiguous)."""
        embeddings = as_embeddings(embeddings, self.dim)
        ids = as_ids(ids)
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        if len(ids) == 0:
            return
        if len(self._ids) and (ids.dtype.kind == "U") != (self._ids.dtype.kind == "U"):
            held = "string" if self._ids.dtype.kind == "U" else "integer"
            raise ValueError(f"this index holds {held} ids; got {ids.dtype} ids")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids).any():
            raise ValueError("duplicate item ids: each id may be added once (remove it first to "
                             "replace an item)")
        labels = np.arange(len(self._ids), len(self._ids) + len(ids), dtype=np.int64)
        x = prefix_transform(embeddings, self.config)
        self._cpu_index.add_with_ids(x, labels)
        if self._index is not self._cpu_index:
            self._index.add_with_ids(x, labels)
        self._ids = np.concatenate([self._ids, ids]) if len(self._ids) else ids

    def remove(self, ids: Sequence[Any] | np.ndarray) -> int:
        """Remove items by id (unknown ids are ignored); returns how many were removed."""
        if self.config.kind == "hnsw":
            raise NotImplementedError("FAISS HNSW indexes cannot delete items; use index.kind "
                                      "flat/ivf_flat/ivf_pq for a live catalog, or rebuild")
        ids = as_ids(ids)
        if len(ids) == 0 or len(self._ids) == 0:
            return 0
        labels = np.flatnonzero(np.isin(self._ids, ids)).astype(np.int64)
        if len(labels) == 0:
            return 0
        removed = self._cpu_index.remove_ids(labels)
        self._ids[labels] = missing_id(self._ids)
        if self._index is not self._cpu_index:  # GPU indexes cannot delete: copy again
            self._index = _to_gpu(self._cpu_index, self.config)
            _set_search_params(self._index, self.config)
        return int(removed)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)``, each (n_queries, k), best first, ties by id.

        Slots beyond the number of items hold ``missing_id`` and score -inf (ip) / +inf (l2).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = prefix_transform(as_embeddings(queries, self.dim, "queries"), self.config)
        scores, labels = self._rescored_binary_search(queries, k) \
            if self.config.kind == "binary" else self._index.search(queries, k)
        padding = labels < 0
        scores[padding] = -np.inf if self.config.metric == "ip" else np.inf
        ids = self._ids[np.where(padding, 0, labels)] if len(self._ids) else \
            np.full(labels.shape, MISSING_INT)
        ids[padding] = missing_id(ids)
        return rank_results(scores, ids, self.config.metric, k)

    def _rescored_binary_search(self, queries: np.ndarray, k: int
                                ) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top ``k x index.binary_rescore`` on the sign codes, re-scored by the float
        query's cosine with each candidate's +-1 code: better ranking than Hamming distance,
        and no float vectors kept. Rows are unsorted; ``search`` ranks them."""
        _, labels = self._index.search(queries, k * self.config.binary_rescore)
        valid = labels >= 0
        signs = self._index.reconstruct_batch(labels[valid])
        scores = np.full(labels.shape, -np.inf, dtype=np.float32)
        scores[valid] = np.einsum("nd,nd->n", queries[np.nonzero(valid)[0]], signs) \
            / np.sqrt(queries.shape[1])
        return scores, labels

    def memory_bytes(self) -> int:
        """Size of the serialised FAISS index plus the id array: about what it holds in RAM."""
        return int(faiss.serialize_index(self._cpu_index).nbytes + self._ids.nbytes)

    def manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "layout": "single", "model_hash": self.model_hash,
            "dim": self.dim, "dim_prefix": self.config.dim_prefix, "metric": self.config.metric,
            "kind": self.config.kind, "item_count": len(self), "build_params": self.build_params,
            "config": dataclasses.asdict(self.config), "faiss_version": faiss.__version__,
        }

    def save(self, path: str | Path) -> None:
        """Write index.faiss, ids.npy (no pickle) and manifest.json; all or nothing."""
        with atomic_path(path) as tmp:
            tmp.mkdir()
            faiss.write_index(self._cpu_index, str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, self._ids, allow_pickle=False)
            atomic_write_json(tmp / MANIFEST, self.manifest())

    @classmethod
    def load(cls, path: str | Path, expected_model_hash: str | None = None,
             expected_dim: int | None = None, use_gpu: bool | None = None) -> "VectorIndex":
        """Load a saved index, refusing one built for another embedder or dimension.

        ``use_gpu`` overrides the saved setting (an index built on CPU can serve on GPU).
        """
        path = Path(path)
        manifest = read_manifest(path, expected_model_hash, expected_dim)
        saved = manifest["config"]
        config = IndexConfig(**(saved if use_gpu is None else {**saved, "use_gpu": use_gpu}))
        index = faiss.read_index(str(path / INDEX_FILE))
        ids = np.load(path / IDS_FILE, allow_pickle=False)
        alive = int(np.count_nonzero(ids != missing_id(ids)))
        if index.ntotal != alive or index.ntotal != manifest["item_count"]:
            raise IndexMismatchError(f"index at {path} is inconsistent: FAISS holds "
                                     f"{index.ntotal} vectors, ids.npy {alive}, manifest "
                                     f"{manifest['item_count']}; rebuild it")
        return cls(index, ids, manifest["dim"], config, manifest["model_hash"],
                   manifest["build_params"])


load_index = VectorIndex.load

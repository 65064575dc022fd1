"""A gallery split over Ray actors: one ``VectorIndex`` per actor, searched in parallel.

Items are routed to shards by id (``shard_of``), a stateless rule, so any process can add or
remove an item on the shard that holds it. A search fans the whole query batch out to every
shard and merges the per-shard top-k with ``rank_results``, which knows that inner product is
"larger is better" and L2 "smaller is better" (a common sharding bug, faiss#2205) and drops the
padding of shards holding fewer than k items. Every remote call has a deadline and a dead shard
is reported by name instead of being waited on.
"""
from __future__ import annotations

import dataclasses
import json
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import ray

from afmrl.config import IndexConfig, RayConfig
from afmrl.index.faiss_index import (FORMAT_VERSION, MANIFEST, MISSING_STR, VectorIndex,
                                     as_embeddings, as_ids, rank_results, read_manifest)
from afmrl.utils.device import Placement, index_shards, require_cuda
from afmrl.utils.io import atomic_path, atomic_write_json
from afmrl.utils.ray_utils import get_with_timeout, kill_actors

DEFAULT_ACTOR_CPUS = 0.5


class ShardUnavailable(RuntimeError):
    """A shard (or evaluator) actor died; the message names it and says how to recover."""


def gather_from_actors(refs: Sequence[ray.ObjectRef], labels: Sequence[str], timeout_s: float,
                       what: str) -> list[Any]:
    """Results of one fan-out, all within one deadline; a dead actor raises ShardUnavailable
    naming it (``ray.get`` on a list would only say *some* actor died)."""
    deadline = time.monotonic() + timeout_s
    results = []
    for ref, label in zip(refs, labels):
        try:
            results.append(get_with_timeout(ref, max(0.0, deadline - time.monotonic()),
                                            f"{what} on {label}"))
        except ray.exceptions.RayActorError as error:
            raise ShardUnavailable(
                f"{what}: {label} is dead or unreachable; its in-memory index is lost: shut the "
                f"group down and load/build it again. Ray says: {error}") from error
    return results


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard of each item id: ``id % num_shards`` for integers (round-robin over consecutive
    ids), CRC32 of the UTF-8 string otherwise. Stateless and stable across processes."""
    if ids.dtype.kind == "U":
        ids = np.fromiter((zlib.crc32(i.encode()) for i in ids), dtype=np.int64, count=len(ids))
    return ids % num_shards


def files_per_shard(manifest: dict[str, Any], folder: Path, num_shards: int
                    ) -> dict[int, list[str]]:
    """The embedding files each of ``num_shards`` index shards reads: only its own when the
    embedding job split them for that shard count, else every file (the actor keeps its rows)."""
    routed = manifest.get("num_shards") == num_shards
    return {i: [str(folder / part["file"]) for part in manifest["shards"]
                if part["rows"] and (not routed or part["index_shard"] == i)]
            for i in range(num_shards)}


@ray.remote
class IndexShard:
    """One shard: a VectorIndex owned by one actor (calls are serialised; one index per actor)."""

    def __init__(self, shard: int, num_shards: int, placement: Placement | None = None) -> None:
        if placement is not None:  # FAISS on GPU: fail clearly where there is no CUDA
            require_cuda(placement)
        self.shard = shard
        self.num_shards = num_shards
        self.index: VectorIndex | None = None

    def build(self, embeddings: np.ndarray, ids: np.ndarray, config: IndexConfig,
              model_hash: str) -> int:
        self.index = VectorIndex.build(embeddings, ids, config, model_hash)
        return len(self.index)

    def build_from_files(self, paths: list[str], dim: int, config: IndexConfig,
                         model_hash: str) -> int:
        """Build from embedding-job shard files, keeping the rows routed here: the vectors go
        from storage to the shard that holds them, never through the driver. Rows are added in
        id order, so the saved shard does not depend on the order the job wrote its files."""
        from afmrl.index.embed_job import read_embedding_shard

        vectors, ids = [np.zeros((0, dim), np.float32)], [np.zeros(0, str)]
        for path in paths:
            part_vectors, part_ids = read_embedding_shard(path)
            mine = shard_of(as_ids(part_ids), self.num_shards) == self.shard
            vectors.append(part_vectors[mine])
            ids.append(part_ids[mine])
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        return self.build(np.concatenate(vectors)[order], all_ids[order], config, model_hash)

    def load(self, path: str, model_hash: str, dim: int, use_gpu: bool | None) -> int:
        self.index = VectorIndex.load(path, model_hash, dim, use_gpu)
        return len(self.index)

    def info(self) -> dict[str, Any]:
        return {"shard": self.shard, "num_shards": self.num_shards, "items": len(self.index),
                "config": self.index.config, "model_hash": self.index.model_hash,
                "dim": self.index.dim}

    def add(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        self.index.add(embeddings, ids)

    def remove(self, ids: np.ndarray) -> int:
        return self.index.remove(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def save(self, path: str) -> dict[str, Any]:
        self.index.save(path)
        return self.index.manifest()


def _shard_name(name: str, shard: int) -> str:
    return f"{name}-shard-{shard}"


class ShardedIndex:
    """Driver-side handle of a group of ``IndexShard`` actors; cheap to create and to pass on."""

    def __init__(self, shards: list[Any], config: IndexConfig, ray_config: RayConfig,
                 name: str | None = None) -> None:
        self.shards = shards
        self.config = config
        self.ray_config = ray_config
        self.name = name

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _spawn(num_shards: int, config: IndexConfig, ray_config: RayConfig, name: str | None,
               num_cpus: float) -> list[Any]:
        placement = index_shards(None, index=config, cpus=num_cpus, count=num_shards)
        shards = []
        for shard in range(num_shards):
            options: dict[str, Any] = placement.ray_options()
            if name is not None:
                options.update(name=_shard_name(name, shard), namespace=ray_config.namespace)
            try:
                shards.append(IndexShard.options(**options).remote(shard, num_shards, placement))
            except ValueError as error:  # the name is taken
                kill_actors(shards)
                raise ValueError(f"cannot create index '{name}' in namespace "
                                 f"'{ray_config.namespace}': {error}. Connect to it with "
                                 f"ShardedIndex.connect or shut it down first") from error
        return shards

    def _labels(self) -> list[str]:
        return [f"index shard {i}" + (f" ('{_shard_name(self.name, i)}')" if self.name else "")
                for i in range(len(self.shards))]

    def _call(self, what: str, calls: dict[int, Any]) -> dict[int, Any]:
        """Wait for ``{shard: ObjectRef}`` within the call timeout, naming a dead shard."""
        labels = self._labels()
        results = gather_from_actors(list(calls.values()), [labels[i] for i in calls],
                                     self.ray_config.call_timeout_s, what)
        return dict(zip(calls, results))

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: Sequence[Any] | np.ndarray, config: IndexConfig,
              model_hash: str, ray_config: RayConfig = RayConfig(), name: str | None = None,
              num_cpus: float = DEFAULT_ACTOR_CPUS) -> "ShardedIndex":
        """Split items over ``config.num_shards`` new actors and build each shard's index.

        ``name`` makes the actors named (``<name>-shard-<i>`` in ``ray_config.namespace``) so
        other processes can ``connect``; they live as long as the creating process.
        """
        embeddings, ids = as_embeddings(embeddings), as_ids(ids)
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        self = cls(cls._spawn(config.num_shards, config, ray_config, name, num_cpus), config,
                   ray_config, name)
        route = shard_of(ids, config.num_shards)
        try:
            self._call("build", {i: shard.build.remote(embeddings[route == i], ids[route == i],
                                                       config, model_hash)
                                 for i, shard in enumerate(self.shards)})
        except BaseException:
            self.shutdown()
            raise
        return self

    @classmethod
    def build_from_embeddings(cls, folder: str | Path, config: IndexConfig, model_hash: str,
                              ray_config: RayConfig = RayConfig(),
                              num_cpus: float = DEFAULT_ACTOR_CPUS) -> "ShardedIndex":
        """Build from the output of ``afmrl.index.embed_job``: every shard actor reads the
        embedding files itself (on a multi-node cluster ``folder`` must be on shared storage)
        and builds its part in parallel with the others (``files_per_shard`` says which
        files each reads)."""
        from afmrl.index.embed_job import EMBEDDINGS_MANIFEST

        folder = Path(folder).resolve()
        manifest = json.loads((folder / EMBEDDINGS_MANIFEST).read_text())
        if manifest["model_hash"] != model_hash:
            raise ValueError(f"{folder} holds embeddings of model {manifest['model_hash'][:12]}, "
                             f"not {model_hash[:12]}; rerun the embedding job")
        if not manifest["rows"]:
            raise ValueError(f"{folder} holds no embeddings: no usable catalog rows to index")
        paths = files_per_shard(manifest, folder, config.num_shards)
        self = cls(cls._spawn(config.num_shards, config, ray_config, None, num_cpus), config,
                   ray_config)
        try:
            built = self._call("build", {i: shard.build_from_files.remote(
                                             paths[i], manifest["dim"], config, model_hash)
                                         for i, shard in enumerate(self.shards)})
        except BaseException:
            self.shutdown()
            raise
        if sum(built.values()) != manifest["rows"]:
            self.shutdown()
            raise RuntimeError(f"the shards of {folder} hold {sum(built.values())} items, its "
                               f"manifest counts {manifest['rows']}")
        return self

    @classmethod
    def load(cls, path: str | Path, ray_config: RayConfig = RayConfig(),
             expected_model_hash: str | None = None, expected_dim: int | None = None,
             name: str | None = None, num_cpus: float = DEFAULT_ACTOR_CPUS,
             use_gpu: bool | None = None) -> "ShardedIndex":
        """Start one actor per saved shard and load it; refuses a mismatched embedder/dim.

        Every actor reads its shard directory itself: on a multi-node cluster ``path`` must be
        on storage all nodes see.
        """
        path = Path(path).resolve()
        manifest = read_manifest(path, expected_model_hash, expected_dim, layout="sharded")
        saved = manifest["config"]
        config = IndexConfig(**(saved if use_gpu is None else {**saved, "use_gpu": use_gpu}))
        self = cls(cls._spawn(len(manifest["shards"]), config, ray_config, name, num_cpus),
                   config, ray_config, name)
        try:
            self._call("load", {i: shard.load.remote(str(path / sub), manifest["model_hash"],
                                                     manifest["dim"], use_gpu)
                                for i, (shard, sub) in enumerate(zip(self.shards,
                                                                     manifest["shards"]))})
        except BaseException:
            self.shutdown()
            raise
        return self

    @classmethod
    def connect(cls, name: str, ray_config: RayConfig = RayConfig()) -> "ShardedIndex":
        """Attach to a named sharded index created by another process."""
        try:
            first = ray.get_actor(_shard_name(name, 0), namespace=ray_config.namespace)
        except ValueError as error:
            raise ValueError(f"no index named '{name}' in Ray namespace "
                             f"'{ray_config.namespace}'; build or load it with name='{name}' "
                             f"first") from error
        info = gather_from_actors([first.info.remote()], [f"index shard 0 of '{name}'"],
                                  ray_config.call_timeout_s, "connect")[0]
        shards = [first] + [ray.get_actor(_shard_name(name, i), namespace=ray_config.namespace)
                            for i in range(1, info["num_shards"])]
        return cls(shards, info["config"], ray_config, name)

    def shutdown(self) -> None:
        """Kill the shard actors (their in-memory indexes are gone; saved copies stay)."""
        kill_actors(self.shards)

    # -- data ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        infos = self._call("len", {i: s.info.remote() for i, s in enumerate(self.shards)})
        return sum(info["items"] for info in infos.values())

    def _route(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        route = shard_of(ids, len(self.shards))
        return {i: route == i for i in range(len(self.shards)) if np.any(route == i)}

    def add(self, embeddings: np.ndarray, ids: Sequence[Any] | np.ndarray) -> None:
        """Add items on their shards. Ids already present make their shard refuse its part
        (other shards may have added theirs): remove then add to replace an item."""
        embeddings, ids = as_embeddings(embeddings), as_ids(ids)
        if len(ids) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        self._call("add", {i: self.shards[i].add.remote(embeddings[mask], ids[mask])
                           for i, mask in self._route(ids).items()})

    def remove(self, ids: Sequence[Any] | np.ndarray) -> int:
        """Remove items by id from the shards holding them; returns how many were removed."""
        ids = as_ids(ids)
        removed = self._call("remove", {i: self.shards[i].remove.remote(ids[mask])
                                        for i, mask in self._route(ids).items()})
        return sum(removed.values())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)`` over all shards, identical to one unsharded index (for exact
        kinds), best first, ties by id, padding (``missing_id``, worst score) last."""
        queries_ref = ray.put(as_embeddings(queries))
        parts = self._call("search", {i: s.search.remote(queries_ref, k)
                                      for i, s in enumerate(self.shards)})
        scores = np.concatenate([p[0] for p in parts.values()], axis=1)
        id_parts = [p[1] for p in parts.values()]
        if any(p.dtype.kind == "U" for p in id_parts):
            # A shard that never held an item pads with integer -1: make it string padding.
            id_parts = [p if p.dtype.kind == "U" else np.full(p.shape, MISSING_STR)
                        for p in id_parts]
        return rank_results(scores, np.concatenate(id_parts, axis=1), self.config.metric, k)

    def save(self, path: str | Path) -> None:
        """Save every shard under ``path/shard-<i>`` plus one manifest; all or nothing.

        Like ``load``, on a multi-node cluster ``path`` must be on shared storage.
        """
        with atomic_path(Path(path).resolve()) as tmp:
            tmp.mkdir()
            subdirs = [f"shard-{i:03d}" for i in range(len(self.shards))]
            manifests = self._call("save", {i: s.save.remote(str(tmp / sub))
                                            for i, (s, sub) in enumerate(zip(self.shards,
                                                                             subdirs))})
            first = manifests[0]
            atomic_write_json(tmp / MANIFEST, {
                "format_version": FORMAT_VERSION, "layout": "sharded",
                "model_hash": first["model_hash"], "dim": first["dim"],
                "dim_prefix": self.config.dim_prefix, "metric": self.config.metric,
                "kind": self.config.kind, "config": dataclasses.asdict(self.config),
                "item_count": sum(m["item_count"] for m in manifests.values()),
                "routing": "int id % num_shards, or crc32(utf-8 id) % num_shards",
                "shards": subdirs, "shard_build_params": [m["build_params"]
                                                          for m in manifests.values()],
                "faiss_version": faiss.__version__,
            })

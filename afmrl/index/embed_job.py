"""Embed a catalog as a Ray Data job: the catalog file streams through an autoscaling pool of
embedder actors and lands as Parquet shards of (item_id, embedding), never whole in the driver.

Why: embedding the gallery in the driver (one process, the whole frame in memory) does not grow
with a cluster. Here the read, validation and embedding run in Ray tasks and actors (GPU actors
when ``models.inference_gpus`` > 0), the pool grows from ``index.embed_min_actors`` to
``index.embed_max_actors`` with the backlog, and the output is Parquet files already split by
index shard (``shard=<i>/``, the routing of ``afmrl.index.sharded.shard_of`` for
``index.num_shards``). ``manifest.json`` lists each file with its row count and index shard, so
each index shard actor reads only its own files.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.utils.device import Placement, catalog_embedders, torch_device
from afmrl.utils.io import atomic_path, atomic_write_json, fingerprint_tree

log = logging.getLogger("afmrl")
EMBEDDINGS_MANIFEST = "manifest.json"
# Rows per Ray Data block and batch; each actor call embeds them in model batches of
# index.embed_batch_size. Blocks are cut to this size before the pool: a catalog file is read as
# a few large blocks, and an actor's output leaves only when its block is done, so a 10^6-row
# file kept one actor busy per block and moved nothing for longer than the stall deadline.
BLOCK_ROWS = 2048


class CatalogEmbedder:
    """One embedder actor of the pool: catalog rows in, (item_id, embedding, index shard) rows
    out."""

    def __init__(self, embedder_path: str, keys: tuple[str, ...], batch_size: int,
                 num_shards: int, placement: Placement) -> None:
        from afmrl.models.embedders import load_embedder

        self.model = load_embedder(embedder_path, torch_device(placement))
        self.keys = keys
        self.batch_size = batch_size
        self.num_shards = num_shards

    def __call__(self, rows: pd.DataFrame) -> pd.DataFrame:
        from afmrl.index.faiss_index import as_ids
        from afmrl.index.sharded import shard_of
        from afmrl.models.embedders import embed
        from afmrl.train.data import catalog_inputs

        ids = rows["item_id"].astype(str).to_numpy()
        vectors = embed(self.model, catalog_inputs(rows, self.keys), self.batch_size)
        return pd.DataFrame({"item_id": ids, "embedding": list(vectors),
                             "shard": shard_of(as_ids(ids), self.num_shards)})


def gallery_rows(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` that passed validation (``error`` empty)."""
    return rows[(rows["error"] == "") & (rows["split"] == split)]


def embed_catalog(config: AfmrlConfig, embedder_path: str | Path, catalog_path: str | Path,
                  out_dir: str | Path, split: str = "catalog") -> Path:
    """Embed the usable ``split`` rows of a Parquet/JSONL/CSV catalog into Parquet shards under
    ``out_dir`` (replaced atomically); returns ``out_dir``."""
    from afmrl.data.catalogs import read_catalog_file

    dataset = read_catalog_file(catalog_path, check_images=False)
    dataset = dataset.map_batches(gallery_rows, batch_format="pandas", fn_kwargs={"split": split})
    return embed_rows(config, embedder_path, dataset, out_dir,
                      {"catalog": str(Path(catalog_path).resolve()), "split": split})


def embed_rows(config: AfmrlConfig, embedder_path: str | Path, dataset: Any,
               out_dir: str | Path, source: dict[str, Any]) -> Path:
    """Embed the rows of a Ray Dataset of validated catalog rows (``embed_catalog``'s, or a
    stage's gallery already in memory) into Parquet shards under ``out_dir``; ``source`` says
    where the rows came from in the manifest."""
    import pyarrow.parquet as pq
    import ray.data

    from afmrl.utils.ray_utils import pool_needs, stall_deadline

    placement = catalog_embedders(config)
    index = config.index
    started = time.perf_counter()
    embedded = dataset.repartition(target_num_rows_per_block=BLOCK_ROWS).map_batches(
        CatalogEmbedder, batch_format="pandas", batch_size=BLOCK_ROWS,
        compute=ray.data.ActorPoolStrategy(min_size=index.embed_min_actors,
                                           max_size=index.embed_max_actors),
        fn_constructor_kwargs={"embedder_path": str(embedder_path),
                               "keys": tuple(config.extract.attribute_keys),
                               "batch_size": index.embed_batch_size,
                               "num_shards": index.num_shards, "placement": placement},
        **placement.ray_options())
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        with stall_deadline(embedded, config.ray.call_timeout_s, "embedding job",
                            needs=pool_needs(placement, index.embed_min_actors)):
            embedded.write_parquet(str(tmp), partition_cols=["shard"])
        shards = [{"file": path.relative_to(tmp).as_posix(),
                   "rows": pq.read_metadata(path).num_rows,
                   "index_shard": int(path.parent.name.removeprefix("shard="))}
                  for path in sorted(tmp.glob("shard=*/*.parquet"))]
        dim = _dim_of(tmp, shards)
        atomic_write_json(tmp / EMBEDDINGS_MANIFEST, {
            **source, "embedder": str(Path(embedder_path).resolve()),
            "model_hash": fingerprint_tree(embedder_path), "dim": dim,
            "num_shards": index.num_shards, "rows": sum(s["rows"] for s in shards),
            "shards": shards})
    log.info("embed job: %d rows in %d files -> %s (%.1fs)", sum(s["rows"] for s in shards),
             len(shards), out_dir, time.perf_counter() - started)
    return out_dir


def embed_frame(config: AfmrlConfig, embedder_path: str | Path, frame: pd.DataFrame,
                out_dir: str | Path, source: str) -> Path:
    """Embed validated catalog rows held in memory (a stage's gallery) with the embedding job
    into ``out_dir``; ``source`` names them in the manifest."""
    import ray.data

    from afmrl.data.schema import CATALOG_COLUMNS
    from afmrl.utils.ray_utils import preflight

    preflight([catalog_embedders(config)], f"the embedding job for {source}")
    frame = frame[[c for c in CATALOG_COLUMNS if c in frame]]
    if "attributes" in frame:  # dicts, JSON text and None mix after relabelling: one Arrow type
        frame = frame.assign(attributes=[json.dumps(a) if isinstance(a, dict) else a or ""
                                         for a in frame["attributes"]])
    # Blocks of the job's batch size, so a pool of several embedders shares the rows.
    rows = ray.data.from_pandas([frame.iloc[i:i + BLOCK_ROWS]
                                 for i in range(0, len(frame), BLOCK_ROWS)] or [frame])
    return embed_rows(config, embedder_path, rows, out_dir, {"catalog": source})


def embed_in_order(config: AfmrlConfig, embedder_path: str | Path, frame: pd.DataFrame,
                   work: Path, source: str) -> np.ndarray:
    """``frame``'s embeddings (float32, one row per row of ``frame``, in its order) by the
    embedding job, for a consumer that needs the vectors in memory (an evaluation or the RL
    reward's gallery). The job's files go under ``work``, removed afterwards."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # a killed run's leftovers
    try:
        folder = embed_frame(config, embedder_path, frame, work / "embeddings", source)
        return embeddings_in_order(folder, frame["item_id"].astype(str).tolist())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def embeddings_in_order(folder: str | Path, item_ids: list[str]) -> np.ndarray:
    """The job's embeddings of ``item_ids`` as float32 (n, dim), in that order (the job writes
    rows by index shard, in no set order). Shards are read one at a time into the result, so the
    peak holds the result and one shard, not every shard and then the result."""
    folder = Path(folder)
    manifest = json.loads((folder / EMBEDDINGS_MANIFEST).read_text())
    if not manifest["rows"]:
        raise ValueError(f"{folder}: the embedding job wrote no rows")
    wanted = pd.Index([str(i) for i in item_ids])
    if not wanted.is_unique:
        raise ValueError(f"{folder}: the item ids asked for are not unique")
    result = np.empty((len(wanted), manifest["dim"]), dtype=np.float32)
    found = np.zeros(len(wanted), dtype=bool)
    for shard in manifest["shards"]:
        if shard["rows"]:
            vectors, ids = read_embedding_shard(folder / shard["file"])
            at = wanted.get_indexer(ids)
            keep = at >= 0
            result[at[keep]] = vectors[keep]
            found[at[keep]] = True
    if not found.all():
        raise ValueError(f"{folder}: {int((~found).sum())} of {len(wanted)} item ids have no "
                         f"embedding")
    return result


def _dim_of(folder: Path, shards: list[dict[str, Any]]) -> int | None:
    """The embedding dimension from the first non-empty shard's schema: Ray's tensor type
    records the vector shape (None: no rows). Reading the column instead brought a whole shard
    of vectors into the driver (+177 MiB at 100k rows)."""
    import pyarrow.parquet as pq

    for shard in shards:
        if shard["rows"]:
            vectors = pq.read_schema(folder / shard["file"]).field("embedding").type
            return int(np.prod(vectors.shape))
    return None


def _embedding_matrix(table: Any) -> np.ndarray:
    """The ``embedding`` column as float32 (n, dim). Ray Data writes vectors as its tensor
    extension type (a list array underneath); readers without Ray see the plain list."""
    import pyarrow as pa

    column = table.column("embedding").combine_chunks()
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(table), -1)


def read_embedding_shard(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One shard as (float32 (n, dim) embeddings, item ids): what one index builder loads."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["item_id", "embedding"])
    return _embedding_matrix(table), np.asarray(table.column("item_id").to_pylist(), dtype=str)

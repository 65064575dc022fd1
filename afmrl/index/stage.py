"""Index stage: embed the catalog gallery with a trained embedder and save a sharded index.

Beside the FAISS shards it writes the lexical index (``lexical/``, same rows and shard count)
and ``items.parquet`` (what a search result shows: title, image,
attributes) so serving needs nothing but this folder and the embedder it names.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.utils.io import atomic_path, atomic_write_json

log = logging.getLogger("afmrl")
ITEMS_FILE = "items.parquet"
SOURCE_FILE = "embedder.json"


def build_catalog_index(config: AfmrlConfig, embedder_path: Path, catalog: pd.DataFrame,
                        out_dir: Path, tracker=None) -> Path:
    """Embed every usable catalog item (split 'catalog') with the embedding job (Ray Data over
    an embedder actor pool on the device ``models.inference_gpus`` asks for) and save the
    sharded index, each shard built by its actor from the embedding files."""
    from afmrl.index.embed_job import EMBEDDINGS_MANIFEST, embed_frame
    from afmrl.index.lexical import build_catalog_lexical
    from afmrl.index.sharded import ShardedIndex
    from afmrl.train.data import usable

    gallery = usable(catalog)
    gallery = gallery[gallery["split"] == "catalog"].reset_index(drop=True)
    started = time.perf_counter()
    # The embeddings sit beside the index and go once it is saved; a killed run leaves them
    # for the rerun to replace.
    work = out_dir.with_name(f".{out_dir.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    embeddings = embed_frame(config, embedder_path, gallery, work / "embeddings",
                             "the index stage's gallery")
    embedded = json.loads((embeddings / EMBEDDINGS_MANIFEST).read_text())
    model_hash = embedded["model_hash"]
    index = ShardedIndex.build_from_embeddings(embeddings, config.index, model_hash, config.ray)
    try:
        index.save(out_dir)
    finally:
        index.shutdown()
    build_catalog_lexical(gallery, config.extract.attribute_keys, config.index.num_shards,
                          out_dir)
    with atomic_path(out_dir / ITEMS_FILE) as tmp:
        gallery[["item_id", "group_id", "title", "text", "image_uri", "attributes",
                 "coarse_group", "content_hash"]].to_parquet(tmp, index=False)
    atomic_write_json(out_dir / SOURCE_FILE, {"embedder": str(Path(embedder_path).resolve()),
                                              "model_hash": model_hash,
                                              "dim": int(embedded["dim"])})
    shutil.rmtree(work)
    seconds = time.perf_counter() - started
    log.info("index: %d items, dim %d, %d shards -> %s (%.1fs)", len(gallery),
             embedded["dim"], config.index.num_shards, out_dir, seconds)
    if tracker is not None:
        tracker.log_metrics({"index_items": len(gallery), "index_seconds": seconds})
        tracker.log_inputs({"index_model_hash": model_hash})
    return out_dir

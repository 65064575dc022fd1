"""Index stage: embed the catalog gallery with a trained embedder and save a sharded index.

Beside the FAISS shards it writes the lexical index (``lexical/``, same rows and shard count)
and ``items.parquet`` (what a search result shows: title, image,
attributes) so serving needs nothing but this folder and the embedder it names.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.utils.io import atomic_path, atomic_write_json, fingerprint_tree

log = logging.getLogger("afmrl")
ITEMS_FILE = "items.parquet"
SOURCE_FILE = "embedder.json"


def build_catalog_index(config: AfmrlConfig, embedder_path: Path, catalog: pd.DataFrame,
                        out_dir: Path, tracker=None) -> Path:
    """Embed every usable catalog item (split 'catalog') in an ``EmbedderActor`` on the device
    ``models.inference_gpus`` asks for, and save the sharded index."""
    from afmrl.index.lexical import build_catalog_lexical
    from afmrl.index.sharded import ShardedIndex
    from afmrl.rl.reward import EmbedderActor
    from afmrl.train.data import catalog_inputs, usable
    from afmrl.utils.device import inference_embedder
    from afmrl.utils.ray_utils import get_with_timeout, kill_actors, preflight

    gallery = usable(catalog)
    gallery = gallery[gallery["split"] == "catalog"].reset_index(drop=True)
    placement = inference_embedder(config, "index")
    preflight([placement], "the index-stage embedder")
    started = time.perf_counter()
    embedder = EmbedderActor.options(**placement.ray_options()).remote(str(embedder_path),
                                                                      placement)
    try:
        embeddings = get_with_timeout(
            embedder.embed.remote(catalog_inputs(gallery, config.extract.attribute_keys)),
            config.ray.call_timeout_s, "embedding the index gallery")
    finally:
        kill_actors([embedder])
    model_hash = fingerprint_tree(embedder_path)
    index = ShardedIndex.build(embeddings, gallery["item_id"].tolist(), config.index, model_hash,
                               config.ray)
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
                                              "dim": int(embeddings.shape[1])})
    seconds = time.perf_counter() - started
    log.info("index: %d items, dim %d, %d shards -> %s (%.1fs)", len(gallery),
             embeddings.shape[1], config.index.num_shards, out_dir, seconds)
    if tracker is not None:
        tracker.log_metrics({"index_items": len(gallery), "index_seconds": seconds})
        tracker.log_inputs({"index_model_hash": model_hash})
    return out_dir

"""A small servable index without running the pipeline: for tests, benchmarks and trying the API.

The mini grocery catalog (31 packaged products) with attributes from its metadata (the same
teacher the generator is distilled from), embedded by an *untrained* embedder. Rankings are
meaningless, but every piece (embedder export, sharded index, items.parquet, manifest hashes) is
the real artefact the index stage writes, so serving code sees exactly what it sees in production.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from afmrl.config import AfmrlConfig
from afmrl.data import grocery_catalog
from afmrl.extract.sft import metadata_attributes
from afmrl.index.faiss_index import MANIFEST
from afmrl.index.stage import build_catalog_index
from afmrl.models.embedders import build_embedder, save_embedder
from afmrl.utils.io import sha256_json

MINI_ITEMS = "items_mini_packages.csv"


def sample_index(config: AfmrlConfig, root: str | Path) -> Path:
    """Build (once per ``config.models``) an embedder and an index under ``root``; returns the
    index folder. Needs Ray."""
    root = Path(root) / sha256_json(dataclasses.asdict(config.models))[:12]
    index_dir = root / "index"
    if (index_dir / MANIFEST).is_file():
        return index_dir
    embedder_dir = root / "embedder"
    if not embedder_dir.is_dir():
        save_embedder(build_embedder(config.models, root / "cache"), embedder_dir)
    catalog = grocery_catalog(config.data.root, MINI_ITEMS)
    catalog["attributes"] = [json.dumps(metadata_attributes(row)) for _, row in catalog.iterrows()]
    return build_catalog_index(config, embedder_dir, catalog, index_dir)

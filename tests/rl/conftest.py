"""Shared RAR fixtures: the mini grocery catalog, its teacher attributes (standing in for
stage-0 output) and an untrained embedder export (stage-1 stand-in)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from afmrl.config import REPO_ROOT, AfmrlConfig, load_config
from afmrl.data.catalogs import grocery_catalog
from afmrl.extract.sft import metadata_attributes, target_json
from afmrl.models.embedders import build_embedder, save_embedder

NAMESPACE = "afmrl-test-rl"


@pytest.fixture(scope="session")
def rl_config() -> Callable[..., AfmrlConfig]:
    """``rl_config(run_dir, *overrides)``: the mini profile under ``run_dir``; k=3 keeps
    Recall@k informative on 31 products (k=10 is a third of the gallery)."""
    def make(run_dir: Path, *overrides: str) -> AfmrlConfig:
        return load_config(REPO_ROOT / "configs" / "mini.yaml",
                           [f"run_dir={run_dir}", f"ray.namespace={NAMESPACE}", "rl.recall_k=3",
                            *overrides])
    return make


@pytest.fixture(scope="session")
def catalog() -> pd.DataFrame:
    config = load_config(None, ["data.grocery_items_file=items_mini_packages.csv"])
    return grocery_catalog(config.data.root, config.data.grocery_items_file)


@pytest.fixture(scope="session")
def attributes_table(catalog) -> pd.DataFrame:
    """item_id -> attributes JSON for the catalog items, as `afmrl extract` writes them."""
    gallery = catalog[catalog["split"] == "catalog"]
    return pd.DataFrame({"item_id": gallery["item_id"],
                         "attributes": [json.dumps(metadata_attributes(row))
                                        for _, row in gallery.iterrows()]})


@pytest.fixture(scope="session")
def embedder_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embedder")
    return save_embedder(build_embedder(load_config(None).models, root / "cache"),
                         root / "embedder")


@pytest.fixture(scope="session")
def perfect_answers(catalog, attributes_table) -> tuple[pd.DataFrame, list[str]]:
    """One query photo per product, and each product's catalog attributes as its generated
    answer (in the generator's target JSON): the answers a perfect generator would give."""
    keys = load_config(REPO_ROOT / "configs" / "mini.yaml").extract.attribute_keys
    queries = catalog[catalog["split"] == "test"].groupby("group_id").head(1)
    gallery = catalog[catalog["split"] == "catalog"]
    by_product = dict(zip(gallery["group_id"], attributes_table.set_index("item_id").loc[
        gallery["item_id"], "attributes"]))
    return queries, [target_json(json.loads(by_product[g]), keys) for g in queries["group_id"]]

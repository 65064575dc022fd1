"""Catalog sources in the afmrl schema: user files (read with Ray Data) and the shared data sets.

- ``read_catalog_file``: Parquet / JSONL / CSV in the afmrl schema, through Ray Data so large
  catalogs stream across the cluster.
- ``grocery_catalog``: GroceryStoreDataset (natural phone photos vs iconic catalog images).
- ``pricerunner_catalog``: PriceRunner offer titles in identical-product clusters.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from afmrl.config import DataConfig
from afmrl.data.schema import CatalogError, validate_catalog

_READERS = {".parquet": "read_parquet", ".jsonl": "read_json", ".json": "read_json",
            ".csv": "read_csv"}


def read_catalog_file(path: str | Path, check_images: bool = True):
    """Read a catalog file with Ray Data and validate it; returns a ``ray.data.Dataset``.

    Whole-file problems (missing columns, duplicate ids) raise ``CatalogError``; row problems end
    up in the ``error`` column.
    """
    import ray.data

    path = Path(path)
    if not path.exists():
        raise CatalogError(f"catalog not found: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise CatalogError(f"{path}: unsupported catalog format '{path.suffix}'; use one of "
                           f"{sorted(_READERS)}")
    dataset = getattr(ray.data, reader)(str(path))
    # Duplicate ids span blocks, so they are checked on the id column before row validation.
    ids = pd.Series(dataset.select_columns(["item_id"]).to_pandas()["item_id"]) \
        if "item_id" in dataset.columns() else None
    if ids is None:
        validate_catalog(dataset.limit(1).to_pandas(), str(path))  # raises: missing columns
    duplicated = ids[ids.astype(str).duplicated()]
    if len(duplicated):
        raise CatalogError(f"{path}: {len(duplicated)} duplicate item_id(s), e.g. "
                           f"{duplicated.head(3).tolist()}; item ids must be unique")
    return dataset.map_batches(validate_catalog, batch_format="pandas",
                               fn_kwargs={"source": str(path), "check_images": check_images})


def grocery_catalog(root: str | Path, items_file: str = "items.csv",
                    check_images: bool = True) -> pd.DataFrame:
    """GroceryStoreDataset rows: ``split`` is catalog (81 iconic items) / train / val / test.

    Query rows (natural photos) keep their product's title in ``title`` as metadata; the
    benchmark never shows it to a model (a shopper's photo has no title).
    """
    root = Path(root) / "grocery_store"
    items = root / items_file
    if not items.is_file():
        raise CatalogError(f"grocery data not found at {items}; set data.root to the folder "
                           f"holding grocery_store/ (../shared/data)")
    raw = pd.read_csv(items, dtype={"item_id": str}, keep_default_na=False)
    text = raw["description"].astype(str)
    volume = raw["volume"].astype(str).str.strip()
    frame = pd.DataFrame({
        "item_id": raw["item_id"],
        "group_id": raw["group_id"],
        "title": raw["title"],
        "text": (text + (" " + volume).where(volume != "", "")).str.strip(),
        "image_uri": [str(root / p) for p in raw["image_path"]],
        "split": raw["split"],
        "coarse_group": raw["coarse_group"],
        "coarse_group_id": raw["coarse_group_id"],
    })
    return validate_catalog(frame, str(items), check_images=check_images)


def pricerunner_catalog(root: str | Path) -> pd.DataFrame:
    """PriceRunner offers: text only; ``group_id`` = cluster (same real product).

    ``group_label`` (the canonical product name) is the answer and is deliberately not kept.
    """
    items = Path(root) / "pricerunner" / "items.csv"
    if not items.is_file():
        raise CatalogError(f"pricerunner data not found at {items}; set data.root")
    raw = pd.read_csv(items, dtype={"item_id": str}, keep_default_na=False)
    frame = pd.DataFrame({
        "item_id": raw["item_id"], "group_id": raw["group_id"], "title": raw["title"],
        "split": "catalog", "coarse_group": raw["category"],
        "coarse_group_id": raw["category_id"],
    })
    return validate_catalog(frame, str(items), check_images=False)


def load_catalog(config: DataConfig) -> pd.DataFrame:
    """The configured catalog as a validated pandas frame (small catalogs; the pipeline default)."""
    if config.catalog == "grocery":
        frame = grocery_catalog(config.root, config.grocery_items_file)
    elif config.catalog == "pricerunner":
        frame = pricerunner_catalog(config.root)
    else:
        frame = read_catalog_file(config.catalog).to_pandas()
    if config.max_items:  # a seeded random sample per split (files are ordered by product)
        sampled = frame.sample(frac=1.0, random_state=0).groupby("split").head(config.max_items)
        frame = frame.loc[sorted(sampled.index)]
    return frame.reset_index(drop=True)

"""Catalog sources in the afmrl schema: user files (read with Ray Data) and the shared data sets.

- ``read_catalog_file``: Parquet / JSONL / CSV in the afmrl schema, through Ray Data so large
  catalogs stream across the cluster.
- ``grocery_catalog``: GroceryStoreDataset (natural phone photos vs iconic catalog images).
- ``pricerunner_catalog``: PriceRunner offer titles in identical-product clusters.

The two bundled data sets are ordinary catalogs: everything specific to them (photo-only
queries, the seeded cluster split) happens here, and training and evaluation never branch on
which catalog they were given.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from afmrl.config import DataConfig
from afmrl.data.schema import CatalogError, conform, duplicate_ids_error, validate_catalog

_READERS = {".parquet": "read_parquet", ".jsonl": "read_json", ".json": "read_json",
            ".csv": "read_csv"}


def read_catalog_file(path: str | Path, check_images: bool = True):
    """Read a catalog file with Ray Data and validate it; returns a ``ray.data.Dataset`` that
    streams through the cluster, never whole in the driver.

    Whole-file problems (missing columns, duplicate ids) raise ``CatalogError``; row problems end
    up in the ``error`` column.
    """
    path = Path(path)
    dataset = _raw_rows(path)
    count, examples = duplicate_ids(dataset)
    if count:
        raise duplicate_ids_error(str(path), count, examples)
    return _validated(dataset, path, check_images)


def _raw_rows(path: Path):
    """The file's rows as read, after the whole-file checks that need no pass over the rows."""
    import ray.data

    if not path.exists():
        raise CatalogError(f"catalog not found: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise CatalogError(f"{path}: unsupported catalog format '{path.suffix}'; use one of "
                           f"{sorted(_READERS)}")
    dataset = getattr(ray.data, reader)(str(path))
    if "item_id" not in dataset.columns():
        validate_catalog(dataset.limit(1).to_pandas(), str(path))  # raises: missing columns
    return dataset


def _validated(dataset, path: Path, check_images: bool):
    return dataset.map_batches(validate_catalog, batch_format="pandas",
                               fn_kwargs={"source": str(path), "check_images": check_images})


def duplicate_ids(dataset) -> tuple[int, list[str]]:
    """How many rows repeat an earlier row's ``item_id`` (as text), and up to three such ids.

    Repeats span blocks. Workers hash their ids to 64 bits and the driver streams only the
    hashes (8 bytes a row, not the ids); rows whose hash repeats are then fetched to count and
    name the real ids (a hash collision is not a duplicate). A group-by would keep even the
    hashes out of the driver, but its shuffle costs about 15 s of Ray Data start-up per catalog
    on 2 cores, small catalogs included.
    """
    ids = dataset.select_columns(["item_id"])
    hashes = [batch["hash"] for batch in ids.map_batches(_id_hashes, batch_format="pandas")
              .iter_batches(batch_format="numpy", batch_size=None)]
    values, counts = np.unique(np.concatenate(hashes) if hashes else np.empty(0, np.uint64),
                               return_counts=True)
    if not (counts > 1).any():
        return 0, []
    suspects = ids.map_batches(_rows_hashed_to, batch_format="pandas",
                               fn_kwargs={"hashes": values[counts > 1]}).to_pandas()["item_id"]
    repeated = suspects[suspects.duplicated()]
    return len(repeated), repeated.drop_duplicates().head(3).tolist()


def _id_hashes(batch: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"hash": pd.util.hash_array(batch["item_id"].astype(str).to_numpy())})


def _rows_hashed_to(batch: pd.DataFrame, hashes: np.ndarray) -> pd.DataFrame:
    ids = batch["item_id"].astype(str)
    return pd.DataFrame({"item_id": ids[np.isin(pd.util.hash_array(ids.to_numpy()), hashes)]})


def grocery_catalog(root: str | Path, items_file: str = "items.csv",
                    check_images: bool = True) -> pd.DataFrame:
    """GroceryStoreDataset rows: ``split`` is catalog (81 iconic items) / train / val / test.

    Query rows (natural phone photos) are photo-only: a shopper's photo has no title, so their
    title and text are empty and only the catalog item of their product carries words.

    A catalog title names its product kind, as a shop's does: the data set's name for the item
    gets its coarse group when it lacks it ("Granny Smith" -> "Granny Smith Apple", "Anjou" ->
    "Anjou Pear"), so a query for "green apple" can find it by title.

    Text queries: each catalog item's own shop listing title (``shop_title``, e.g. "Apple Granny
    Smith Class 1", "Filmjölk 3%") is a text-only query row ``shop/<item_id>`` of its product,
    held out like the photos: products are split between ``val`` and ``test`` (seeded, whole
    products) where the file has both, else all go to the photos' one held-out split.
    """
    root = Path(root) / "grocery_store"
    items = root / items_file
    if not items.is_file():
        raise CatalogError(f"grocery data not found at {items}; set data.root to the folder "
                           f"holding grocery_store/ (../shared/data)")
    raw = pd.read_csv(items, dtype={"item_id": str}, keep_default_na=False)
    text = raw["description"].astype(str)
    volume = raw["volume"].astype(str).str.strip()
    is_catalog = raw["split"] == "catalog"
    frame = pd.DataFrame({
        "item_id": raw["item_id"],
        "group_id": raw["group_id"],
        "title": named_with_kind(raw["title"], raw["coarse_group"]).where(is_catalog, ""),
        "text": (text + (" " + volume).where(volume != "", "")).str.strip().where(is_catalog, ""),
        "image_uri": [str(root / p) for p in raw["image_path"]],
        "split": raw["split"],
        "coarse_group": raw["coarse_group"],
        "coarse_group_id": raw["coarse_group_id"],
    })
    frame = pd.concat([frame, shop_title_queries(frame, raw["shop_title"].astype(str))],
                      ignore_index=True)
    return validate_catalog(frame, str(items), check_images=check_images)


def named_with_kind(titles: pd.Series, kinds: pd.Series) -> pd.Series:
    """Each title with its kind ("Passion-Fruit" read as "passion fruit") appended unless the
    title already contains it."""
    kinds = kinds.astype(str).str.replace("-", " ").str.strip()
    lacking = [kind.lower() not in title.lower() for title, kind in zip(titles, kinds)]
    return titles.where(~pd.Series(lacking, index=titles.index), titles + " " + kinds)


def shop_title_queries(frame: pd.DataFrame, shop_titles: pd.Series, seed: int = 0
                       ) -> pd.DataFrame:
    """Text-only query rows from the catalog items' shop titles (see ``grocery_catalog``)."""
    held_out = [s for s in ("val", "test") if s in set(frame["split"])]
    items = frame[(frame["split"] == "catalog") & (shop_titles.str.strip() != "")]
    if not held_out or items.empty:
        return frame.iloc[:0]
    split = cluster_split(items["group_id"], {s: 1 / len(held_out) for s in held_out}, seed)
    return items.assign(item_id="shop/" + items["item_id"], text="", image_uri="", split=split,
                        title=shop_titles[items.index].str.strip())


PRICERUNNER_SPLIT = {"train": 0.70, "val": 0.15, "test": 0.15}


def cluster_split(groups: pd.Series, shares: dict[str, float], seed: int) -> pd.Series:
    """A seeded split of whole products: every row of a group gets its group's split, so the
    products of ``test`` are unseen in ``train``."""
    unique = np.random.default_rng(seed).permutation(groups.unique())
    bounds = np.cumsum([0.0, *shares.values()]) * len(unique)
    names = np.empty(len(unique), dtype=object)
    for name, start, stop in zip(shares, bounds[:-1].round().astype(int),
                                 bounds[1:].round().astype(int)):
        names[start:stop] = name
    return groups.map(dict(zip(unique, names)))


def pricerunner_catalog(root: str | Path, seed: int = 0) -> pd.DataFrame:
    """PriceRunner offers: text only; ``group_id`` = cluster (same real product); whole clusters
    split 70/15/15 into train/val/test by ``seed``. No ``catalog`` rows, so evaluation is
    leave-one-out within the split (a title finds the other offers of its cluster).

    ``group_label`` (the canonical product name) is the answer and is deliberately not kept.
    """
    items = Path(root) / "pricerunner" / "items.csv"
    if not items.is_file():
        raise CatalogError(f"pricerunner data not found at {items}; set data.root")
    raw = pd.read_csv(items, dtype={"item_id": str}, keep_default_na=False)
    frame = pd.DataFrame({
        "item_id": raw["item_id"], "group_id": raw["group_id"], "title": raw["title"],
        "split": cluster_split(raw["group_id"], PRICERUNNER_SPLIT, seed),
        "coarse_group": raw["category"],
        "coarse_group_id": raw["category_id"],
    })
    return validate_catalog(frame, str(items), check_images=False)


def load_catalog(config: DataConfig) -> pd.DataFrame:
    """The configured catalog as a validated pandas frame (small catalogs; the pipeline default)."""
    if config.catalog == "grocery":
        frame = grocery_catalog(config.root, config.grocery_items_file)
    elif config.catalog == "pricerunner":
        frame = pricerunner_catalog(config.root, config.split_seed)
    else:
        # The frame is in the driver anyway: conform checks its ids there, with no hashing pass.
        path = Path(config.catalog)
        frame = conform(_validated(_raw_rows(path), path, True).to_pandas(), str(path))
    if config.max_groups:  # a seeded sample of whole products (keeps every split's protocol)
        groups = frame["group_id"].unique()
        chosen = np.random.default_rng(config.split_seed).choice(
            groups, min(config.max_groups, len(groups)), replace=False)
        frame = frame[frame["group_id"].isin(chosen)]
    if config.max_items:  # a seeded random sample per split and query kind (photo / text), so
        # a split's few text queries are not drawn away by its many photos (files are ordered
        # by product)
        shuffled = frame.sample(frac=1.0, random_state=0)
        sampled = shuffled.groupby([shuffled["split"], shuffled["image_uri"] != ""]).head(
            config.max_items)
        frame = frame.loc[sorted(sampled.index)]
    return frame.reset_index(drop=True)

"""The afmrl catalog schema: one row per item, whatever the source.

| column          | meaning                                                         |
|-----------------|-----------------------------------------------------------------|
| item_id         | unique id of the row (str)                                      |
| group_id        | the *product*: rows sharing it are the identical product (int)  |
| title           | product title (may be empty for photo-only query rows)          |
| text            | description / extra text                                        |
| image_uri       | absolute local path of the image, or "" when the row has none   |
| attributes      | JSON object string of key attributes, or "" (filled by stage 0) |
| split           | catalog / train / val / test                                    |
| coarse_group    | coarse category (e.g. Milk), for hard batches and per-group eval|
| coarse_group_id | its integer id                                                  |
| content_hash    | sha256 of the row's content (text + image bytes): resume key    |
| error           | "" or why the row is unusable (kept and counted, never dropped) |
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import pandas as pd

from afmrl.data.images import image_error

REQUIRED_COLUMNS = ("item_id", "group_id", "title")
OPTIONAL_DEFAULTS = {"text": "", "image_uri": "", "attributes": "", "split": "catalog",
                     "coarse_group": "", "coarse_group_id": -1}
CATALOG_COLUMNS = REQUIRED_COLUMNS + tuple(OPTIONAL_DEFAULTS) + ("content_hash", "error")


class CatalogError(ValueError):
    """The catalog as a whole cannot be used (missing columns, duplicate ids)."""


def conform(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check required columns, fill optional ones, fix dtypes; raise CatalogError if impossible."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CatalogError(
            f"{source}: missing required column(s) {missing}; a catalog needs "
            f"{list(REQUIRED_COLUMNS)} and may have {list(OPTIONAL_DEFAULTS)}")
    frame = frame.copy()
    for column, default in OPTIONAL_DEFAULTS.items():
        if column not in frame.columns:
            frame[column] = default
    for column in ("item_id", "title", "text", "image_uri", "attributes", "split", "coarse_group"):
        frame[column] = frame[column].fillna("").astype(str)
    for column in ("group_id", "coarse_group_id"):
        values = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        # Only whole numbers within int64: 1.5 must not silently become product 1.
        bad_rows = ~(values.abs() < 2**63) | (values != values.round())
        if bad_rows.any():
            bad = frame.loc[bad_rows, "item_id"].head(3).tolist()
            raise CatalogError(f"{source}: column {column} must be an integer; bad rows {bad}")
        frame[column] = pd.to_numeric(frame[column]).astype("int64")
    empty = frame["item_id"].str.strip() == ""
    if empty.any():
        raise CatalogError(f"{source}: {int(empty.sum())} empty item_id(s) (rows "
                           f"{frame.index[empty][:3].tolist()}); every row needs an id")
    duplicated = frame["item_id"][frame["item_id"].duplicated()]
    if len(duplicated):
        raise duplicate_ids_error(source, len(duplicated), duplicated.head(3).tolist())
    return frame


def duplicate_ids_error(source: str, count: int, examples: list[str]) -> CatalogError:
    """The one message for repeated ids, whether found in a frame or across a Ray Dataset."""
    return CatalogError(f"{source}: {count} duplicate item_id(s), e.g. {examples}; item ids "
                        f"must be unique")


def row_error(title: str, image_uri: str, check_images: bool) -> str:
    if not title.strip() and not image_uri:
        return "empty title and no image"
    if image_uri and check_images:
        return image_error(image_uri) or ""
    return ""


def content_hash(row: Mapping[str, str]) -> str:
    """Identity of a row's *content*: a rerun skips rows whose hash it has already processed."""
    digest = hashlib.sha256()
    for column in ("item_id", "title", "text"):
        digest.update(str(row[column]).encode())
        digest.update(b"\0")
    if row["image_uri"] and Path(row["image_uri"]).is_file():
        digest.update(Path(row["image_uri"]).read_bytes())
    return digest.hexdigest()


def validate_catalog(frame: pd.DataFrame, source: str = "catalog",
                     check_images: bool = True) -> pd.DataFrame:
    """Conform to the schema and add per-row ``error`` and ``content_hash`` columns.

    Whole-catalog problems raise CatalogError; row problems (empty title, unreadable image) are
    recorded in ``error`` so they are counted and reported rather than silently dropped.
    """
    frame = conform(frame, source)
    frame["error"] = [row_error(t, u, check_images)
                      for t, u in zip(frame["title"], frame["image_uri"])]
    frame["content_hash"] = [content_hash(row) for row in  # dicts: iterrows took 10x longer
                             frame[["item_id", "title", "text", "image_uri"]].to_dict("records")]
    return frame[list(CATALOG_COLUMNS)].reset_index(drop=True)

"""Importers: product data in the two shapes it usually comes in -> an afmrl catalog file.

- ``import_pairs``: entity-matching pair data in the Magellan/DeepMatcher layout (``tableA.csv``,
  ``tableB.csv`` with an ``id`` column plus attributes; ``train.csv``/``valid.csv``/``test.csv``
  with ``ltable_id,rtable_id,label``). Products (``group_id``) are the connected components of
  the positive pairs. Every tableB record is a gallery (``catalog``) item; a tableA record is a
  ``test`` query when it has a positive pair in test.csv, else ``val`` (valid.csv), else
  ``train`` (train.csv); tableA records with no positive pair stay in the gallery as distractors.
- ``import_folder``: ``DIR/<product>/*.jpg`` (+ optional ``title.txt``); one seeded image per
  product is its gallery item, the other photos are split into train/val/test queries.

Bad input raises ``ImportFormatError`` naming the file and line; the output is written
atomically (a failed import leaves no file behind).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import pandas as pd

from afmrl.data.schema import CatalogError, validate_catalog
from afmrl.extract.schema import MAX_VALUE_CHARS
from afmrl.utils.io import atomic_path

PAIR_FILES = (("test", "test.csv"), ("val", "valid.csv"), ("train", "train.csv"))
PAIR_COLUMNS = ("ltable_id", "rtable_id", "label")
TITLE_COLUMNS = ("title", "name")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TITLE_FILE = "title.txt"


class ImportFormatError(CatalogError):
    """Input files that cannot be imported; the message names the file (and line)."""


@dataclass(frozen=True)
class CsvTable:
    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # file line where each row starts (1 = the header)


def read_csv_table(path: Path) -> CsvTable:
    """A strict CSV reader: UTF-8, one header, every row as wide as the header, line numbers kept
    (quoted fields may span lines, so row index != file line)."""
    if not path.is_file():
        raise ImportFormatError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ImportFormatError(f"{path}:{line}: not UTF-8 (byte {error.start}: "
                                f"{error.reason}); re-encode the file as UTF-8") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise ImportFormatError(f"{path}:{line}: contains a NUL byte; not a text CSV file")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows, lines = [], []
    start = 1
    try:
        for row in reader:
            if header is None:
                header = [h.strip() for h in row]
            elif row:  # blank lines carry no record
                if len(row) != len(header):
                    raise ImportFormatError(
                        f"{path}:{start}: {len(row)} fields, the header has {len(header)}")
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as error:
        raise ImportFormatError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    if not header or not any(header):
        raise ImportFormatError(f"{path}: empty file; expected a header line")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ImportFormatError(f"{path}:1: duplicate column name(s) {duplicated}")
    return CsvTable(path, header, rows, lines)


def _column(table: CsvTable, name: str) -> int:
    lowered = [h.lower() for h in table.header]
    if name not in lowered:
        raise ImportFormatError(f"{table.path}:1: no '{name}' column; the header is "
                                f"{table.header}")
    return lowered.index(name)


def _id_key(value: str) -> str:
    """What makes two ids the same to a reader: equal after NFKC (e.g. 'é' composed or not)."""
    return unicodedata.normalize("NFKC", value)


def _read_entities(path: Path) -> tuple[CsvTable, dict[str, int]]:
    """A table and its id -> row index; empty, duplicate or look-alike ids are errors."""
    table = read_csv_table(path)
    id_col = _column(table, "id")
    index: dict[str, int] = {}
    seen: dict[str, int] = {}
    for row_no, (row, line) in enumerate(zip(table.rows, table.lines)):
        item = row[id_col].strip()
        if not item:
            raise ImportFormatError(f"{path}:{line}: empty id")
        key = _id_key(item)
        if key in seen:
            first = seen[key]
            other = table.rows[first][id_col].strip()
            same = "duplicate id" if other == item else "id that looks identical to"
            raise ImportFormatError(f"{path}:{line}: {same} {other!r} (line "
                                    f"{table.lines[first]}): {item!r}; ids must be unique")
        seen[key] = row_no
        index[item] = row_no
    return table, index


def _read_pairs(path: Path, left: dict[str, int], right: dict[str, int]
                ) -> list[tuple[str, str]]:
    """The positive (ltable_id, rtable_id) pairs of one pair file, every id and label checked."""
    table = read_csv_table(path)
    cols = [_column(table, name) for name in PAIR_COLUMNS]
    positives = []
    for row, line in zip(table.rows, table.lines):
        l_id, r_id, label = (row[c].strip() for c in cols)
        if l_id not in left:
            raise ImportFormatError(f"{path}:{line}: ltable_id {l_id!r} is not an id of "
                                    f"tableA.csv")
        if r_id not in right:
            raise ImportFormatError(f"{path}:{line}: rtable_id {r_id!r} is not an id of "
                                    f"tableB.csv")
        if label not in ("0", "1"):
            raise ImportFormatError(f"{path}:{line}: label must be 0 or 1, got {label!r}")
        if label == "1":
            positives.append((l_id, r_id))
    return positives


class _Components:
    """Union-find over item ids: connected components of the positive pairs = products."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass(frozen=True)
class ColumnRoles:
    """Which attribute columns become what: the title, free text, key/value attributes."""
    title: str | None
    text: tuple[str, ...]
    attributes: tuple[str, ...]
    category: str | None


def _is_price(name: str) -> bool:
    return "price" in name.lower()


def _is_number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
    except ValueError:
        return False
    return True


def column_roles(tables: list[CsvTable]) -> ColumnRoles:
    """Decide the roles from both tables' headers and values.

    Title: a 'title'/'name' column, else the first column holding non-numeric text (never a
    price). Long free-text columns (median value longer than an attribute value may be) feed
    ``text``; short ones are key/value ``attributes`` and also readable in ``text``; a price
    column is an attribute only. A 'category' column also gives ``coarse_group``.
    """
    header = list(dict.fromkeys(h for t in tables for h in t.header if h.lower() != "id"))
    values: dict[str, list[str]] = {h: [] for h in header}
    for table in tables:
        for name in header:
            if name in table.header:
                col = table.header.index(name)
                values[name].extend(r[col].strip() for r in table.rows if r[col].strip())
    lowered = {h.lower(): h for h in header}
    title = next((lowered[t] for t in TITLE_COLUMNS if t in lowered), None)
    if title is None:
        title = next((h for h in header if not _is_price(h) and values[h]
                      and not all(_is_number(v) for v in values[h])), None)
    long_text = {h for h in header if values[h] and median(map(len, values[h])) > MAX_VALUE_CHARS}
    rest = [h for h in header if h != title]
    return ColumnRoles(
        title=title,
        text=tuple(h for h in rest if not _is_price(h)),
        attributes=tuple(h for h in rest if h not in long_text),
        category=lowered.get("category"))


def _record(row: list[str], header: list[str], roles: ColumnRoles) -> dict[str, str]:
    cells = {h: " ".join(v.split()) for h, v in zip(header, row)}
    attributes = {h: cells[h] for h in roles.attributes if cells.get(h)}
    text = "; ".join(cells[h] if h not in roles.attributes else f"{h}: {cells[h]}"
                     for h in roles.text if cells.get(h))
    return {"title": cells.get(roles.title, "") if roles.title else "", "text": text,
            "attributes": json.dumps(attributes, ensure_ascii=False) if attributes else "",
            "coarse_group": cells.get(roles.category, "") if roles.category else ""}


def import_pairs(root: str | Path) -> pd.DataFrame:
    """A Magellan/DeepMatcher folder as a validated catalog frame (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ImportFormatError(f"{root}: not a folder")
    table_a, ids_a = _read_entities(root / "tableA.csv")
    table_b, ids_b = _read_entities(root / "tableB.csv")
    present = [(split, root / name) for split, name in PAIR_FILES if (root / name).is_file()]
    if not present:
        raise ImportFormatError(f"{root}: no pair file; expected at least one of "
                                f"{[name for _, name in PAIR_FILES]}")
    components = _Components()
    query_split: dict[str, str] = {}
    for split, path in present:  # test first: a record positive in test is a test query
        for l_id, r_id in _read_pairs(path, ids_a, ids_b):
            components.union(f"a:{l_id}", f"b:{r_id}")
            query_split.setdefault(l_id, split)
    roles = column_roles([table_a, table_b])
    records, group_of_root = [], {}
    for prefix, table in (("a", table_a), ("b", table_b)):
        id_col = _column(table, "id")
        for row in table.rows:
            raw_id = row[id_col].strip()
            item_id = f"{prefix}:{raw_id}"
            group = group_of_root.setdefault(components.find(item_id), len(group_of_root))
            split = query_split.get(raw_id, "catalog") if prefix == "a" else "catalog"
            records.append({"item_id": item_id, "group_id": group, "split": split,
                            **_record(row, table.header, roles)})
    frame = pd.DataFrame.from_records(records)
    codes = {g: i for i, g in enumerate(sorted(set(frame["coarse_group"]) - {""}))}
    frame["coarse_group_id"] = [codes.get(g, -1) for g in frame["coarse_group"]]
    return validate_catalog(frame, str(root), check_images=False)


def _split_images(images: list[Path], rng: random.Random, val_fraction: float,
                  test_fraction: float) -> dict[Path, str]:
    """One gallery image; of the rest at least one test photo, then val (if 3+), then train."""
    images = sorted(images)
    rng.shuffle(images)
    rest = images[1:]
    n_test = max(1, round(test_fraction * len(rest))) if rest else 0
    n_val = max(1, round(val_fraction * len(rest))) if len(rest) >= 3 else 0
    n_val = min(n_val, len(rest) - n_test)
    splits = {images[0]: "catalog"} if images else {}
    for position, path in enumerate(rest):
        splits[path] = "test" if position < n_test else "val" if position < n_test + n_val \
            else "train"
    return splits


def _read_title(path: Path) -> str:
    try:
        return " ".join(path.read_text(encoding="utf-8-sig").split())
    except UnicodeDecodeError as error:
        raise ImportFormatError(f"{path}: not UTF-8 (byte {error.start}); re-encode it as "
                                f"UTF-8") from None


def import_folder(root: str | Path, seed: int = 0, val_fraction: float = 0.2,
                  test_fraction: float = 0.2) -> pd.DataFrame:
    """``DIR/<product>/*.jpg`` (+ ``title.txt``) as a validated catalog frame.

    The gallery image carries the product's title; the other photos are image-only queries (a
    shopper's photo has no title, and the title would give the answer away). A product folder
    without images is kept as a title-only gallery row (or an ``error`` row if it has no title).
    """
    root = Path(root)
    if not root.is_dir():
        raise ImportFormatError(f"{root}: not a folder")
    products = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not products:
        raise ImportFormatError(f"{root}: no product folders; expected {root}/<product>/*.jpg")
    records = []
    for group, product in enumerate(products):
        title_file = product / TITLE_FILE
        title = _read_title(title_file) if title_file.is_file() else ""
        images = [p for p in product.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        splits = _split_images(images, random.Random(f"{seed}:{product.name}"), val_fraction,
                               test_fraction)
        if not splits:
            records.append({"item_id": product.name, "group_id": group, "title": title,
                            "image_uri": "", "split": "catalog"})
        for path, split in sorted(splits.items()):
            records.append({"item_id": f"{product.name}/{path.name}", "group_id": group,
                            "title": title if split == "catalog" else "",
                            "image_uri": str(path.resolve()), "split": split})
    return validate_catalog(pd.DataFrame.from_records(records), str(root))


def write_catalog(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write a catalog atomically in the format its suffix names (Parquet, JSONL or CSV)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".csv"):
        raise ImportFormatError(f"{out}: unsupported output format '{out.suffix}'; use .parquet, "
                                f".jsonl or .csv")
    with atomic_path(out) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif suffix == ".jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_csv(tmp, index=False)
    return out


def summary(frame: pd.DataFrame) -> str:
    splits = frame["split"].value_counts().to_dict()
    errors = int((frame["error"] != "").sum())
    return (f"{len(frame)} rows, {frame['group_id'].nunique()} products, splits {splits}, "
            f"{errors} row(s) with an error")


def main(argv: list[str] | None = None) -> int:
    """``afmrl catalog import-pairs DIR --out F`` / ``afmrl catalog import-folder DIR --out F``."""
    parser = argparse.ArgumentParser(prog="afmrl catalog",
                                     description="Import product data as an afmrl catalog.")
    sub = parser.add_subparsers(dest="what", required=True)
    pairs = sub.add_parser("import-pairs", help="Magellan/DeepMatcher entity-matching folder")
    folder = sub.add_parser("import-folder", help="DIR/<product>/*.jpg (+ title.txt)")
    for p in (pairs, folder):
        p.add_argument("dir", help="input folder")
        p.add_argument("--out", required=True, help="catalog file (.parquet, .jsonl or .csv)")
    folder.add_argument("--seed", type=int, default=0, help="seed of the per-product split")
    folder.add_argument("--val-fraction", type=float, default=0.2)
    folder.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    try:
        frame = import_pairs(args.dir) if args.what == "import-pairs" else import_folder(
            args.dir, args.seed, args.val_fraction, args.test_fraction)
        write_catalog(frame, args.out)
    except CatalogError as error:
        print(f"afmrl catalog: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {summary(frame)}")
    return 0

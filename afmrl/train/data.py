"""Training pairs for any catalog in the afmrl schema, under the split contract.

Splits are a contract: training pairs come only from ``train`` rows (and ``catalog`` rows where
the recipe pairs a catalog item's image with its own text), model selection reads only ``val``
(``afmrl.eval``), and ``test`` rows are touched only by evaluation. The BM25 statistics of the
AGCL loss are fitted without ``test`` rows too.

A ``train`` row is paired with its product's ``catalog`` item when the catalog has one (a
shopper photo <-> the catalog item), else with another ``train`` row of its product (offers of
one cluster, as in PriceRunner).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from afmrl.extract.schema import attribute_text
from afmrl.models.embedders import EmbedInput, item_text

PAIR_SPLITS = ("train", "catalog")  # val selects models, test evaluates: never training data


@dataclass(frozen=True)
class PairSet:
    """Aligned training pairs: queries[i] and candidates[i] are the same product."""
    queries: list[EmbedInput]
    candidates: list[EmbedInput]
    product_ids: np.ndarray  # int64 (N,)
    coarse_ids: np.ndarray  # int64 (N,)
    attribute_texts: list[str]  # canonical attribute text of candidate i (BM25 input)
    query_item_ids: list[str]  # the rows each side came from (split-contract checks)
    candidate_item_ids: list[str]

    def __len__(self) -> int:
        return len(self.queries)


def _attrs(catalog: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    return [attribute_text(a, keys) for a in catalog["attributes"]]


def catalog_inputs(catalog: pd.DataFrame, keys: Sequence[str]) -> list[EmbedInput]:
    """Gallery side: image + title + description + attributes (whatever the row has)."""
    return [EmbedInput(item_text(t, d, a), u or None)
            for t, d, a, u in zip(catalog["title"], catalog["text"], _attrs(catalog, keys),
                                  catalog["image_uri"])]


def query_inputs(rows: pd.DataFrame, keys: Sequence[str], with_attributes: bool
                 ) -> list[EmbedInput]:
    """Query side: whatever the row has (a shopper's photo, a title, a description), enriched
    with its generated attributes when ``with_attributes`` (the AFMRL query)."""
    attributes = _attrs(rows, keys) if with_attributes else [""] * len(rows)
    return [EmbedInput(item_text(t, d, a), u or None)
            for t, d, a, u in zip(rows["title"], rows["text"], attributes, rows["image_uri"])]


def usable(catalog: pd.DataFrame) -> pd.DataFrame:
    return catalog[catalog["error"] == ""]


def training_pairs(catalog: pd.DataFrame, keys: Sequence[str], with_attributes: bool,
                   splits: Sequence[str] = ("train",), seed: int = 0) -> PairSet:
    """Pairs from ``splits`` (see the module docstring); 'catalog' gives image <-> own text of
    the catalog items that have both."""
    bad = [s for s in splits if s not in PAIR_SPLITS]
    if bad:
        raise ValueError(f"training pairs may only come from {list(PAIR_SPLITS)}, not {bad}: "
                         f"'val' selects models and 'test' is for evaluation only")
    catalog = usable(catalog)
    rng = np.random.default_rng(seed)
    gallery = catalog[catalog["split"] == "catalog"]
    # One catalog item per product (a seeded pick where a product has several).
    representative = gallery.sample(frac=1.0, random_state=seed).drop_duplicates("group_id")
    by_product = dict(zip(representative["group_id"], representative.index))
    inputs = dict(zip(catalog.index, catalog_inputs(catalog, keys)))
    attributes = dict(zip(catalog.index, _attrs(catalog, keys)))
    left: list[EmbedInput] = []
    right: list[EmbedInput] = []
    left_rows: list[int] = []
    right_rows: list[int] = []
    for split in splits:
        rows = catalog[catalog["split"] == split]
        if split == "catalog":
            rows = rows[(rows["image_uri"] != "") & ((rows["title"] + rows["text"]).str.strip()
                                                    != "")]
            left += [EmbedInput(image=u) for u in rows["image_uri"]]
            right += [EmbedInput(item_text(t, d, a)) for t, d, a in
                      zip(rows["title"], rows["text"], _attrs(rows, keys))]
            left_rows += rows.index.tolist()
            right_rows += rows.index.tolist()
            continue
        with_item = rows[rows["group_id"].isin(by_product)]
        left += query_inputs(with_item, keys, with_attributes)
        left_rows += with_item.index.tolist()
        right_rows += [by_product[g] for g in with_item["group_id"]]
        right += [inputs[by_product[g]] for g in with_item["group_id"]]
        # Products without a catalog item: each row paired with the next of a random cycle.
        for _, group in rows[~rows["group_id"].isin(by_product)].groupby("group_id"):
            if len(group) < 2:
                continue
            order = rng.permutation(group.index.to_numpy())
            partners = np.roll(order, -1)
            left += query_inputs(catalog.loc[order], keys, with_attributes)
            right += [inputs[i] for i in partners]
            left_rows += order.tolist()
            right_rows += partners.tolist()
    if not left:
        raise ValueError(f"no training pairs in splits {list(splits)}: the catalog has splits "
                         f"{sorted(catalog['split'].unique())}; set train.pair_splits (and give "
                         f"'train' rows a catalog item or a second row of the same product)")
    left_frame = catalog.loc[left_rows]
    return PairSet(left, right, left_frame["group_id"].to_numpy(np.int64),
                   left_frame["coarse_group_id"].to_numpy(np.int64),
                   [attributes[i] for i in right_rows], catalog.loc[left_rows, "item_id"].tolist(),
                   catalog.loc[right_rows, "item_id"].tolist())


def bm25_corpus(catalog: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Attribute texts the AGCL loss fits its BM25 statistics on: every row but ``test``."""
    rows = catalog[catalog["split"] != "test"]
    return [t for t in _attrs(rows, keys) if t] or [""]

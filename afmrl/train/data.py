"""Training pairs and benchmark sets built from a catalog plus its extracted attributes.

Grocery (multimodal): a training pair is (shopper photo [+ its generated attributes],
catalog item = iconic image + title + description + attributes) of the same product; the
benchmark asks the test photos to find their product among the 81 catalog items.
PriceRunner (text): a pair is two offers of the same cluster; the benchmark is leave-one-out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from afmrl.extract.schema import attribute_text
from afmrl.models.embedders import EmbedInput, item_text


@dataclass(frozen=True)
class PairSet:
    """Aligned training pairs: queries[i] and candidates[i] are the same product."""
    queries: list[EmbedInput]
    candidates: list[EmbedInput]
    product_ids: np.ndarray  # int64 (N,)
    coarse_ids: np.ndarray  # int64 (N,)
    attribute_texts: list[str]  # canonical attribute text of candidate i (BM25 input)

    def __len__(self) -> int:
        return len(self.queries)


@dataclass(frozen=True)
class RetrievalSet:
    """A benchmark: queries search the gallery; correct = same product id."""
    queries: list[EmbedInput]
    query_products: np.ndarray
    query_coarse: np.ndarray
    gallery: list[EmbedInput]
    gallery_products: np.ndarray
    gallery_coarse: np.ndarray
    leave_one_out: bool = False  # queries are gallery items; each must skip itself


def _attrs(catalog: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    return [attribute_text(a, keys) for a in catalog["attributes"]]


def catalog_inputs(catalog: pd.DataFrame, keys: Sequence[str]) -> list[EmbedInput]:
    """Gallery side: image + title + description + attributes (whatever the row has)."""
    return [EmbedInput(item_text(t, d, a), u or None)
            for t, d, a, u in zip(catalog["title"], catalog["text"], _attrs(catalog, keys),
                                  catalog["image_uri"])]


def query_inputs(photos: pd.DataFrame, keys: Sequence[str], with_attributes: bool
                 ) -> list[EmbedInput]:
    """Query side: the shopper's photo, enriched with generated attributes (the AFMRL query)."""
    texts = _attrs(photos, keys) if with_attributes else [""] * len(photos)
    return [EmbedInput(t, u) for t, u in zip(texts, photos["image_uri"])]


def usable(catalog: pd.DataFrame) -> pd.DataFrame:
    return catalog[catalog["error"] == ""]


def grocery_pairs(catalog: pd.DataFrame, keys: Sequence[str], with_attributes: bool,
                  splits: Sequence[str] = ("train",)) -> PairSet:
    """Pairs from each split: 'catalog' gives image <-> text of the same catalog item; any other
    split gives shopper photo (+ its attributes) <-> the product's catalog item."""
    catalog = usable(catalog)
    gallery = catalog[catalog["split"] == "catalog"].drop_duplicates("group_id")
    by_product = dict(zip(gallery["group_id"], catalog_inputs(gallery, keys)))
    attr_by_product = dict(zip(gallery["group_id"], _attrs(gallery, keys)))
    queries, candidates, products, coarse = [], [], [], []
    for split in splits:
        if split == "catalog":
            rows = gallery[gallery["image_uri"] != ""]
            queries += [EmbedInput(image=u) for u in rows["image_uri"]]
            candidates += [EmbedInput(item_text(t, d, a)) for t, d, a in
                           zip(rows["title"], rows["text"], _attrs(rows, keys))]
        else:
            rows = catalog[(catalog["split"] == split) & catalog["group_id"].isin(by_product)]
            queries += query_inputs(rows, keys, with_attributes)
            candidates += [by_product[g] for g in rows["group_id"]]
        products += rows["group_id"].tolist()
        coarse += rows["coarse_group_id"].tolist()
    if not queries:
        raise ValueError(f"no training pairs in splits {list(splits)}: the catalog has splits "
                         f"{sorted(catalog['split'].unique())}; set train.pair_splits")
    return PairSet(queries, candidates, np.asarray(products, np.int64),
                   np.asarray(coarse, np.int64), [attr_by_product[g] for g in products])


def text_pairs(catalog: pd.DataFrame, keys: Sequence[str], seed: int = 0) -> PairSet:
    """PriceRunner-style pairs: each offer paired with another offer of its cluster."""
    catalog = usable(catalog)
    rng = np.random.default_rng(seed)
    rows, partners = [], []
    for _, group in catalog.groupby("group_id"):
        if len(group) < 2:
            continue
        order = rng.permutation(group.index.to_numpy())
        rows.extend(order)
        partners.extend(np.roll(order, -1))  # each offer's partner: the next in a random cycle
    left, right = catalog.loc[rows], catalog.loc[partners]
    return PairSet(catalog_inputs(left, keys), catalog_inputs(right, keys),
                   left["group_id"].to_numpy(np.int64), left["coarse_group_id"].to_numpy(np.int64),
                   _attrs(right, keys))


def grocery_benchmark(catalog: pd.DataFrame, keys: Sequence[str], with_attributes: bool,
                      split: str = "test") -> RetrievalSet:
    """Query = natural photo of ``split``; gallery = the catalog items; correct = same product."""
    catalog = usable(catalog)
    gallery = catalog[catalog["split"] == "catalog"]
    photos = catalog[(catalog["split"] == split) & catalog["group_id"].isin(gallery["group_id"])]
    return RetrievalSet(
        queries=query_inputs(photos, keys, with_attributes),
        query_products=photos["group_id"].to_numpy(np.int64),
        query_coarse=photos["coarse_group_id"].to_numpy(np.int64),
        gallery=catalog_inputs(gallery, keys),
        gallery_products=gallery["group_id"].to_numpy(np.int64),
        gallery_coarse=gallery["coarse_group_id"].to_numpy(np.int64))


def leave_one_out_benchmark(catalog: pd.DataFrame, clusters: int | None,
                            seed: int = 0) -> tuple[RetrievalSet, np.ndarray]:
    """PriceRunner protocol on ``clusters`` sampled whole clusters (None = all): every offer is
    in the gallery; every offer of a cluster with >= 2 offers is a query that must skip itself.
    Returns the set and each query's gallery position."""
    catalog = usable(catalog)
    if clusters:
        groups = catalog["group_id"].unique()
        chosen = np.random.default_rng(seed).choice(groups, min(clusters, len(groups)),
                                                    replace=False)
        catalog = catalog[catalog["group_id"].isin(chosen)]
    catalog = catalog.reset_index(drop=True)
    sizes = catalog.groupby("group_id")["item_id"].transform("size").to_numpy()
    positions = np.flatnonzero(sizes >= 2)
    titles = [EmbedInput(t) for t in catalog["title"]]
    products = catalog["group_id"].to_numpy(np.int64)
    coarse = catalog["coarse_group_id"].to_numpy(np.int64)
    benchmark = RetrievalSet([titles[i] for i in positions], products[positions],
                             coarse[positions], titles, products, coarse, leave_one_out=True)
    return benchmark, positions

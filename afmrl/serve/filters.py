"""Attribute filters combined with vector search, exactly.

Filtering the top-k of a vector search is wrong (it returns fewer than k even when the catalog
holds k matching items); filtering before the search needs a per-filter index. We over-fetch and
filter, doubling the fetch until k matches are found or every item has been ranked. An inverted
index ``(key, value) -> item ids`` tells up front how many items can match, so a selective filter
stops as soon as all of its matches are ranked and an impossible one costs nothing.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Mapping

import numpy as np

from afmrl.extract.schema import normalise_value
from afmrl.index.faiss_index import missing_id

# First fetch for a filtered query: k x this factor (then doubling).
OVERFETCH = 4

SearchFn = Callable[[int], tuple[np.ndarray, np.ndarray]]  # n -> (scores (n,), ids (n,))


class AttributeIndex:
    """Item ids by normalised ``(key, value)``: which items a filter can return."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._pairs: dict[str, set[tuple[str, str]]] = {}

    def put(self, item_id: str, attributes: Mapping[str, str]) -> None:
        self.remove(item_id)
        pairs = {(k, normalise_value(v)) for k, v in attributes.items() if normalise_value(v)}
        for pair in pairs:
            self._ids[pair].add(item_id)
        self._pairs[item_id] = pairs

    def remove(self, item_id: str) -> None:
        for pair in self._pairs.pop(item_id, ()):
            self._ids[pair].discard(item_id)
            if not self._ids[pair]:
                del self._ids[pair]

    def matching(self, filters: Mapping[str, str]) -> set[str] | None:
        """Ids whose attributes equal every filter value (normalised); None = no filter."""
        if not filters:
            return None
        sets = [self._ids.get((k, normalise_value(v)), set()) for k, v in filters.items()]
        return set.intersection(*sorted(sets, key=len))


def filtered_search(search: SearchFn, k: int, allowed: set[str] | None, total: int
                    ) -> list[tuple[float, str]]:
    """Best-first ``(score, id)`` of the ``k`` best items in ``allowed`` (None = any item).

    Exact: the answer equals filtering the full ranking of the ``total`` indexed items and
    keeping the first k. Each round ranks the best ``n`` items; if fewer than
    min(k, |allowed|) of them pass the filter, ``n`` doubles, up to ``total``. For approximate
    index kinds the result is as exact as the index's own unfiltered ranking.
    """
    wanted = min(k, total) if allowed is None else min(k, len(allowed))
    if wanted == 0:
        return []
    fetch = min(total, k if allowed is None else k * OVERFETCH)
    while True:
        scores, ids = search(fetch)
        pad = missing_id(ids)
        hits = [(float(s), str(i)) for s, i in zip(scores, ids)
                if i != pad and (allowed is None or i in allowed)]
        if len(hits) >= wanted or fetch >= total:
            return hits[:k]
        fetch = min(total, fetch * 2)

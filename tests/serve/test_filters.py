"""Filtered vector search is exact: it equals filtering the full ranking (real FAISS, no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from afmrl.config import IndexConfig
from afmrl.index.faiss_index import VectorIndex
from afmrl.serve.filters import AttributeIndex, filtered_search

COLOURS = ("red", "green", "blue", "white", "violet")
CATEGORIES = ("juice", "milk", "yoghurt")


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    ids = np.array([f"item-{i}" for i in range(600)])
    attributes = {i: {"colour": COLOURS[rng.integers(len(COLOURS))] if n % 50 else "gold",
                      "category": CATEGORIES[rng.integers(len(CATEGORIES))]}
                  for n, i in enumerate(ids)}  # "gold": 12 items, a selective filter
    index = AttributeIndex()
    for item_id, values in attributes.items():
        index.put(item_id, values)
    return vectors, ids, index, rng.standard_normal((5, 16)).astype(np.float32)


def test_attribute_index_normalises_and_forgets():
    index = AttributeIndex()
    index.put("a", {"colour": " Red ", "brand": "Arla"})
    index.put("b", {"colour": "red"})
    assert index.matching({"colour": "RED"}) == {"a", "b"}
    assert index.matching({"colour": "red", "brand": "arla"}) == {"a"}
    assert index.matching({}) is None
    index.put("a", {"colour": "blue"})  # replaced, not merged
    assert index.matching({"colour": "red"}) == {"b"}
    index.remove("b")
    assert index.matching({"colour": "red"}) == set()


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_filtered_search_equals_filtering_the_full_ranking(catalog, metric):
    vectors, ids, attributes, queries = catalog
    index = VectorIndex.build(vectors, ids, IndexConfig(kind="flat", metric=metric), "m")
    for query in queries:
        full_scores, full_ids = index.search(query[None], len(ids))
        for filters in ({}, {"category": "milk"}, {"colour": "gold"},
                        {"colour": "gold", "category": "juice"}, {"colour": "black"}):
            allowed = attributes.matching(filters)
            for k in (1, 7, 40):
                fetched: list[int] = []

                def search(n: int):
                    fetched.append(n)
                    scores, found = index.search(query[None], n)
                    return scores[0], found[0]

                expected = [(float(s), str(i)) for s, i in zip(full_scores[0], full_ids[0])
                            if allowed is None or i in allowed][:k]
                assert filtered_search(search, k, allowed, len(ids)) == expected
                if allowed == set():
                    assert fetched == []  # an impossible filter costs no search
                if filters == {"category": "milk"} and k == 1:
                    assert max(fetched) < len(ids)  # a common filter needs no full scan


def test_filtered_search_pads_nothing_when_the_catalog_is_small():
    index = VectorIndex.build(np.eye(3, dtype=np.float32), ["a", "b", "c"], IndexConfig(), "m")

    def search(n: int):
        scores, found = index.search(np.ones((1, 3), np.float32), n)
        return scores[0], found[0]

    assert [i for _, i in filtered_search(search, 10, None, 3)] == ["a", "b", "c"]
    assert [i for _, i in filtered_search(search, 10, {"b"}, 3)] == ["b"]

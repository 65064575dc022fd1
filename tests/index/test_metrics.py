"""Metric definitions on hand-made rankings (product ids), checked against hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from afmrl.index.faiss_index import rank_results
from afmrl.index.metrics import (QueryMetrics, average_precision_at_k, first_hit_rank,
                                 fraction_relevant_at_k, hit_matrix, per_query, recall_at_k,
                                 summarise)

# Four queries over a gallery where product A has 2 items, B 1, C 3, D 1, E 0.
RETRIEVED = np.array([["A", "B", "A"],    # correct at ranks 1 and 3
                      ["C", "B", "D"],    # correct at rank 2
                      ["C", "C", "C"],    # the query's product has 3 items, all in the top 3
                      ["A", "B", "C"]])   # product E is not in the gallery at all
QUERIES = np.array(["A", "B", "C", "E"])
N_RELEVANT = np.array([2, 1, 3, 0])


def test_recall_is_fraction_of_queries_with_a_hit():
    hits = hit_matrix(RETRIEVED, QUERIES)
    np.testing.assert_array_equal(recall_at_k(hits, 1), [1, 0, 1, 0])
    np.testing.assert_array_equal(recall_at_k(hits, 3), [1, 1, 1, 0])


def test_average_precision_normalised_by_min_k_and_relevant():
    hits = hit_matrix(RETRIEVED, QUERIES)
    # q0: (1/1 + 2/3) / min(3, 2); q1: (1/2) / 1; q2: (1 + 1 + 1) / 3; q3: nothing relevant.
    np.testing.assert_allclose(average_precision_at_k(hits, 3, N_RELEVANT),
                               [(1 + 2 / 3) / 2, 0.5, 1.0, 0.0])
    # At k=1 the normaliser is min(1, n) = 1 for every query with a relevant item.
    np.testing.assert_allclose(average_precision_at_k(hits, 1, N_RELEVANT), [1, 0, 1, 0])


def test_more_relevant_items_than_k_still_allow_a_perfect_score():
    hits = hit_matrix(np.array([["A", "A"]]), np.array(["A"]))
    np.testing.assert_allclose(average_precision_at_k(hits, 2, np.array([5])), [1.0])
    np.testing.assert_allclose(fraction_relevant_at_k(hits, 2, np.array([5])), [0.4])


def test_first_hit_rank_and_mrr():
    hits = hit_matrix(RETRIEVED, QUERIES)
    np.testing.assert_array_equal(first_hit_rank(hits), [1, 2, 1, np.inf])
    summary = summarise(hits, N_RELEVANT, ks=(1, 3))
    assert summary["mrr"] == pytest.approx((1 + 1 / 2 + 1 + 0) / 4)


def test_summary_keys_are_mlflow_safe_and_means():
    summary = summarise(hit_matrix(RETRIEVED, QUERIES), N_RELEVANT, ks=(1, 3))
    assert set(summary) == {"recall_at_1", "recall_at_3", "map_at_1", "map_at_3", "mrr",
                            "num_queries"}
    assert summary["recall_at_3"] == pytest.approx(3 / 4)
    assert summary["map_at_3"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5 + 1.0 + 0.0) / 4)
    assert summary["num_queries"] == 4


def test_padding_slots_never_count_as_hits():
    # A gallery of two items searched three deep: the third slot is padding ("" product).
    retrieved = np.array([["B", "A", ""]])
    valid = np.array([[True, True, False]])
    hits = hit_matrix(retrieved, np.array([""]), valid)
    assert not hits.any()


def test_ties_follow_the_id_order_set_by_rank_results():
    # A wrong item (id 3) and a correct one (id 7) tie; the lower id ranks first either way round.
    products = {3: "wrong", 7: "right", 9: "other"}
    for metric, scores in (("ip", [[0.5, 0.9, 0.9]]), ("l2", [[2.0, 0.1, 0.1]])):
        for ids in ([[9, 7, 3]], [[9, 3, 7]]):
            _, ranked = rank_results(np.array(scores), np.array(ids), metric, k=3)
            retrieved = np.vectorize(products.get)(ranked)
            hits = hit_matrix(retrieved, np.array(["right"]))
            np.testing.assert_array_equal(first_hit_rank(hits), [2])


def test_matches_a_loop_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    retrieved = rng.integers(0, 6, size=(200, 10))
    queries = rng.integers(0, 7, size=200)            # product 6 is never retrieved
    n_relevant = (retrieved == queries[:, None]).sum(axis=1) + rng.integers(0, 3, 200)
    metrics = per_query(hit_matrix(retrieved, queries), n_relevant, ks=(1, 5, 10))
    for q in range(200):
        ranks = [r + 1 for r in range(10) if retrieved[q, r] == queries[q]]
        for k in (1, 5, 10):
            top = [r for r in ranks if r <= k]
            precision_sum = sum((i + 1) / r for i, r in enumerate(top))
            expected_ap = precision_sum / min(k, n_relevant[q]) if n_relevant[q] else 0.0
            assert metrics.ap[k][q] == pytest.approx(expected_ap)
            assert metrics.recall[k][q] == (1.0 if top else 0.0)
        assert metrics.first_rank[q] == (ranks[0] if ranks else np.inf)


def test_concat_keeps_query_order():
    hits = hit_matrix(RETRIEVED, QUERIES)
    whole = per_query(hits, N_RELEVANT, ks=(1, 3))
    parts = QueryMetrics.concat([per_query(hits[:1], N_RELEVANT[:1], (1, 3)),
                                 per_query(hits[1:], N_RELEVANT[1:], (1, 3))])
    np.testing.assert_array_equal(parts.first_rank, whole.first_rank)
    np.testing.assert_array_equal(parts.ap[3], whole.ap[3])
    assert parts.summary() == whole.summary()


def test_bad_inputs_are_refused():
    hits = hit_matrix(RETRIEVED, QUERIES)
    with pytest.raises(ValueError, match="depth 3"):
        recall_at_k(hits, 5)
    with pytest.raises(ValueError, match="more hits than relevant"):
        average_precision_at_k(hits, 3, np.array([1, 1, 1, 1]))

"""Fusion of hand-made rankings: exact RRF / convex arithmetic, ties, one-source items, padding,
tuning on a split and the saved tuned values."""
import dataclasses
import json
import warnings

import numpy as np
import pytest

from afmrl.config import ConfigError, RetrievalConfig
from afmrl.index.fusion import (FUSION_FILE, convex, fuse, grid, load_tuned, min_max, rank, rrf,
                                save_tuned, tune)


def ranking(rows, pad=-1):
    """Hand-made (scores, ids): each row a list of (id, score), padded to the longest row."""
    depth = max(len(r) for r in rows)
    ids = np.full((len(rows), depth), pad, dtype=object if isinstance(pad, str) else np.int64)
    scores = np.full((len(rows), depth), -np.inf)
    for q, row in enumerate(rows):
        for j, (item, score) in enumerate(row):
            ids[q, j], scores[q, j] = item, score
    return scores, ids.astype(str) if isinstance(pad, str) else ids


def test_weighted_rrf_arithmetic_and_one_source_items():
    dense = ranking([[(10, 0.9), (20, 0.8), (30, 0.7)]])
    lexical = ranking([[(20, 9.0), (40, 5.0)]])
    scores, ids = rrf([dense, lexical], [2.0, 1.0], rrf_k=10, k=4)
    expected = {10: 2 / 11, 20: 2 / 12 + 1 / 11, 30: 2 / 13, 40: 1 / 12}
    order = sorted(expected, key=lambda i: -expected[i])
    assert ids[0].tolist() == order  # 40 (lexical only) and 10/30 (dense only) are kept
    np.testing.assert_allclose(scores[0], [expected[i] for i in order], rtol=1e-6)


def test_rrf_ties_are_ordered_by_id():
    # 7 first in dense, 3 first in lexical: equal weights give them identical fused scores.
    dense = ranking([[(7, 1.0), (5, 0.5)]])
    lexical = ranking([[(3, 1.0), (5, 0.9)]])
    scores, ids = rrf([dense, lexical], [1.0, 1.0], rrf_k=60, k=3)
    assert ids[0].tolist() == [5, 3, 7]  # 5 is in both; 3 and 7 tie and come by id
    assert scores[0, 1] == scores[0, 2]


def test_k_larger_than_both_lists_pads_with_missing_and_minus_inf():
    dense = ranking([[(1, 0.9)], [(2, 0.5), (4, 0.4)]])
    lexical = ranking([[(1, 3.0), (9, 1.0)], [(5, 2.0)]])
    scores, ids = rrf([dense, lexical], [1.0, 1.0], rrf_k=60, k=6)
    assert ids[0].tolist() == [1, 9, -1, -1, -1, -1]
    assert ids[1].tolist() == [2, 5, 4, -1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all() and np.isfinite(scores[1, :3]).all()


def test_string_ids_and_padding_in_the_input_are_ignored():
    dense = ranking([[("a", 0.9), ("b", 0.1)]], pad="")
    lexical = ranking([[("c", 2.0)]], pad="")
    lexical = (np.concatenate([lexical[0], [[-np.inf]]], 1),
               np.concatenate([lexical[1], [[""]]], 1))
    _, ids = rrf([dense, lexical], [1.0, 1.0], 60, 4)
    assert ids[0].tolist() == ["a", "c", "b", ""]


def test_convex_combines_min_max_normalised_scores():
    dense = ranking([[(1, 0.9), (2, 0.5), (3, 0.1)]])
    lexical = ranking([[(3, 12.0), (4, 2.0)]])
    scores, ids = convex(dense, lexical, alpha=0.25, k=4)
    expected = {1: 0.25 * 1.0, 2: 0.25 * 0.5, 3: 0.25 * 0.0 + 0.75 * 1.0, 4: 0.0}
    order = sorted(expected, key=lambda i: (-expected[i], i))
    assert ids[0].tolist() == order
    np.testing.assert_allclose(scores[0], [expected[i] for i in order], atol=1e-6)


def test_convex_with_a_source_that_returned_nothing_keeps_the_other_ranking():
    # A filter that no lexical item matches leaves a (1, 0) ranking, not a padded one.
    dense = ranking([[(1, 0.9), (2, 0.5)]])
    empty = (np.zeros((1, 0)), np.zeros((1, 0), dtype=np.int64))
    for lexical in (empty, dense):
        _, ids = convex(dense, empty if lexical is dense else lexical, alpha=0.5, k=3)
        assert ids[0].tolist() == [1, 2, -1]
    _, ids = convex(empty, dense, alpha=0.5, k=2)
    assert ids[0].tolist() == [1, 2]


def test_min_max_respects_l2_direction_and_padding():
    scores = np.array([[0.1, 0.3, np.inf]])
    ids = np.array([[4, 5, -1]])
    np.testing.assert_allclose(min_max(scores, ids, larger_is_better=False), [[1.0, 0.0, 0.0]])


def test_a_query_one_source_returned_nothing_for_is_fused_without_warnings():
    # A photo query has no words: the lexical index returns only padding for it. Fusing it must
    # keep the dense order and not warn (nanmin/nanmax warned once per eval, on the console).
    dense = ranking([[(1, 0.9), (2, 0.5)], [(3, 0.7), (1, 0.2)]])
    lexical = ranking([[(-1, -np.inf)], [(1, 4.0)]])
    np.testing.assert_allclose(min_max(*lexical), [[0.0], [1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, ids = convex(dense, lexical, alpha=0.6, k=2)
    assert ids.tolist() == [[1, 2], [3, 1]]  # 3: 0.6 x 1 dense; 1: 0.4 x 1 lexical


def test_fuse_and_rank_follow_the_config():
    dense = ranking([[(1, 0.9), (2, 0.8)]])
    lexical = ranking([[(2, 5.0), (3, 4.0)]])
    only_dense = RetrievalConfig(dense_weight=1.0, lexical_weight=0.0)
    assert fuse(dense, lexical, only_dense, 2)[1][0].tolist() == [1, 2]
    only_lexical = RetrievalConfig(fusion="convex", alpha=0.0)
    assert fuse(dense, lexical, only_lexical, 2)[1][0].tolist() == [2, 3]
    calls = []
    assert rank("lexical", lambda: calls.append("dense"), lambda: lexical, only_dense, 2) \
        is lexical
    assert calls == []  # lexical mode never runs the dense search
    with pytest.raises(ValueError, match="unknown retrieval mode 'sparse'"):
        rank("sparse", lambda: dense, lambda: lexical, only_dense, 2)


def test_tune_picks_the_weights_that_win_on_the_split_and_serving_loads_them(tmp_path):
    # Query 0's answer (id 3) is found by lexical only; query 1's (id 1) by dense, with
    # lexical nearly tied: only a fusion mostly (not only) lexical gets both right.
    dense = ranking([[(1, 0.9), (2, 0.8), (3, 0.1)], [(1, 0.9), (5, 0.5)]])
    lexical = ranking([[(3, 9.0), (1, 1.0)], [(5, 9.0), (1, 8.9), (6, 1.0)]])
    answers = np.array([3, 1])

    def recall_at_1(ids):
        return float(np.mean(ids[:, 0] == answers))

    best, sweep = tune(dense, lexical, recall_at_1, RetrievalConfig(), k=3)
    assert recall_at_1(fuse(dense, lexical, best, 3)[1]) == 1.0
    single_sources = [row["objective"] for row in sweep
                      if 0 in (row["dense_weight"], row["lexical_weight"])
                      and row["fusion"] == "rrf"]
    assert single_sources == [0.5, 0.5]  # neither source alone gets both
    assert len(sweep) == len(grid(RetrievalConfig()))
    save_tuned(tmp_path, best, sweep, split="val")
    served = load_tuned(tmp_path, RetrievalConfig(mode="dense", candidates=7))
    assert served == dataclasses.replace(best, mode="dense", candidates=best.candidates)
    assert json.loads((tmp_path / FUSION_FILE).read_text())["tuned_on"] == "val"


def test_load_tuned_without_a_file_uses_the_config_and_refuses_a_broken_one(tmp_path):
    default = RetrievalConfig(rrf_k=5.0)
    assert load_tuned(tmp_path, default) is default
    (tmp_path / FUSION_FILE).write_text(json.dumps({"chosen": {"fusion": "rrf"}}))
    with pytest.raises(ConfigError, match="not a valid tuned fusion"):
        load_tuned(tmp_path, default)


def test_retrieval_config_validates():
    with pytest.raises(ConfigError, match="alpha"):
        RetrievalConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="not both 0"):
        RetrievalConfig(dense_weight=0.0, lexical_weight=0.0)


def test_gallery_scorer_ranks_hybrid_when_given_query_texts():
    """The RL reward's scorer: with dense vectors that cannot tell items apart, only the fused
    lexical ranking puts each query's product first."""
    from afmrl.config import IndexConfig
    from afmrl.index.evaluator import GalleryScorer, HybridGallery

    texts = ("sony dsc-w120p", "sony dsc-w130", "galaxy s9 64gb", "galaxy s9 128gb")
    gallery = np.ones((4, 8), np.float32) / np.sqrt(8)  # every item ties: ids decide
    hybrid = HybridGallery(texts, RetrievalConfig(dense_weight=0.3, lexical_weight=0.7))
    scorer = GalleryScorer(gallery, np.arange(4), IndexConfig(kind="flat"), (1,), hybrid)
    queries = np.ones((4, 8), np.float32) / np.sqrt(8)
    query_texts = ["dscw120p", "DSC W130", "s9 64 gb", "galaxy 128gb"]
    assert scorer.score(queries, np.arange(4)).recall[1].mean() == 0.25
    assert scorer.score(queries, np.arange(4), query_texts=query_texts).recall[1].mean() == 1.0
    left_out = scorer.score(queries, np.arange(4), np.arange(4), query_texts).recall[1]
    assert left_out.mean() == 0.0  # leave-one-out drops each query's own (only) match

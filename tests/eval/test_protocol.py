"""The evaluation protocol on small hand-made catalogs: which rows are queries and gallery,
leave-one-out, hand-checked metrics, and the lexical systems."""
import numpy as np
import pandas as pd
import pytest

from afmrl.data.schema import validate_catalog
from afmrl.eval.protocol import (PHOTO_QUERIES_R1, TEXT_QUERIES_R1, WITHIN_GROUP_R1,
                                 build_eval_set, rank_bm25, rank_by_scores, rank_tfidf,
                                 score_by_group, score_ranking)

KEYS = ("category", "colour")


def _catalog(rows):
    frame = pd.DataFrame(rows, columns=["item_id", "group_id", "title", "split", "coarse_group_id",
                                        "coarse_group"])
    return validate_catalog(frame, check_images=False)


def _gallery_catalog():
    return _catalog([
        ("g0", 0, "red milk carton", "catalog", 0, "milk"),
        ("g1", 1, "blue milk carton", "catalog", 0, "milk"),
        ("g2", 2, "green apple", "catalog", 1, "fruit"),
        ("t0", 0, "red milk", "test", 0, "milk"),
        ("t1", 1, "blue milk", "test", 0, "milk"),
        ("t2", 2, "apple green", "test", 1, "fruit"),
        ("v0", 0, "milk red", "val", 0, "milk"),
        ("x9", 9, "a product with no catalog item", "test", 1, "fruit"),
        ("r0", 0, "train row", "train", 0, "milk"),
    ])


def test_queries_are_the_split_and_gallery_the_catalog_rows():
    test = build_eval_set(_gallery_catalog(), "test", KEYS, with_attributes=False)
    assert test.query_item_ids == ["t0", "t1", "t2"]  # x9 has no correct item: not a query
    assert test.gallery_item_ids == ["g0", "g1", "g2"]
    assert not test.leave_one_out
    assert test.query_texts == ["red milk", "blue milk", "apple green"]
    val = build_eval_set(_gallery_catalog(), "val", KEYS, with_attributes=False)
    assert val.query_item_ids == ["v0"] and val.gallery_item_ids == ["g0", "g1", "g2"]


def test_hand_checked_metrics_and_within_group():
    test = build_eval_set(_gallery_catalog(), "test", KEYS, with_attributes=False)
    # t0 finds g0 first; t1 ranks g0 (wrong, same group) then g1; t2 ranks g0, g1 (other group,
    # not in-group) then g2: overall R@1 1/3 but within its group t2 is right.
    indices = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    metrics = score_ranking(test, (indices, np.zeros((3, 3), np.float32)), ks=(1, 3))
    assert metrics["recall_at_1"] == pytest.approx(1 / 3)
    assert metrics["recall_at_3"] == 1.0
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # Group 'fruit' has one product: trivially solved, so only the milk queries count.
    assert metrics[WITHIN_GROUP_R1] == pytest.approx(1 / 2)
    groups = {g["coarse_group"]: g for g in score_by_group(test, (indices, indices * 0.0), (1,))}
    assert groups["milk"]["recall_at_1"] == 0.5 and groups["milk"]["num_queries"] == 2
    assert groups["fruit"]["recall_at_1"] == 0.0 and WITHIN_GROUP_R1 not in groups["fruit"]


def test_a_split_of_photo_and_text_queries_reports_recall_at_1_of_each_kind():
    catalog = _gallery_catalog()
    catalog.loc[catalog["item_id"] == "t0", ["title", "image_uri"]] = ["", "/photos/t0.jpg"]
    test = build_eval_set(catalog, "test", KEYS, with_attributes=False)
    assert test.photo_queries.tolist() == [True, False, False]
    # t0 (photo) right; t1 (text) wrong; t2 (text) right
    indices = np.array([[0, 1, 2], [0, 1, 2], [2, 1, 0]])
    metrics = score_ranking(test, (indices, np.zeros((3, 3), np.float32)), ks=(1,))
    assert metrics[PHOTO_QUERIES_R1] == 1.0 and metrics[TEXT_QUERIES_R1] == 0.5
    text_only = build_eval_set(_gallery_catalog(), "test", KEYS, with_attributes=False)
    assert PHOTO_QUERIES_R1 not in score_ranking(text_only, (indices, indices * 0.0), ks=(1,))


def _offers():
    return _catalog([
        ("a", 0, "apple iphone 8 64gb silver", "test", 0, "phones"),
        ("b", 0, "apple iphone 8 64 gb silver", "test", 0, "phones"),
        ("c", 1, "samsung galaxy s9 64gb", "test", 0, "phones"),
        ("d", 1, "samsung galaxy s9 64 gb black", "test", 0, "phones"),
        ("e", 2, "bosch washing machine wae28", "test", 1, "washers"),
        ("f", 3, "train only offer", "train", 1, "washers"),
    ])


def test_leave_one_out_without_catalog_rows():
    offers = build_eval_set(_offers(), "test", KEYS, with_attributes=False)
    assert offers.leave_one_out
    assert offers.gallery_item_ids == ["a", "b", "c", "d", "e"]  # never the train row
    assert offers.query_item_ids == ["a", "b", "c", "d"]  # 'e' has no second offer
    assert offers.query_positions.tolist() == [0, 1, 2, 3]
    # A ranking that puts each query itself first: the protocol drops it, the next one counts.
    own_first = np.array([[0, 1, 4], [1, 0, 4], [2, 4, 3], [3, 2, 4]])
    metrics = score_ranking(offers, (own_first, np.zeros((4, 3), np.float32)), ks=(1, 2))
    assert metrics["recall_at_1"] == 0.75 and metrics["recall_at_2"] == 1.0
    assert metrics["map_at_1"] == 0.75


@pytest.mark.parametrize("rank", [rank_tfidf, rank_bm25])
def test_lexical_systems_exclude_self_and_find_the_sibling_offer(rank):
    offers = build_eval_set(_offers(), "test", KEYS, with_attributes=False)
    indices, scores = rank(offers, depth=10)
    assert indices.shape == (4, 10) and (indices[:, 4:] == -1).all()  # 4 other items, padded
    assert not (indices == offers.query_positions[:, None]).any()
    assert indices[:, 0].tolist() == [1, 0, 3, 2]
    assert (np.diff(scores[:, :4], axis=1) <= 0).all()
    assert score_ranking(offers, (indices, scores), (1,))["recall_at_1"] == 1.0


def test_bm25_scores_match_the_loss_bm25():
    """The BM25 baseline is the AGCL loss's BM25 (same tokens, IDF, saturation)."""
    from afmrl.losses.bm25 import BM25Stats, pairwise_bm25

    offers = build_eval_set(_offers(), "test", KEYS, with_attributes=False)
    indices, scores = rank_bm25(offers, depth=4)
    texts = offers.gallery_lexical_texts
    expected = pairwise_bm25(texts, BM25Stats.fit(texts)).numpy()
    for q, position in enumerate(offers.query_positions):
        for slot in range(4):
            assert scores[q, slot] == pytest.approx(expected[position, indices[q, slot]], rel=1e-5)


def test_rank_by_scores_breaks_ties_by_position_and_pads():
    scores = np.array([[0.5, 0.9, 0.5], [0.1, 0.1, 0.1]], np.float32)
    indices, top = rank_by_scores(lambda rows: scores[rows], 2, depth=4, chunk=1)
    assert indices.tolist() == [[1, 0, 2, -1], [0, 1, 2, -1]]
    assert top[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.5]) and np.isneginf(top[0, 3])


def test_a_split_without_queries_is_named():
    with pytest.raises(ValueError, match="no usable rows with split 'val'"):
        build_eval_set(_offers(), "val", KEYS, with_attributes=False)

"""RecallEvaluator actors against the in-process reference, leave-one-out, ties, reuse."""
from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from afmrl.config import EvalConfig, IndexConfig
from afmrl.index.evaluator import RecallEvaluator, evaluate_retrieval
from afmrl.index.sharded import ShardUnavailable

KS = (1, 5, 10)


@pytest.fixture(scope="module")
def catalog(clustered):
    """2000 gallery images of 50 products (about 40 each) and 101 query images."""
    x, products = clustered(2101, 32, n_clusters=50, seed=3, noise=1.5)
    return x[:2000], products[:2000], x[2000:], products[2000:]


@pytest.fixture
def evaluators():
    made: list[RecallEvaluator] = []
    yield made
    for group in made:
        group.shutdown()


def assert_same(a, b) -> None:
    for k in KS:
        np.testing.assert_array_equal(a.recall[k], b.recall[k])
        np.testing.assert_array_equal(a.ap[k], b.ap[k])
    np.testing.assert_array_equal(a.first_rank, b.first_rank)


@pytest.mark.usefixtures("ray_local")
def test_actor_group_equals_in_process_function(catalog, evaluators, ray_config):
    gallery, products, queries, query_products = catalog
    eval_config = EvalConfig(ks=KS, num_evaluators=2)
    group = RecallEvaluator.get_or_create("eval-equal", gallery, products,
                                          eval_config=eval_config, ray_config=ray_config)
    evaluators.append(group)
    got = group.evaluate(queries, query_products)  # 101 queries split 51 / 50
    expected = evaluate_retrieval(queries, query_products, gallery, products, ks=KS)
    assert_same(got, expected)
    assert got.summary() == expected.summary()
    # The noise makes the task non-trivial, so the comparison covers hits and misses.
    assert 0 < expected.summary()["recall_at_1"] < 1 and np.isinf(expected.first_rank).any()


@pytest.mark.usefixtures("ray_local")
def test_second_caller_reuses_the_named_group(catalog, evaluators, ray_config):
    gallery, products, queries, query_products = catalog
    eval_config = EvalConfig(ks=KS, num_evaluators=2)
    first = RecallEvaluator.get_or_create("eval-shared", gallery, products,
                                          eval_config=eval_config, ray_config=ray_config)
    evaluators.append(first)
    by_name = RecallEvaluator.get_or_create("eval-shared", eval_config=eval_config,
                                            ray_config=ray_config)
    again = RecallEvaluator.get_or_create("eval-shared", gallery, products,
                                          eval_config=eval_config, ray_config=ray_config)
    ids = [a._actor_id for a in first.actors]
    assert [a._actor_id for a in by_name.actors] == ids == [a._actor_id for a in again.actors]
    assert_same(by_name.evaluate(queries, query_products),
                first.evaluate(queries, query_products))
    with pytest.raises(ValueError, match="different gallery"):
        RecallEvaluator.get_or_create("eval-shared", gallery[:100], products[:100],
                                      eval_config=eval_config, ray_config=ray_config)
    with pytest.raises(ValueError, match="no evaluator group 'eval-nobody'"):
        RecallEvaluator.get_or_create("eval-nobody", ray_config=ray_config)


def wait_until_dead(actor, timeout_s: float = 60.0) -> None:
    """``ray.kill`` is asynchronous: a call made right after it may still be served (CI once
    saw the evaluation succeed), so wait until the actor refuses calls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.get_fingerprint.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"actor still answers {timeout_s:.0f} s after ray.kill")


@pytest.mark.usefixtures("ray_local")
def test_dead_evaluator_actor_is_reported_by_name(catalog, evaluators, ray_config):
    gallery, products, queries, query_products = catalog
    group = RecallEvaluator.get_or_create("eval-doomed", gallery, products,
                                          eval_config=EvalConfig(ks=KS, num_evaluators=2),
                                          ray_config=ray_config)
    evaluators.append(group)
    ray.kill(group.actors[1])
    wait_until_dead(group.actors[1])
    with pytest.raises(ShardUnavailable, match="evaluator actor 'eval-doomed-1' is dead"):
        group.evaluate(queries, query_products)


def test_leave_one_out_equals_removing_the_item(catalog):
    gallery, products, _, _ = catalog
    positions = np.array([0, 17, 1999])
    got = evaluate_retrieval(gallery[positions], products[positions], gallery, products, ks=KS,
                             exclude_items=positions)
    for row, position in enumerate(positions):
        keep = np.arange(len(gallery)) != position
        alone = evaluate_retrieval(gallery[position:position + 1], products[position:position + 1],
                                   gallery[keep], products[keep], ks=KS)
        for k in KS:
            assert got.recall[k][row] == alone.recall[k][0]
            assert got.ap[k][row] == pytest.approx(alone.ap[k][0])
        assert got.first_rank[row] == alone.first_rank[0]


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_tied_gallery_items_rank_by_position(metric):
    # Two identical gallery vectors of different products: the earlier position wins the tie.
    vector = np.ones((1, 8), np.float32) / np.sqrt(8)
    other = -vector
    gallery = np.concatenate([vector, vector, other])
    config = IndexConfig(metric=metric)
    wrong_first = evaluate_retrieval(vector, ["right"], gallery, ["wrong", "right", "x"],
                                     config, ks=(1, 3))
    right_first = evaluate_retrieval(vector, ["right"], gallery, ["right", "wrong", "x"],
                                     config, ks=(1, 3))
    assert wrong_first.first_rank.tolist() == [2] and right_first.first_rank.tolist() == [1]
    assert wrong_first.ap[3].tolist() == [0.5] and right_first.ap[3].tolist() == [1.0]


def test_product_missing_from_gallery_scores_zero(catalog):
    gallery, products, queries, _ = catalog
    got = evaluate_retrieval(queries[:2], [-5, products[0]], gallery, products, ks=KS)
    assert got.recall[10][0] == 0 and got.ap[10][0] == 0 and np.isinf(got.first_rank[0])

"""ShardedIndex on a local Ray cluster: exact merge, routing, save/load, names, dead shards."""
from __future__ import annotations

import numpy as np
import pytest
import ray

from afmrl.config import IndexConfig
from afmrl.index.faiss_index import IndexMismatchError, VectorIndex
from afmrl.index.sharded import ShardedIndex, ShardUnavailable, shard_of

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def random_data():
    """Unnormalised Gaussian vectors (so "ip" and "l2" rank differently) with sparse int ids."""
    rng = np.random.default_rng(7)
    gallery = rng.standard_normal((3000, 32)).astype(np.float32)
    ids = rng.choice(10**9, size=3000, replace=False)
    return gallery, ids, rng.standard_normal((40, 32)).astype(np.float32)


@pytest.fixture
def sharded(ray_config):
    """Build a ShardedIndex and always shut it down, even when the test fails."""
    made: list[ShardedIndex] = []

    def build(*args, **kwargs) -> ShardedIndex:
        made.append(ShardedIndex.build(*args, ray_config=ray_config, **kwargs))
        return made[-1]

    yield build
    for index in made:
        index.shutdown()


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_merged_search_equals_one_flat_index(random_data, sharded, metric):
    gallery, ids, queries = random_data
    config = IndexConfig(kind="flat", metric=metric, num_shards=3)
    single = VectorIndex.build(gallery, ids, config, "m")
    index = sharded(gallery, ids, config, "m")
    assert len(index) == len(gallery)
    for k in (1, 25):
        expected_scores, expected_ids = single.search(queries, k)
        scores, found = index.search(queries, k)
        np.testing.assert_array_equal(found, expected_ids)
        np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_shards_smaller_than_k_drop_their_padding(random_data, sharded, metric):
    gallery, ids, queries = random_data
    config = IndexConfig(kind="flat", metric=metric, num_shards=3)
    # 10 items over 3 shards: every shard holds fewer than k=8 and pads its answer.
    single = VectorIndex.build(gallery[:10], ids[:10], config, "m")
    index = sharded(gallery[:10], ids[:10], config, "m")
    for k in (8, 12):  # 12 > 10 items: the merged answer itself ends in padding
        expected_scores, expected_ids = single.search(queries, k)
        scores, found = index.search(queries, k)
        np.testing.assert_array_equal(found, expected_ids)
        np.testing.assert_array_equal(scores, expected_scores)
    assert (found[:, 10:] == -1).all()


def test_add_and_remove_are_routed_by_id(random_data, sharded, ray_config):
    gallery, _, _ = random_data
    ids = np.array([f"sku-{i}" for i in range(300)])
    index = sharded(gallery[:200], ids[:200], IndexConfig(num_shards=3, metric="l2"), "m",
                    name="routing")
    index.add(gallery[200:300], ids[200:300])
    counts = [ray.get(s.info.remote())["items"] for s in index.shards]
    assert counts == np.bincount(shard_of(ids, 3), minlength=3).tolist()
    # Another handle (as another process would get by name) routes removals the same way.
    other = ShardedIndex.connect("routing", ray_config)
    assert other.remove(ids[::2]) == 150 and len(index) == 150
    _, found = index.search(gallery[:300], 1)
    np.testing.assert_array_equal(found[1::2, 0], ids[1::2])
    assert not np.isin(ids[::2], found).any()


def test_names_are_unique_and_connect_needs_an_existing_index(random_data, sharded,
                                                             ray_config):
    gallery, ids, _ = random_data
    sharded(gallery[:50], ids[:50], IndexConfig(num_shards=2), "m", name="taken")
    with pytest.raises(ValueError, match="cannot create index 'taken'"):
        sharded(gallery[:50], ids[:50], IndexConfig(num_shards=2), "m", name="taken")
    with pytest.raises(ValueError, match="no index named 'missing'"):
        ShardedIndex.connect("missing", ray_config)


@pytest.mark.parametrize("kind", ("flat", "ivf_flat"))
def test_save_load_round_trip_with_one_manifest(random_data, sharded, ray_config, tmp_path,
                                                kind):
    gallery, ids, queries = random_data
    config = IndexConfig(kind=kind, num_shards=2, nlist=16)
    index = sharded(gallery, ids, config, "embedder-1")
    index.remove(ids[:7])
    index.save(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "manifest.json").is_file()
    loaded = ShardedIndex.load(tmp_path / "sharded", ray_config,
                               expected_model_hash="embedder-1", expected_dim=32)
    try:
        assert len(loaded) == len(gallery) - 7
        for before, after in zip(index.search(queries, 10), loaded.search(queries, 10)):
            np.testing.assert_array_equal(before, after)
    finally:
        loaded.shutdown()
    with pytest.raises(IndexMismatchError, match="'embedder-1'.*'embedder-2'"):
        ShardedIndex.load(tmp_path / "sharded", ray_config, expected_model_hash="embedder-2")
    with pytest.raises(IndexMismatchError, match="ShardedIndex.load"):
        VectorIndex.load(tmp_path / "sharded")


def test_dead_shard_is_reported_by_name(random_data, sharded):
    gallery, ids, queries = random_data
    index = sharded(gallery[:100], ids[:100], IndexConfig(num_shards=2), "m", name="doomed")
    ray.kill(index.shards[1])
    with pytest.raises(ShardUnavailable, match=r"index shard 1 \('doomed-shard-1'\) is dead"):
        index.search(queries, 5)

"""Compressed index kinds: int8 scalar quantisation (sq8, ivf_sq8) and sign-bit codes re-scored
by the float query (binary): memory, recall against exact search, live removal, save/load."""
from __future__ import annotations

import numpy as np
import pytest

from afmrl.config import ConfigError, IndexConfig
from afmrl.index.faiss_index import VectorIndex

K = 10


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))


@pytest.fixture(scope="module")
def data(clustered):
    gallery, _ = clustered(4000, 64, 200, seed=1, noise=0.6)
    queries, _ = clustered(200, 64, 200, seed=1, noise=0.6)  # same centres, fresh noise
    return gallery, queries, np.arange(len(gallery))


@pytest.fixture(scope="module")
def exact(data):
    gallery, queries, ids = data
    return VectorIndex.build(gallery, ids, IndexConfig(kind="flat"), "m")


@pytest.mark.parametrize("kind, min_recall, max_memory_share", [
    ("sq8", 0.97, 0.40),       # 1 byte a dim + ids, vs 4 bytes a dim
    ("ivf_sq8", 0.95, 0.40),   # nprobe = nlist / 2
    ("binary", 0.65, 0.25),    # 1 bit a dim + ids (64 dims: coarse codes)
])
def test_compressed_kinds_keep_recall_in_a_fraction_of_the_memory(
        data, exact, kind, min_recall, max_memory_share):
    gallery, queries, ids = data
    config = IndexConfig(kind=kind, nlist=32, nprobe=16)
    index = VectorIndex.build(gallery, ids, config, "m")
    _, exact_ids = exact.search(queries, K)
    scores, found = index.search(queries, K)
    assert recall(found, exact_ids) >= min_recall
    assert index.memory_bytes() <= max_memory_share * exact.memory_bytes()
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_binary_rescoring_beats_hamming_ranking(data, exact):
    gallery, queries, ids = data
    _, exact_ids = exact.search(queries, K)
    hamming_only = VectorIndex.build(gallery, ids, IndexConfig(kind="binary", binary_rescore=1),
                                     "m")  # re-scores only the Hamming top-k: same set
    rescored = VectorIndex.build(gallery, ids, IndexConfig(kind="binary", binary_rescore=10),
                                 "m")
    assert recall(rescored.search(queries, K)[1], exact_ids) >= \
        recall(hamming_only.search(queries, K)[1], exact_ids) + 0.03  # 0.646 -> 0.692


@pytest.mark.parametrize("kind", ["sq8", "ivf_sq8", "binary"])
def test_compressed_kinds_remove_items_and_survive_save_and_load(data, kind, tmp_path):
    gallery, queries, ids = data
    index = VectorIndex.build(gallery, ids, IndexConfig(kind=kind, nlist=32, nprobe=32), "m")
    best = index.search(gallery[:3], 1)[1][:, 0]
    assert list(best) == [0, 1, 2]  # an item finds itself
    assert index.remove([0, 1]) == 2
    assert not np.isin(index.search(gallery[:3], K)[1], [0, 1]).any()
    index.save(tmp_path / "index")
    loaded = VectorIndex.load(tmp_path / "index", "m", 64)
    for mine, theirs in zip(index.search(queries, K), loaded.search(queries, K)):
        np.testing.assert_array_equal(mine, theirs)
    assert len(loaded) == len(gallery) - 2


def test_binary_codes_need_inner_product():
    with pytest.raises(ConfigError, match="index.metric=ip"):
        IndexConfig(kind="binary", metric="l2")

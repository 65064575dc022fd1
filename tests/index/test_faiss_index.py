"""VectorIndex: every kind and metric, ids, Matryoshka prefixes, removal, save/load, manifest."""
from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

from afmrl.config import ConfigError, IndexConfig
from afmrl.index.faiss_index import IndexMismatchError, VectorIndex, load_index
from afmrl.index.metrics import hit_matrix, recall_at_k

KINDS = ("flat", "ivf_flat", "ivf_pq", "hnsw")
# Small-gallery settings: 4000 items allow nlist <= 102; 32 dims split into 16 PQ codes.
SMALL = dict(nlist=64, nprobe=8, pq_m=16, hnsw_m=16, hnsw_ef_search=64, hnsw_ef_construction=64)


@pytest.fixture(scope="module")
def data(clustered):
    x, products = clustered(4100, 32, n_clusters=40, seed=1)
    return x[:4000], products[:4000], x[4000:], products[4000:]


def exact_top(gallery: np.ndarray, queries: np.ndarray, metric: str, k: int) -> np.ndarray:
    scores = queries @ gallery.T if metric == "ip" else \
        ((queries[:, None, :] - gallery[None]) ** 2).sum(-1)
    order = np.argsort(-scores if metric == "ip" else scores, axis=1, kind="stable")
    return order[:, :k]


@pytest.mark.parametrize("metric", ("ip", "l2"))
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_recalls_well_on_clustered_data(data, kind, metric):
    gallery, products, queries, query_products = data
    index = VectorIndex.build(gallery, np.arange(len(gallery)), IndexConfig(
        kind=kind, metric=metric, **SMALL), model_hash="m")
    assert len(index) == len(gallery)
    scores, ids = index.search(queries, 10)
    # The product (cluster) of the nearest item is right for nearly every query...
    hits = hit_matrix(products[ids], query_products)
    assert recall_at_k(hits, 1).mean() >= 0.95
    # ...and the approximate top-10 overlaps the exact top-10. Product quantisation is lossy
    # among the near-identical items of a cluster, more so for "ip" (measured 0.40 vs 0.80 here).
    exact = exact_top(gallery, queries, metric, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert overlap >= (0.3 if kind == "ivf_pq" else 0.9)
    if kind == "flat":
        np.testing.assert_array_equal(ids, exact)
    # Rows are best-first for the metric.
    assert np.all(np.diff(scores, axis=1) <= 0) if metric == "ip" else \
        np.all(np.diff(scores, axis=1) >= 0)


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_equal_scores_are_ordered_by_id(metric):
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    x[3] = x[1] = x[0]  # three identical items; FAISS alone orders them differently per metric
    index = VectorIndex.build(x, [30, 20, 5, 10], IndexConfig(metric=metric), "m")
    _, ids = index.search(x[:1], 3)
    np.testing.assert_array_equal(ids, [[10, 20, 30]])


@pytest.mark.parametrize("metric", ("ip", "l2"))
def test_fewer_items_than_k_are_padded(metric):
    x = np.eye(3, 8, dtype=np.float32)
    index = VectorIndex.build(x, ["a", "b", "c"], IndexConfig(metric=metric), "m")
    scores, ids = index.search(x[:1], 5)
    assert ids[0].tolist() == ["a", "b", "c", "", ""]  # b and c tie: ordered by id
    assert np.all(np.isinf(scores[0, 3:])) and np.all(np.isfinite(scores[0, :3]))
    assert np.all(scores[0, 3:] < 0) if metric == "ip" else np.all(scores[0, 3:] > 0)


def test_matryoshka_prefix_is_applied_to_gallery_and_queries(data):
    gallery, _, queries, _ = data
    index = VectorIndex.build(gallery, np.arange(len(gallery)), IndexConfig(dim_prefix=8), "m")
    prefix = gallery[:, :8] / np.linalg.norm(gallery[:, :8], axis=1, keepdims=True)
    query_prefix = queries[:, :8] / np.linalg.norm(queries[:, :8], axis=1, keepdims=True)
    scores, ids = index.search(queries, 5)
    np.testing.assert_array_equal(ids, exact_top(prefix, query_prefix, "ip", 5))
    np.testing.assert_allclose(scores[:, 0], np.sum(query_prefix * prefix[ids[:, 0]], axis=1),
                               rtol=1e-5)
    assert index.manifest()["dim"] == 32 and index.manifest()["dim_prefix"] == 8


def test_small_gallery_clamps_nlist_and_pq_bits(data, caplog):
    gallery = data[0][:200]
    with caplog.at_level(logging.INFO, logger="afmrl.index.faiss_index"):
        index = VectorIndex.build(gallery, np.arange(200), IndexConfig(kind="ivf_pq", pq_m=8),
                                  "m")
    assert index.build_params["nlist"] == 200 // 39
    assert index.build_params["pq_nbits"] < 8
    assert "index.nlist lowered from 1024 to 5" in caplog.text
    assert len(index.search(gallery[:3], 4)[1]) == 3


def test_invalid_settings_are_refused_clearly(data):
    gallery = data[0][:500]
    with pytest.raises(ConfigError, match="pq_m=12 must divide the indexed dimension 32"):
        VectorIndex.build(gallery, np.arange(500), IndexConfig(kind="ivf_pq", pq_m=12), "m")
    with pytest.raises(ConfigError, match="dim_prefix=64 exceeds"):
        VectorIndex.build(gallery, np.arange(500), IndexConfig(dim_prefix=64), "m")
    if faiss.get_num_gpus() == 0:
        with pytest.raises(ConfigError, match="install faiss-gpu"):
            VectorIndex.build(gallery, np.arange(500), IndexConfig(use_gpu=True), "m")


def test_bad_ids_and_vectors_are_refused(data):
    gallery = data[0][:10]
    with pytest.raises(ValueError, match="duplicate item ids"):
        VectorIndex.build(gallery, [1] * 10, IndexConfig(), "m")
    with pytest.raises(ValueError, match=">= 0"):
        VectorIndex.build(gallery, np.arange(10) - 1, IndexConfig(), "m")
    index = VectorIndex.build(gallery, np.arange(10), IndexConfig(), "m")
    with pytest.raises(ValueError, match="duplicate item ids"):
        index.add(gallery[:1], [3])
    with pytest.raises(ValueError, match="holds integer ids"):
        index.add(gallery[:1], ["x"])
    bad = gallery[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(bad, [11])


@pytest.mark.parametrize("kind", ("flat", "ivf_flat", "ivf_pq"))
def test_remove_then_add_again(data, kind):
    gallery = data[0]
    ids = np.array([f"item-{i}" for i in range(len(gallery))])
    index = VectorIndex.build(gallery, ids, IndexConfig(kind=kind, **SMALL), "m")

    def found(item: str, row: int) -> bool:  # in the top 50 (PQ may not rank an item first)
        return item in index.search(gallery[row:row + 1], 50)[1][0]

    assert found("item-0", 0) and found("item-1", 1)
    assert index.remove(["item-0", "item-1", "no-such-item"]) == 2
    assert len(index) == len(gallery) - 2
    assert not found("item-0", 0) and not found("item-1", 1)
    index.add(gallery[:1], ["item-0"])
    assert found("item-0", 0) and len(index) == len(gallery) - 1


def test_hnsw_removal_is_refused_clearly(data):
    index = VectorIndex.build(data[0][:100], np.arange(100), IndexConfig(kind="hnsw"), "m")
    with pytest.raises(NotImplementedError, match="HNSW"):
        index.remove([1])


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(data, kind, tmp_path):
    gallery, _, queries, _ = data
    ids = np.array([f"sku-{i}" for i in range(len(gallery))])
    config = IndexConfig(kind=kind, metric="l2", dim_prefix=16, **SMALL)
    index = VectorIndex.build(gallery, ids, config, model_hash="embedder-abc")
    if kind != "hnsw":
        index.remove(ids[:5])
    index.save(tmp_path / "index")
    loaded = load_index(tmp_path / "index", expected_model_hash="embedder-abc", expected_dim=32)
    assert len(loaded) == len(index) and loaded.config == config
    for before, after in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(before, after)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["model_hash"] == "embedder-abc" and manifest["kind"] == kind
    assert manifest["item_count"] == len(index) and manifest["faiss_version"] == faiss.__version__
    saved_ids = np.load(tmp_path / "index" / "ids.npy", allow_pickle=False)
    assert saved_ids.dtype.kind == "U" and set(ids[5:]) <= set(saved_ids)


def test_mismatched_manifest_is_refused(data, tmp_path):
    VectorIndex.build(data[0][:50], np.arange(50), IndexConfig(), "model-A").save(tmp_path / "i")
    with pytest.raises(IndexMismatchError, match="'model-A'.*'model-B'"):
        VectorIndex.load(tmp_path / "i", expected_model_hash="model-B")
    with pytest.raises(IndexMismatchError, match="32-dim.*expects 64"):
        VectorIndex.load(tmp_path / "i", expected_model_hash="model-A", expected_dim=64)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        VectorIndex.load(tmp_path)

"""Benchmarks run during and after training, with MLflow-safe metric keys.

- grocery: Recall@k / mAP@k of test photos against the 81 catalog items, overall and *within
  coarse groups* (the gallery restricted to the query's coarse group: the hard near-duplicates,
  e.g. milk cartons that differ only in colour).
- pricerunner: leave-one-out title retrieval (a title finds the other offers of its cluster),
  next to the character 2-4-gram TF-IDF baseline computed on the same queries.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from afmrl.config import IndexConfig
from afmrl.index.evaluator import evaluate_retrieval
from afmrl.models.embedders import embed
from afmrl.train.data import RetrievalSet

EXACT = IndexConfig(kind="flat", metric="ip", num_shards=1)


def score_embeddings(benchmark: RetrievalSet, queries: np.ndarray, gallery: np.ndarray,
                     ks: Sequence[int], query_positions: np.ndarray | None = None
                     ) -> dict[str, float]:
    """Overall metrics plus ``within_group/`` metrics (gallery limited to the coarse group)."""
    exclude = query_positions if benchmark.leave_one_out else None
    metrics = evaluate_retrieval(queries, benchmark.query_products, gallery,
                                 benchmark.gallery_products, EXACT, ks, exclude).summary()
    if benchmark.leave_one_out:
        return metrics
    within: list[dict[str, float]] = []
    weights = []
    for coarse in np.unique(benchmark.query_coarse):
        q = benchmark.query_coarse == coarse
        g = benchmark.gallery_coarse == coarse
        if g.sum() < 2:  # a coarse group with one product is trivially solved: skip
            continue
        part = evaluate_retrieval(queries[q], benchmark.query_products[q], gallery[g],
                                  benchmark.gallery_products[g], EXACT,
                                  [k for k in ks if k <= g.sum()] or [1]).summary()
        within.append(part)
        weights.append(q.sum())
    for key in ("recall_at_1", "map_at_1"):
        values = [w[key] for w in within if key in w]
        if values:
            metrics[f"within_group/{key}"] = float(np.average(values, weights=weights))
    return metrics


def evaluate_model(model, benchmark: RetrievalSet, ks: Sequence[int], batch_size: int = 64,
                   query_positions: np.ndarray | None = None) -> dict[str, float]:
    gallery = embed(model, benchmark.gallery, batch_size)
    queries = gallery[query_positions] if benchmark.leave_one_out else \
        embed(model, benchmark.queries, batch_size)
    return score_embeddings(benchmark, queries, gallery, ks, query_positions)


def tfidf_baseline(benchmark: RetrievalSet, query_positions: np.ndarray,
                   ks: Sequence[int]) -> dict[str, float]:
    """Character 2-4-gram TF-IDF over titles: the PriceRunner baseline (R@1 ~ 0.58)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    titles = [x.text for x in benchmark.gallery]
    matrix = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True,
                             dtype=np.float32).fit_transform(titles)
    depth = max(ks) + 1
    queries = matrix[query_positions]
    ranked = np.empty((len(query_positions), depth), dtype=np.int64)
    for start in range(0, len(query_positions), 512):
        scores = (queries[start:start + 512] @ matrix.T).toarray()
        top = np.argpartition(-scores, depth, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        ranked[start:start + 512] = np.take_along_axis(top, order, 1)
    # The ranking is scored with the same metric functions the evaluator uses.
    from afmrl.index.metrics import hit_matrix, per_query

    keep = ranked != query_positions[:, None]
    ranked = np.array([row[mask][:depth - 1] for row, mask in zip(ranked, keep)])
    products = benchmark.gallery_products
    counts = np.bincount(np.searchsorted(np.unique(products), products))
    n_relevant = counts[np.searchsorted(np.unique(products), benchmark.query_products)] - 1
    hits = hit_matrix(products[ranked], benchmark.query_products)
    return per_query(hits, n_relevant, ks).summary()


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


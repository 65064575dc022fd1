"""Retrieval metrics over ranked lists, with their definitions written down.

Retrieval papers disagree on what "Recall@K" means (VLM2Vec#130, #207), so every number afmrl
logs comes from these functions and their docstrings are the definitions. Everything works on a
boolean *hit matrix* ``hits[q, r]`` = "the item at rank r+1 for query q has the query's product
id", plus ``n_relevant[q]`` = how many gallery items carry that product id. Rankings are taken
exactly as given: tie-breaking happens upstream (``VectorIndex.search`` orders equal scores by
item id), so a metric never depends on FAISS internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def hit_matrix(retrieved_products: np.ndarray, query_products: np.ndarray,
               valid: np.ndarray | None = None) -> np.ndarray:
    """``hits[q, r] = retrieved_products[q, r] == query_products[q]`` (and the slot is ``valid``).

    ``valid`` masks padding slots (fewer gallery items than the searched depth).
    """
    retrieved_products = np.asarray(retrieved_products)
    query_products = np.asarray(query_products)
    if retrieved_products.ndim != 2 or query_products.shape != (retrieved_products.shape[0],):
        raise ValueError(f"expected retrieved (Q, K) and query products (Q,), got "
                         f"{retrieved_products.shape} and {query_products.shape}")
    hits = retrieved_products == query_products[:, None]
    return hits & valid if valid is not None else hits


def _check(hits: np.ndarray, k: int, n_relevant: np.ndarray | None = None) -> np.ndarray:
    if hits.ndim != 2 or hits.dtype != bool:
        raise ValueError(f"hits must be a boolean (queries x depth) matrix, got {hits.dtype} "
                         f"{hits.shape}")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} needs a ranking at least k deep; the ranking has depth "
                         f"{hits.shape[1]} (search deeper)")
    top = hits[:, :k]
    if n_relevant is not None and np.any(top.sum(axis=1) > n_relevant):
        raise ValueError("more hits than relevant items for some query: n_relevant must count "
                         "the gallery items sharing the query's product id")
    return top


def recall_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-query Recall@K: 1.0 if at least one of the top K items is correct, else 0.0.

    This is the product-retrieval (hit-rate) definition used by AFMRL and most image-retrieval
    papers: its mean is the *fraction of queries* with a correct item in the top K. It is not
    "share of the relevant items retrieved"; that one is ``fraction_relevant_at_k``.
    """
    return _check(hits, k).any(axis=1).astype(np.float64)


def fraction_relevant_at_k(hits: np.ndarray, k: int, n_relevant: np.ndarray) -> np.ndarray:
    """Per-query share of the relevant items found in the top K: hits@K / n_relevant (0 if none).

    The classic IR recall; it can never reach 1 when n_relevant > K. Not logged by default.
    """
    n_relevant = np.asarray(n_relevant)
    found = _check(hits, k, n_relevant).sum(axis=1)
    return np.divide(found, n_relevant, out=np.zeros(len(found)), where=n_relevant > 0)


def average_precision_at_k(hits: np.ndarray, k: int, n_relevant: np.ndarray) -> np.ndarray:
    """Per-query AP@K = sum_{r<=K} P@r * hit_r / min(K, n_relevant); 0 when n_relevant is 0.

    The normaliser min(K, n_relevant) makes a perfect top-K score 1.0 even when a product has
    more gallery items than K. mAP@K is the mean over queries.
    """
    n_relevant = np.asarray(n_relevant)
    top = _check(hits, k, n_relevant).astype(np.float64)
    precision = np.cumsum(top, axis=1) / np.arange(1, k + 1)
    normaliser = np.minimum(k, n_relevant)
    return np.divide((precision * top).sum(axis=1), normaliser, out=np.zeros(len(top)),
                     where=normaliser > 0)


def first_hit_rank(hits: np.ndarray) -> np.ndarray:
    """1-based rank of the first correct item; ``inf`` when none is within the searched depth."""
    _check(hits, hits.shape[1])
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)


@dataclass(frozen=True)
class QueryMetrics:
    """Per-query metrics of one batch: what the RL reward consumes and evaluation averages."""
    recall: dict[int, np.ndarray]   # k -> (Q,) Recall@k in {0, 1}
    ap: dict[int, np.ndarray]       # k -> (Q,) AP@k
    first_rank: np.ndarray          # (Q,) 1-based, inf beyond the searched depth
    depth: int                      # how deep the ranking was searched (MRR is MRR@depth)

    def __len__(self) -> int:
        return len(self.first_rank)

    def summary(self) -> dict[str, float]:
        """Means over queries with MLflow-safe keys: recall_at_K, map_at_K, mrr, num_queries.

        ``mrr`` is the mean of 1/first_rank, counting 0 for queries without a hit within
        ``depth`` (i.e. MRR@depth).
        """
        out = {f"recall_at_{k}": float(v.mean()) for k, v in self.recall.items()}
        out.update({f"map_at_{k}": float(v.mean()) for k, v in self.ap.items()})
        out["mrr"] = float((1.0 / self.first_rank).mean())
        out["num_queries"] = float(len(self))
        return out

    @staticmethod
    def concat(parts: Sequence["QueryMetrics"]) -> "QueryMetrics":
        """Join batches (e.g. the query splits of several evaluator actors) in order."""
        first = parts[0]
        return QueryMetrics(
            recall={k: np.concatenate([p.recall[k] for p in parts]) for k in first.recall},
            ap={k: np.concatenate([p.ap[k] for p in parts]) for k in first.ap},
            first_rank=np.concatenate([p.first_rank for p in parts]),
            depth=first.depth)


def per_query(hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> QueryMetrics:
    """Recall@k and AP@k for every k in ``ks`` plus the first-hit rank, per query."""
    return QueryMetrics(recall={k: recall_at_k(hits, k) for k in ks},
                        ap={k: average_precision_at_k(hits, k, n_relevant) for k in ks},
                        first_rank=first_hit_rank(hits), depth=hits.shape[1])


def summarise(hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Mean metrics for MLflow: ``recall_at_K``, ``map_at_K`` for K in ``ks``, ``mrr``."""
    return per_query(hits, n_relevant, ks).summary()

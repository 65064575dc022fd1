"""Hybrid retrieval: fuse a dense (FAISS) and a lexical (tantivy BM25) ranking into one.

Two methods, both over the top ``retrieval.candidates`` of each source:
- weighted reciprocal rank fusion: ``sum_s w_s / (rrf_k + rank_s)`` (rank 1-based; an item a
  source did not return gets nothing from it), scale-free and robust;
- convex combination ``alpha * dense + (1 - alpha) * lexical`` of per-query min-max normalised
  scores (a source's missing item counts as its worst, 0).

Fusion weights matter more than the method (an equal-weight fusion of a weak and a strong
ranker is often worse than the strong one alone), so ``tune`` sweeps them on a validation split
and ``save_tuned``/``load_tuned`` keep the chosen values with the index for serving.

Rankings use the ``VectorIndex.search`` contract: ``(scores, ids)`` of shape (n_queries, depth),
best first, padding marked by ``missing_id`` (-1 / ""). Fused rows are best first with ties
ordered by id, padded the same way with score -inf.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from afmrl.config import ConfigError, RetrievalConfig
from afmrl.index.faiss_index import MISSING_INT, MISSING_STR
from afmrl.utils.io import atomic_write_json

log = logging.getLogger(__name__)

FUSION_FILE = "fusion.json"
FUSION_FIELDS = ("fusion", "rrf_k", "dense_weight", "lexical_weight", "alpha", "candidates")
Ranking = tuple[np.ndarray, np.ndarray]  # (scores, ids), each (n_queries, depth)


def _check(ranking: Ranking, n_queries: int | None, what: str) -> Ranking:
    scores, ids = np.asarray(ranking[0], dtype=np.float64), np.asarray(ranking[1])
    if scores.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(f"{what} ranking must be (scores, ids) of one (n_queries, depth) shape, "
                         f"got {scores.shape} and {ids.shape}")
    if n_queries is not None and len(ids) != n_queries:
        raise ValueError(f"{what} ranking has {len(ids)} queries, expected {n_queries}")
    return scores, ids


def _padding(ids: np.ndarray) -> Any:
    return MISSING_STR if ids.dtype.kind in "UO" else MISSING_INT


def _combine(contributions: list[tuple[np.ndarray, np.ndarray]], k: int) -> Ranking:
    """Sum per-(query, id) contributions of all sources and keep each query's top k.

    Vectorised: items are coded to integers, (query, code) pairs sorted and summed with
    ``reduceat``, then each query's sums ranked best first with ties by id.
    """
    n_queries = len(contributions[0][1])
    ids = np.concatenate([ids for _, ids in contributions], axis=1)
    values = np.concatenate([v for v, _ in contributions], axis=1)
    string_ids = any(i.dtype.kind in "UO" for _, i in contributions)
    if string_ids:
        ids = np.where(ids == MISSING_INT, MISSING_STR, ids).astype(str) \
            if ids.dtype.kind not in "UO" else ids.astype(str)
    pad = _padding(ids)
    rows = np.repeat(np.arange(n_queries), ids.shape[1])
    flat_ids, flat_values = ids.ravel(), values.ravel()
    keep = flat_ids != pad
    rows, flat_ids, flat_values = rows[keep], flat_ids[keep], flat_values[keep]
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n_queries, k), pad, dtype=ids.dtype if string_ids else np.int64)
    if len(flat_ids) == 0:
        return out_scores, out_ids
    uniques, codes = np.unique(flat_ids, return_inverse=True)  # codes follow id order
    order = np.lexsort((codes, rows))
    rows, codes, flat_values = rows[order], codes[order], flat_values[order]
    starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])])
    sums = np.add.reduceat(flat_values, starts)
    seg_rows, seg_codes = rows[starts], codes[starts]
    ranked = np.lexsort((seg_codes, -sums, seg_rows))
    seg_rows, seg_codes, sums = seg_rows[ranked], seg_codes[ranked], sums[ranked]
    first = np.searchsorted(seg_rows, np.arange(n_queries))
    position = np.arange(len(seg_rows)) - first[seg_rows]
    top = position < k
    out_scores[seg_rows[top], position[top]] = sums[top]
    out_ids[seg_rows[top], position[top]] = uniques[seg_codes[top]]
    return out_scores, out_ids


def _truncate(ranking: Ranking, k: int) -> Ranking:
    """A source's own ranking cut or padded to k columns."""
    scores, ids = np.asarray(ranking[0], dtype=np.float32), np.asarray(ranking[1])
    if ids.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    extra = k - ids.shape[1]
    return (np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, extra)), constant_values=_padding(ids)))


def rrf(rankings: Iterable[Ranking], weights: Iterable[float], rrf_k: float, k: int) -> Ranking:
    """Weighted reciprocal rank fusion of any number of rankings (same queries)."""
    rankings, weights = list(rankings), list(weights)
    if len(rankings) != len(weights) or not rankings:
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    n_queries = len(np.asarray(rankings[0][1]))
    contributions = []
    for number, (ranking, weight) in enumerate(zip(rankings, weights)):
        _, ids = _check(ranking, n_queries, f"source {number}")
        ranks = np.arange(1, ids.shape[1] + 1, dtype=np.float64)
        contributions.append((np.broadcast_to(weight / (rrf_k + ranks), ids.shape), ids))
    return _combine(contributions, k)


def min_max(scores: np.ndarray, ids: np.ndarray, larger_is_better: bool = True) -> np.ndarray:
    """Per-query scores mapped to [0, 1] (best 1) over the returned items; padding gets 0 and
    a query whose items all score the same gets 1 for each of them."""
    padded = ids == _padding(ids)
    scores = np.asarray(scores if larger_is_better else -scores, dtype=np.float64)
    if scores.shape[1] == 0:  # a source with nothing to return (e.g. a filter matched nothing)
        return scores
    # Masked min/max, not nanmin/nanmax: a query the source returned nothing for (a photo query
    # to the lexical index) is all padding, which they warn about once per call.
    low = np.where(padded, np.inf, scores).min(axis=1, keepdims=True)
    high = np.where(padded, -np.inf, scores).max(axis=1, keepdims=True)
    span = np.where(np.isfinite(low), high - low, 0.0)
    normalised = np.where(span > 0, (scores - np.where(span > 0, low, 0)) /
                          np.where(span > 0, span, 1), 1.0)
    return np.where(padded, 0.0, normalised)


def convex(dense: Ranking, lexical: Ranking, alpha: float, k: int,
           dense_larger_is_better: bool = True) -> Ranking:
    """``alpha * dense + (1 - alpha) * lexical`` of min-max normalised scores."""
    d_scores, d_ids = _check(dense, None, "dense")
    l_scores, l_ids = _check(lexical, len(d_ids), "lexical")
    return _combine([(alpha * min_max(d_scores, d_ids, dense_larger_is_better), d_ids),
                     ((1 - alpha) * min_max(l_scores, l_ids), l_ids)], k)


def fuse(dense: Ranking, lexical: Ranking, config: RetrievalConfig, k: int,
         dense_larger_is_better: bool = True) -> Ranking:
    """The hybrid ranking ``config`` asks for (``fusion``, ``rrf_k``, weights, ``alpha``).

    A zero weight (or alpha 0 / 1) returns the other source's own ranking, so the ends of a
    sweep are exactly the single sources (min-max gives a source's last item 0, the same as an
    item it did not return, which would otherwise reorder the tail)."""
    dense_share = config.dense_weight if config.fusion == "rrf" else config.alpha
    lexical_share = config.lexical_weight if config.fusion == "rrf" else 1 - config.alpha
    if lexical_share == 0 or dense_share == 0:
        return _truncate(dense if lexical_share == 0 else lexical, k)
    if config.fusion == "rrf":
        return rrf([dense, lexical], [config.dense_weight, config.lexical_weight],
                   config.rrf_k, k)
    return convex(dense, lexical, config.alpha, k, dense_larger_is_better)


def rank(mode: str, dense: Callable[[], Ranking] | None, lexical: Callable[[], Ranking] | None,
         config: RetrievalConfig, k: int, dense_larger_is_better: bool = True) -> Ranking:
    """One ranking for ``mode``: only the source(s) it needs are searched (lazily)."""
    if mode == "dense":
        return dense()
    if mode == "lexical":
        return lexical()
    if mode != "hybrid":
        raise ValueError(f"unknown retrieval mode {mode!r}; choose dense, lexical or hybrid")
    return fuse(dense(), lexical(), config, k, dense_larger_is_better)


# -- tuning --------------------------------------------------------------------------------------
WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RRF_K_GRID = (5.0, 20.0, 60.0)


def grid(base: RetrievalConfig) -> list[RetrievalConfig]:
    """Candidate fusions: RRF over dense share w (dense_weight w, lexical 1 - w) x rrf_k, and
    convex over alpha. w = 0 / 1 and alpha = 0 / 1 are the single sources, so a tuned hybrid
    can fall back to the better one."""
    mixed = [w for w in WEIGHT_GRID if 0 < w < 1]  # rrf_k changes nothing for one source
    rrf_configs = [dataclasses.replace(base, fusion="rrf", rrf_k=rk, dense_weight=w,
                                       lexical_weight=round(1 - w, 6))
                   for rk, w in [(RRF_K_GRID[-1], 0.0), (RRF_K_GRID[-1], 1.0)]
                   + [(rk, w) for rk in RRF_K_GRID for w in mixed]]
    convex_configs = [dataclasses.replace(base, fusion="convex", alpha=a) for a in WEIGHT_GRID]
    return rrf_configs + convex_configs


def describe(config: RetrievalConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in FUSION_FIELDS}


def tune(dense: Ranking, lexical: Ranking, objective: Callable[[np.ndarray], float],
         base: RetrievalConfig, k: int, dense_larger_is_better: bool = True
         ) -> tuple[RetrievalConfig, list[dict[str, Any]]]:
    """The fusion of ``grid(base)`` maximising ``objective(fused ids)`` on these (validation)
    rankings, and the whole sweep. Ties keep the earlier grid entry (RRF before convex)."""
    sweep = []
    best, best_value = None, -np.inf
    for candidate in grid(base):
        _, ids = fuse(dense, lexical, candidate, k, dense_larger_is_better)
        value = float(objective(ids))
        sweep.append({**describe(candidate), "objective": value})
        if value > best_value + 1e-12:
            best, best_value = candidate, value
    log.info("fusion tuned: %s (objective %.4f over %d candidates)", describe(best), best_value,
             len(sweep))
    return best, sweep


def save_tuned(index_dir: str | Path, config: RetrievalConfig, sweep: list[dict[str, Any]],
               split: str) -> Path:
    """Write ``fusion.json`` beside the index manifest: what serving will use."""
    path = Path(index_dir) / FUSION_FILE
    atomic_write_json(path, {"tuned_on": split, "chosen": describe(config), "sweep": sweep})
    return path


def load_tuned(index_dir: str | Path, default: RetrievalConfig) -> RetrievalConfig:
    """``default`` with the fusion values tuned for this index, if any were saved."""
    path = Path(index_dir) / FUSION_FILE
    if not path.is_file():
        return default
    try:
        chosen = json.loads(path.read_text())["chosen"]
        return dataclasses.replace(default, **{f: chosen[f] for f in FUSION_FIELDS})
    except (KeyError, TypeError, json.JSONDecodeError, ConfigError) as error:
        raise ConfigError(f"{path} is not a valid tuned fusion ({error}); delete it to use "
                          f"the configured retrieval.* values or re-run `afmrl eval`") from None

"""One evaluation protocol for any catalog, and the systems it compares.

Protocol (the same code path for every catalog in the afmrl schema):
- queries = the usable rows of the evaluated split (image and/or text, whatever the row has,
  plus generated attributes when enrichment is on);
- gallery = the ``catalog`` rows; correct = same ``group_id``;
- a catalog without ``catalog`` rows (e.g. PriceRunner offers) falls back to *leave-one-out
  within the split*: the split's rows are the gallery, every row of a product with >= 2 rows in
  the split is a query, and its own gallery position is excluded from its ranking.

A *system* turns an ``EvalSet`` into a ``Ranking`` (gallery positions, best first); every system
is scored by ``score_ranking`` with the metric functions of ``afmrl.index.metrics``, so numbers
of dense, lexical and hybrid systems are comparable by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from afmrl.extract.schema import attribute_text
from afmrl.index.metrics import QueryMetrics, hit_matrix, per_query
from afmrl.models.embedders import EmbedInput, embed
from afmrl.train.data import catalog_inputs, query_inputs, usable

# (indices [n_queries, depth] gallery positions, -1 padded; scores float32, -inf padded)
Ranking = tuple[np.ndarray, np.ndarray]
WITHIN_GROUP_R1 = "within_group/recall_at_1"
PHOTO_QUERIES_R1 = "photo_queries/recall_at_1"  # reported where a split has both query kinds
TEXT_QUERIES_R1 = "text_queries/recall_at_1"
# Rankings are searched this deep (at least max(ks)): the within-group metric reads the first
# in-group item of the ranking, exact whenever it lies within this depth.
DEFAULT_DEPTH = 100


@dataclass(frozen=True)
class EvalSet:
    """Queries and gallery of one evaluation, as model inputs and as lexical text."""
    queries: list[EmbedInput]
    query_texts: list[str]            # title + text (+ attributes), "" for a photo-only query
    query_products: np.ndarray        # int64 group_id per query
    query_coarse: np.ndarray          # int64 coarse_group_id per query (-1: none)
    gallery: list[EmbedInput]
    gallery_texts: list[str]          # title + text
    gallery_attribute_texts: list[str]
    gallery_item_ids: list[str]
    gallery_products: np.ndarray
    gallery_coarse: np.ndarray
    query_positions: np.ndarray | None = None  # leave-one-out: each query's own gallery position
    query_item_ids: list[str] = field(default_factory=list)
    coarse_names: dict[int, str] = field(default_factory=dict)
    split: str = "test"
    # The gallery's catalog rows, for the embedding job (``afmrl.eval.run.gallery_embeddings``)
    gallery_rows: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def leave_one_out(self) -> bool:
        return self.query_positions is not None

    @property
    def gallery_lexical_texts(self) -> list[str]:
        """What lexical systems index: title + text + attributes."""
        return [_join(t, a) for t, a in zip(self.gallery_texts, self.gallery_attribute_texts)]

    @property
    def photo_queries(self) -> np.ndarray:
        """Which queries carry a photo (the rest are text-only)."""
        return np.array([q.image is not None for q in self.queries], dtype=bool)

    @property
    def has_text(self) -> bool:
        """Lexical systems need text on both sides (an image-only catalog has none)."""
        return any(self.query_texts) and any(self.gallery_lexical_texts)

    def __len__(self) -> int:
        return len(self.queries)


def _join(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _lexical_texts(rows: pd.DataFrame, keys: Sequence[str], with_attributes: bool) -> list[str]:
    attributes = [attribute_text(a, keys) if with_attributes else "" for a in rows["attributes"]]
    return [_join(t, d, a) for t, d, a in zip(rows["title"], rows["text"], attributes)]


def build_eval_set(catalog: pd.DataFrame, split: str, keys: Sequence[str],
                   with_attributes: bool) -> EvalSet:
    """The protocol above for ``split`` of ``catalog`` (a validated, attribute-labelled frame)."""
    rows = usable(catalog)
    gallery = rows[rows["split"] == "catalog"]
    in_split = rows[rows["split"] == split]
    if in_split.empty:
        raise ValueError(f"no usable rows with split '{split}' to evaluate; the catalog has "
                         f"splits {sorted(rows['split'].unique())}")
    positions = None
    if gallery.empty or split == "catalog":  # leave-one-out within the split
        gallery = in_split.reset_index(drop=True)
        sizes = gallery.groupby("group_id")["item_id"].transform("size").to_numpy()
        positions = np.flatnonzero(sizes >= 2)
        query_rows = gallery.iloc[positions]
        gallery_inputs = catalog_inputs(gallery, keys)
        queries = [gallery_inputs[i] for i in positions]
        query_texts = _lexical_texts(query_rows, keys, True)
    else:
        query_rows = in_split[in_split["group_id"].isin(gallery["group_id"])]
        gallery_inputs = catalog_inputs(gallery, keys)
        queries = query_inputs(query_rows, keys, with_attributes)
        query_texts = _lexical_texts(query_rows, keys, with_attributes)
    if query_rows.empty:
        raise ValueError(f"split '{split}' has no query with a correct item: "
                         + ("no product has two rows in it (leave-one-out)" if positions is not None
                            else "none of its group_ids is among the 'catalog' rows"))
    coarse = rows.drop_duplicates("coarse_group_id")
    return EvalSet(
        queries=queries, query_texts=query_texts,
        query_products=query_rows["group_id"].to_numpy(np.int64),
        query_coarse=query_rows["coarse_group_id"].to_numpy(np.int64),
        gallery=gallery_inputs,
        gallery_texts=[_join(t, d) for t, d in zip(gallery["title"], gallery["text"])],
        gallery_attribute_texts=[attribute_text(a, keys) for a in gallery["attributes"]],
        gallery_item_ids=gallery["item_id"].tolist(),
        gallery_products=gallery["group_id"].to_numpy(np.int64),
        gallery_coarse=gallery["coarse_group_id"].to_numpy(np.int64),
        query_positions=positions, query_item_ids=query_rows["item_id"].tolist(),
        coarse_names={int(i): str(n) for i, n in zip(coarse["coarse_group_id"],
                                                      coarse["coarse_group"])},
        split=split, gallery_rows=gallery)


# -- ranking ------------------------------------------------------------------------------------
def ranking_depth(ks: Sequence[int]) -> int:
    return max(max(ks), DEFAULT_DEPTH)


def rank_by_scores(score_rows: Callable[[slice], np.ndarray], n_queries: int, depth: int,
                   exclude: np.ndarray | None = None, chunk: int = 512) -> Ranking:
    """Top ``depth`` gallery positions per query from dense score blocks ``score_rows(rows)``
    (shape [len(rows), gallery]); equal scores rank by gallery position, ``exclude[q]`` is left
    out (leave-one-out), missing slots are -1."""
    indices = np.full((n_queries, depth), -1, dtype=np.int64)
    scores = np.full((n_queries, depth), -np.inf, dtype=np.float32)
    for start in range(0, n_queries, chunk):
        rows = slice(start, min(start + chunk, n_queries))
        block = np.asarray(score_rows(rows), dtype=np.float32).copy()
        if exclude is not None:
            block[np.arange(block.shape[0]), exclude[rows]] = -np.inf
        take = min(depth, block.shape[1])
        top = np.argpartition(-block, take - 1, axis=1)[:, :take] if take < block.shape[1] \
            else np.tile(np.arange(block.shape[1]), (block.shape[0], 1))
        top_scores = np.take_along_axis(block, top, 1)
        order = np.lexsort((top, -top_scores), axis=1)  # score desc, then position asc
        top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores,
                                                                                order, 1)
        top[~np.isfinite(top_scores)] = -1
        indices[rows, :take], scores[rows, :take] = top, top_scores
    return indices, scores


def dense_embeddings(model, eval_set: EvalSet, batch_size: int = 64,
                     gallery: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) embeddings; leave-one-out queries are their own gallery rows.
    ``gallery``: its embeddings computed elsewhere (the embedding job), in gallery order."""
    if gallery is None:
        gallery = embed(model, eval_set.gallery, batch_size)
    queries = gallery[eval_set.query_positions] if eval_set.leave_one_out else \
        embed(model, eval_set.queries, batch_size)
    return queries, gallery


def rank_dense(model, eval_set: EvalSet, depth: int, batch_size: int = 64,
               gallery: np.ndarray | None = None) -> Ranking:
    """An embedder's ranking (inner product of its normalised embeddings)."""
    queries, gallery = dense_embeddings(model, eval_set, batch_size, gallery)
    return rank_by_scores(lambda rows: queries[rows] @ gallery.T, len(queries), depth,
                          eval_set.query_positions)


def _require_text(eval_set: EvalSet, system: str) -> None:
    if not eval_set.has_text:
        raise ValueError(f"{system} needs text on queries and gallery; this evaluation set has "
                         f"none (an image-only catalog)")


def rank_tfidf(eval_set: EvalSet, depth: int) -> Ranking:
    """Character 2-4-gram TF-IDF (char_wb, sublinear tf) over title + text + attributes."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    _require_text(eval_set, "TF-IDF")
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True,
                                 dtype=np.float32)
    gallery = vectorizer.fit_transform(eval_set.gallery_lexical_texts)
    queries = vectorizer.transform(eval_set.query_texts)
    return rank_by_scores(lambda rows: (queries[rows] @ gallery.T).toarray(), len(eval_set),
                          depth, eval_set.query_positions)


def rank_bm25(eval_set: EvalSet, depth: int, k1: float = 1.2, b: float = 0.75) -> Ranking:
    """Okapi BM25 over title + text + attributes, with the tokenizer and IDF of the AGCL loss
    (``afmrl.losses.bm25``) fitted on the gallery."""
    from scipy import sparse

    from afmrl.losses.bm25 import BM25Stats, tokenize

    _require_text(eval_set, "BM25")
    documents = eval_set.gallery_lexical_texts
    stats = BM25Stats.fit(documents)
    vocabulary = sorted(stats.doc_freq)
    column = {token: j for j, token in enumerate(vocabulary)}

    def counts(texts: Sequence[str]) -> sparse.csr_matrix:
        data, cols, indptr = [], [], [0]
        for text in texts:
            tokens = [column[t] for t in tokenize(text) if t in column]
            unique, number = np.unique(np.asarray(tokens, dtype=np.int64), return_counts=True)
            cols.extend(unique.tolist())
            data.extend(number.tolist())
            indptr.append(len(cols))
        return sparse.csr_matrix((np.asarray(data, np.float32), cols, indptr),
                                 shape=(len(texts), len(vocabulary)))

    docs = counts(documents)
    lengths = np.asarray(docs.sum(axis=1)).ravel()
    norm = k1 * (1 - b + b * lengths / (stats.avg_len or 1.0))
    weights = docs.tocoo()
    saturated = weights.data * (k1 + 1) / (weights.data + norm[weights.row])
    idf = stats.idf(vocabulary).numpy().astype(np.float32)
    gallery = sparse.csr_matrix((saturated * idf[weights.col], (weights.row, weights.col)),
                                shape=docs.shape)
    queries = counts(eval_set.query_texts)
    return rank_by_scores(lambda rows: (queries[rows] @ gallery.T).toarray(), len(eval_set),
                          depth, eval_set.query_positions)


def rank_lexical(eval_set: EvalSet, depth: int) -> Ranking:
    """The tantivy lexical index (``afmrl.index.lexical``, what serving uses) over the gallery:
    title + text in the word/code/n-gram fields, attributes in their own field."""
    from afmrl.index.lexical import ShardedLexicalIndex

    _require_text(eval_set, "the lexical index")
    index = ShardedLexicalIndex.build({"item_id": np.arange(len(eval_set.gallery_texts)),
                                       "title": eval_set.gallery_texts,
                                       "attribute_text": eval_set.gallery_attribute_texts}, 1)
    # Leave-one-out: one more, since the query's own row comes back (dropped when scoring).
    scores, ids = index.search(eval_set.query_texts, depth + eval_set.leave_one_out)
    return ids, scores


def rank_hybrid(dense: Ranking, lexical: Ranking, config, depth: int) -> Ranking:
    """Dense and lexical rankings fused as ``config`` (a ``RetrievalConfig``) says."""
    from afmrl.index.fusion import fuse

    scores, ids = fuse((dense[1], dense[0]), (lexical[1], lexical[0]), config, depth)
    return ids, scores


def tune_hybrid(eval_set: EvalSet, dense: Ranking, lexical: Ranking, ks: Sequence[int], base):
    """Fusion weights maximising Recall@1 (MRR breaks ties) on this (validation) set; returns
    the chosen ``RetrievalConfig`` and the sweep."""
    from afmrl.index.fusion import tune

    def objective(ids: np.ndarray) -> float:
        metrics = score_ranking(eval_set, (ids, np.zeros(ids.shape, np.float32)), ks)
        return metrics["recall_at_1"] + 1e-3 * metrics["mrr"]

    return tune((dense[1], dense[0]), (lexical[1], lexical[0]), objective, base,
                dense[0].shape[1])


# -- scoring ------------------------------------------------------------------------------------
def _without_self(eval_set: EvalSet, indices: np.ndarray) -> np.ndarray:
    """Leave-one-out: a query's own position never counts (moved to the end as -1 padding)."""
    if not eval_set.leave_one_out:
        return indices
    own = indices == eval_set.query_positions[:, None]
    keep = np.argsort(own, axis=1, kind="stable")
    return np.where(np.take_along_axis(own, keep, 1), -1, np.take_along_axis(indices, keep, 1))


def _per_query(eval_set: EvalSet, ranking: Ranking, ks: Sequence[int]
               ) -> tuple[QueryMetrics, np.ndarray]:
    """Per-query metrics, and per-query within-group Recall@1 (NaN where it does not apply)."""
    indices = _without_self(eval_set, np.asarray(ranking[0], dtype=np.int64))
    if indices.shape[0] != len(eval_set):
        raise ValueError(f"ranking has {indices.shape[0]} rows for {len(eval_set)} queries")
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    products = eval_set.gallery_products[safe]
    hits = hit_matrix(products, eval_set.query_products, valid)
    keys, counts = np.unique(eval_set.gallery_products, return_counts=True)
    at = np.searchsorted(keys, eval_set.query_products).clip(0, len(keys) - 1)
    n_relevant = np.where(keys[at] == eval_set.query_products, counts[at], 0)
    if eval_set.leave_one_out:
        n_relevant = n_relevant - 1
    metrics = per_query(hits, n_relevant, ks)

    # Within-group Recall@1: the gallery restricted to the query's coarse group, read from the
    # ranking as its first in-group item. Groups with one product are trivially solved: skipped.
    group_products = pd.DataFrame({"c": eval_set.gallery_coarse, "p": eval_set.gallery_products}
                                  ).groupby("c")["p"].nunique()
    eligible = (eval_set.query_coarse >= 0) & np.isin(
        eval_set.query_coarse, group_products.index[group_products >= 2].to_numpy())
    in_group = valid & (eval_set.gallery_coarse[safe] == eval_set.query_coarse[:, None])
    first = np.where(in_group.any(axis=1), in_group.argmax(axis=1), 0)
    top_in_group = in_group.any(axis=1) & hits[np.arange(len(hits)), first]
    within = np.where(eligible, top_in_group.astype(np.float64), np.nan)
    return metrics, within


def score_ranking(eval_set: EvalSet, ranking: Ranking, ks: Sequence[int]) -> dict[str, float]:
    """``recall_at_K``, ``map_at_K`` (K in ks), ``mrr``, ``num_queries``; where coarse groups
    with >= 2 products exist, ``within_group/recall_at_1``; where the split mixes photo and
    text-only queries, Recall@1 of each kind."""
    metrics, within = _per_query(eval_set, ranking, ks)
    out = metrics.summary()
    if np.isfinite(within).any():
        out[WITHIN_GROUP_R1] = float(np.nanmean(within))
    photo = eval_set.photo_queries
    if photo.any() and not photo.all():
        top1 = metrics.first_rank == 1
        out[PHOTO_QUERIES_R1] = float(top1[photo].mean())
        out[TEXT_QUERIES_R1] = float(top1[~photo].mean())
    return out


def score_by_group(eval_set: EvalSet, ranking: Ranking, ks: Sequence[int]) -> list[dict]:
    """The same metrics per coarse group (one dict per group with its name and query count)."""
    metrics, within = _per_query(eval_set, ranking, ks)
    rows = []
    for coarse in np.unique(eval_set.query_coarse):
        mask = eval_set.query_coarse == coarse
        part = QueryMetrics(recall={k: v[mask] for k, v in metrics.recall.items()},
                            ap={k: v[mask] for k, v in metrics.ap.items()},
                            first_rank=metrics.first_rank[mask], depth=metrics.depth)
        row = {"coarse_group_id": int(coarse),
               "coarse_group": eval_set.coarse_names.get(int(coarse), ""), **part.summary()}
        if np.isfinite(within[mask]).any():
            row[WITHIN_GROUP_R1] = float(np.nanmean(within[mask]))
        rows.append(row)
    return rows


def evaluate_model(model, eval_set: EvalSet, ks: Sequence[int], batch_size: int = 64
                   ) -> dict[str, float]:
    """Score an embedder on an evaluation set (what training logs per epoch)."""
    return score_ranking(eval_set, rank_dense(model, eval_set, ranking_depth(ks), batch_size), ks)


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}

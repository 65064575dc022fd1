"""Recall@k / AP@k / first-hit rank of query batches against a fixed gallery.

The same ``GalleryScorer`` runs in-process (``evaluate_retrieval``: tests, small evaluations)
and inside the named actors of ``RecallEvaluator``, the batched contract the RL reward calls
many times per step: the gallery index is built once per actor, each call ships only the query
embeddings and product ids, and queries are split across ``EvalConfig.num_evaluators`` actors.
An item counts as correct when its product id equals the query's (several gallery items may
share a product).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import ray

from afmrl.config import EvalConfig, IndexConfig, RayConfig, RetrievalConfig
from afmrl.index.faiss_index import VectorIndex, as_embeddings
from afmrl.index.metrics import QueryMetrics, hit_matrix, per_query
from afmrl.index.sharded import DEFAULT_ACTOR_CPUS, gather_from_actors
from afmrl.utils.io import sha256_bytes, sha256_json
from afmrl.utils.ray_utils import RESTART_PURE_ACTOR, kill_actors

# The evaluation index is never saved, so it is tied to no embedder run.
IN_MEMORY_MODEL_HASH = "in-memory-evaluation-gallery"


def _check_batch(query_embeddings: np.ndarray, query_products: Sequence[Any]) -> np.ndarray:
    query_products = np.asarray(query_products)
    if len(query_products) != len(query_embeddings) or len(query_products) == 0:
        raise ValueError(f"need a non-empty batch with one product id per query, got "
                         f"{len(query_embeddings)} embeddings and {len(query_products)} ids")
    return query_products


@dataclass(frozen=True)
class HybridGallery:
    """What a scorer needs to rank by hybrid retrieval: the gallery's lexical texts (one per
    item, in gallery order) and the fusion to apply (``afmrl.index.fusion``)."""
    texts: tuple[str, ...]
    fusion: RetrievalConfig


class GalleryScorer:
    """A gallery index (ids = gallery positions) plus each product's item count."""

    def __init__(self, gallery_embeddings: np.ndarray, gallery_products: Sequence[Any],
                 config: IndexConfig, ks: Sequence[int], hybrid: HybridGallery | None = None
                 ) -> None:
        self.products = np.asarray(gallery_products)
        if len(self.products) != len(gallery_embeddings) or len(self.products) == 0:
            raise ValueError(f"need a non-empty gallery with one product id per item, got "
                             f"{len(gallery_embeddings)} embeddings and {len(self.products)} ids")
        self.ks = tuple(sorted(set(ks)))
        self.index = VectorIndex.build(gallery_embeddings, np.arange(len(self.products)), config,
                                       IN_MEMORY_MODEL_HASH)
        self._product_keys, self._product_counts = np.unique(self.products, return_counts=True)
        self.hybrid = hybrid
        self.lexical = None
        if hybrid is not None:
            from afmrl.index.lexical import ShardedLexicalIndex

            self.lexical = ShardedLexicalIndex.build(
                {"item_id": np.arange(len(self.products)), "title": list(hybrid.texts)}, 1)

    def _search(self, queries: np.ndarray, texts: Sequence[str] | None, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """Dense top-n, or (with a lexical gallery and query texts) the fused top-n."""
        if self.lexical is None or texts is None:
            return self.index.search(queries, n)
        from afmrl.index.fusion import fuse

        depth = max(n, self.hybrid.fusion.candidates)
        return fuse(self.index.search(queries, depth), self.lexical.search(list(texts), depth),
                    self.hybrid.fusion, n, self.index.config.metric == "ip")

    def _count_in_gallery(self, products: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self._product_keys, products).clip(0, len(self._product_keys) - 1)
        return np.where(self._product_keys[at] == products, self._product_counts[at], 0)

    def score(self, query_embeddings: np.ndarray, query_products: Sequence[Any],
              exclude_items: np.ndarray | None = None,
              query_texts: Sequence[str] | None = None) -> QueryMetrics:
        """Per-query metrics, searching ``max(ks)`` deep (hybrid when the scorer has a lexical
        gallery and ``query_texts`` are given).

        ``exclude_items[q]`` is a gallery position to leave out for query q (leave-one-out
        evaluation, where every query is also a gallery item), or -1 for none.
        """
        query_products = _check_batch(query_embeddings, query_products)
        depth = max(self.ks)
        n_relevant = self._count_in_gallery(query_products)
        if exclude_items is None:
            _, positions = self._search(query_embeddings, query_texts, depth)
        else:
            exclude_items = np.asarray(exclude_items, dtype=np.int64)
            _, positions = self._search(query_embeddings, query_texts, depth + 1)
            dropped = positions == exclude_items[:, None]
            # Stable sort on the mask moves the excluded item to the end, keeping the order.
            keep = np.argsort(dropped, axis=1, kind="stable")[:, :depth]
            positions = np.take_along_axis(positions, keep, axis=1)
            excluded_relevant = (exclude_items >= 0) & (
                self.products[exclude_items.clip(0)] == query_products)
            n_relevant = n_relevant - excluded_relevant
        valid = positions >= 0
        hits = hit_matrix(self.products[np.where(valid, positions, 0)], query_products, valid)
        return per_query(hits, n_relevant, self.ks)


def evaluate_retrieval(query_embeddings: np.ndarray, query_products: Sequence[Any],
                       gallery_embeddings: np.ndarray, gallery_products: Sequence[Any],
                       config: IndexConfig = IndexConfig(kind="flat"),
                       ks: Sequence[int] = EvalConfig().ks,
                       exclude_items: np.ndarray | None = None) -> QueryMetrics:
    """In-process evaluation (no Ray): the reference the actor group must match."""
    return GalleryScorer(gallery_embeddings, gallery_products, config, ks).score(
        query_embeddings, query_products, exclude_items)


@ray.remote
class _EvaluatorActor:
    def __init__(self, fingerprint: str, gallery_embeddings: np.ndarray,
                 gallery_products: np.ndarray, config: IndexConfig, ks: Sequence[int],
                 hybrid: HybridGallery | None = None) -> None:
        self.fingerprint = fingerprint
        self.scorer = GalleryScorer(gallery_embeddings, gallery_products, config, ks, hybrid)

    def get_fingerprint(self) -> str:
        return self.fingerprint

    def score(self, query_embeddings: np.ndarray, query_products: np.ndarray,
              exclude_items: np.ndarray | None, query_texts: Sequence[str] | None = None
              ) -> QueryMetrics:
        return self.scorer.score(query_embeddings, query_products, exclude_items, query_texts)


def _fingerprint(gallery_embeddings: np.ndarray, gallery_products: np.ndarray,
                 config: IndexConfig, ks: Sequence[int], hybrid: HybridGallery | None = None
                 ) -> str:
    """Identity of what an evaluator group computes, so a reused group is the right one."""
    return sha256_json({"embeddings": sha256_bytes(gallery_embeddings.tobytes()),
                        "shape": gallery_embeddings.shape,
                        "products": sha256_bytes(gallery_products.astype(str).tobytes()),
                        "config": config, "ks": sorted(set(ks)),
                        "hybrid": None if hybrid is None else sha256_json(hybrid)})


class RecallEvaluator:
    """A named group of evaluator actors, each holding the whole gallery index.

    ``get_or_create`` returns the existing group when one of that name is alive (a second
    caller, e.g. another reward worker, shares it), checking it holds the same gallery.
    """

    def __init__(self, name: str, actors: list[Any], ray_config: RayConfig,
                 gallery_refs: Sequence[Any] = ()) -> None:
        self.name = name
        self.actors = actors
        self.ray_config = ray_config
        # The creator holds the gallery's object refs: Ray restarts a dead actor by running its
        # constructor again, and released refs would be gone by then.
        self.gallery_refs = tuple(gallery_refs)

    def _labels(self) -> list[str]:
        return [f"evaluator actor '{self.name}-{i}'" for i in range(len(self.actors))]

    @classmethod
    def get_or_create(cls, name: str, gallery_embeddings: np.ndarray | None = None,
                      gallery_products: Sequence[Any] | None = None,
                      index_config: IndexConfig = IndexConfig(kind="flat"),
                      eval_config: EvalConfig = EvalConfig(),
                      ray_config: RayConfig = RayConfig(),
                      num_cpus: float = DEFAULT_ACTOR_CPUS,
                      hybrid: HybridGallery | None = None) -> "RecallEvaluator":
        """Reuse the group ``name`` in ``ray_config.namespace`` or start it with the gallery.

        Without a gallery, only an existing group is accepted. The actors live as long as the
        process that created them; ``shutdown`` ends them early.
        """
        names = [f"{name}-{i}" for i in range(eval_config.num_evaluators)]
        if gallery_embeddings is None:
            try:
                actors = [ray.get_actor(n, namespace=ray_config.namespace) for n in names]
            except ValueError as error:
                raise ValueError(f"no evaluator group '{name}' with {len(names)} actors in Ray "
                                 f"namespace '{ray_config.namespace}'; pass the gallery "
                                 f"embeddings and product ids to create it") from error
            return cls(name, actors, ray_config)
        if gallery_products is None:
            raise ValueError("gallery_products are required with gallery_embeddings")
        embeddings = as_embeddings(gallery_embeddings, what="gallery embeddings")
        products = np.asarray(gallery_products)
        fingerprint = _fingerprint(embeddings, products, index_config, eval_config.ks, hybrid)
        refs = [ray.put(embeddings), ray.put(products)]
        actors = [_EvaluatorActor.options(name=n, namespace=ray_config.namespace,
                                          get_if_exists=True, num_cpus=num_cpus,
                                          **RESTART_PURE_ACTOR)
                  .remote(fingerprint, *refs, index_config, eval_config.ks, hybrid)
                  for n in names]
        self = cls(name, actors, ray_config, refs)
        found = gather_from_actors([a.get_fingerprint.remote() for a in actors], self._labels(),
                                   ray_config.call_timeout_s, "RecallEvaluator.get_or_create")
        if any(f != fingerprint for f in found):
            raise ValueError(f"evaluator group '{name}' already exists with a different gallery, "
                             f"index config or ks; use another name, or shutdown() the old one")
        return self

    def evaluate(self, query_embeddings: np.ndarray, query_products: Sequence[Any],
                 exclude_items: np.ndarray | None = None,
                 query_texts: Sequence[str] | None = None) -> QueryMetrics:
        """Per-query metrics for one batch, split across the actors, in query order."""
        query_embeddings = as_embeddings(query_embeddings, what="query embeddings")
        query_products = _check_batch(query_embeddings, query_products)
        exclude_items = None if exclude_items is None else np.asarray(exclude_items)
        chunks = [c for c in np.array_split(np.arange(len(query_products)), len(self.actors))
                  if len(c)]
        refs = [actor.score.remote(query_embeddings[c], query_products[c],
                                   None if exclude_items is None else exclude_items[c],
                                   None if query_texts is None else [query_texts[i] for i in c])
                for actor, c in zip(self.actors, chunks)]
        parts = gather_from_actors(refs, self._labels(), self.ray_config.call_timeout_s,
                                   "RecallEvaluator.evaluate")
        return QueryMetrics.concat(parts)

    def shutdown(self) -> None:
        kill_actors(self.actors)

"""Batches for contrastive training in which no product appears twice.

Each item's positive is its own paired view (image <-> attribute text of the same item), so
every other item in the batch is a negative. Two items of one product in a batch would be a
false negative that no loss weight can fix (open_clip#821, sentence-transformers#2756); the
loss also masks same-product pairs, but the sampler keeps them out of a rank's batch so that no
negative slot is wasted. Across ranks (gathered negatives) the loss's product-id mask handles it.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np


def _codes(values: Sequence[Hashable]) -> np.ndarray:
    """Dense int codes in first-seen order (deterministic, unlike hashing strings)."""
    table: dict[Hashable, int] = {}
    return np.array([table.setdefault(v, len(table)) for v in values], dtype=np.int64)


def _pack(items: np.ndarray, groups: np.ndarray, batch_size: int,
          rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw full batches of distinct groups from ``items``; return them and the unused items.

    Each batch samples batch_size groups without replacement, proportional to their remaining
    items (Gumbel top-k), then takes the next shuffled item of each. Favouring groups with many
    items left balances the draw, so few items are stranded when fewer than batch_size groups
    remain, while batch composition stays random (unlike striping items over batches).
    """
    items = items[rng.permutation(len(items))]
    _, group_of = np.unique(groups[items], return_inverse=True)
    order = np.argsort(group_of, kind="stable")
    items, group_of = items[order], group_of[order]
    counts = np.bincount(group_of)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    taken = np.zeros_like(counts)
    batches = []
    while np.count_nonzero(counts - taken) >= batch_size:
        remaining = counts - taken
        with np.errstate(divide="ignore"):
            keys = np.log(remaining) + rng.gumbel(size=len(counts))
        chosen = np.argpartition(-keys, batch_size - 1)[:batch_size]
        batches.append(items[starts[chosen] + taken[chosen]])
        taken[chosen] += 1
    unused = np.arange(len(items)) - starts[group_of] >= taken[group_of]
    return batches, items[unused]


class ProductBatchSampler:
    """A ``batch_sampler`` yielding lists of item indices, one item per product per batch.

    * Deterministic: the epoch's batches depend only on (seed, epoch); every rank computes the
      same global list and takes batches rank, rank + R, ... (R = num_replicas), truncated so
      every rank gets the same number (drop_last: a rank short of a batch would hang the
      collectives). An epoch visits each item at most once; items that cannot complete a batch
      without repeating a product are dropped for that epoch.
    * Resumable: ``state_dict()`` is (epoch, position), position counting batches handed out in
      the epoch. A DataLoader with workers prefetches from the sampler, so then save the number
      of batches the trainer actually consumed as the position instead.
    * Whole accumulation windows (``batches_multiple_of`` = gradient-accumulation steps): each
      rank's batches per epoch are cut to a multiple of it, so an epoch ends on an optimizer
      step and epoch-end checkpoints/evaluations never land mid-accumulation.
    * Hard batches (``coarse_ids`` given, e.g. the category per item): batches are filled from
      one coarse group as long as it still has batch_size distinct products with items left;
      the rest (and groups with fewer products than batch_size) is mixed into ordinary batches.

    Finishing an epoch moves the sampler to (epoch + 1, 0); ``set_epoch`` with the current epoch
    keeps the position, so ``load_state_dict`` followed by the usual ``set_epoch`` loop resumes.
    """

    def __init__(self, product_ids: Sequence[Hashable], batch_size: int, *,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 coarse_ids: Sequence[Hashable] | None = None,
                 batches_multiple_of: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batches_multiple_of < 1:
            raise ValueError(f"batches_multiple_of must be >= 1, got {batches_multiple_of}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        if coarse_ids is not None and len(coarse_ids) != len(product_ids):
            raise ValueError(f"coarse_ids has {len(coarse_ids)} entries for {len(product_ids)} "
                             "items; pass one coarse id (e.g. category) per item")
        self._groups = _codes(product_ids)
        num_products = len(set(self._groups.tolist()))
        if num_products < batch_size:
            raise ValueError(f"the catalog has {num_products} distinct products but the batch "
                             f"size is {batch_size}: a batch cannot hold {batch_size} different "
                             "products; lower the per-device batch size or use a larger catalog")
        self._coarse = None if coarse_ids is None else _codes(coarse_ids)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.batches_multiple_of = batches_multiple_of
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        if len(self) == 0:
            raise ValueError(f"an epoch has fewer than {num_replicas * batches_multiple_of} full "
                             f"batches of {batch_size} distinct products, so some rank would get "
                             f"fewer than {batches_multiple_of} (one accumulation window); lower "
                             "the batch size, the number of workers or grad_accum_steps")

    def _rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (cached: len() and iteration share them)."""
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            everything = np.arange(len(self._groups))
            if self._coarse is None:
                batches, _ = _pack(everything, self._groups, self.batch_size, rng)
            else:
                batches, leftovers = [], []
                for coarse in np.unique(self._coarse):
                    full, rest = _pack(everything[self._coarse == coarse], self._groups,
                                       self.batch_size, rng)
                    batches += full
                    leftovers.append(rest)
                batches += _pack(np.concatenate(leftovers), self._groups, self.batch_size, rng)[0]
                batches = [batches[i] for i in rng.permutation(len(batches))]
            per_rank = len(batches) // self.num_replicas
            per_rank -= per_rank % self.batches_multiple_of
            mine = batches[self.rank:per_rank * self.num_replicas:self.num_replicas]
            self._cache = (epoch, [batch.tolist() for batch in mine])
        return self._cache[1]

    def num_batches(self, epoch: int) -> int:
        """Batches per rank in ``epoch`` (it varies by a batch or so between epochs; sum it over
        the epochs for a learning-rate schedule). The same on every rank."""
        return len(self._rank_batches(epoch))

    def __len__(self) -> int:
        """Batches per rank in the current epoch, including those already handed out."""
        return self.num_batches(self.epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        while self.position < len(batches):
            self.position += 1
            yield batches[self.position - 1]
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler "
                             f"uses {self.seed}; resume with the same train.seed")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

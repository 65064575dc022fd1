"""AGCL: the attribute-guided contrastive loss of AFMRL (Zhang et al., 2026).

A weighted InfoNCE over a batch of paired items (query q_i, candidate c_i; e.g. the image and the
attribute text of item i), with s_ij = q_i . c_j on L2-normalised embeddings:

    L_i = -log( w_ii e^{s_ii/tau} / (w_ii e^{s_ii/tau} + sum_{j in N_i} w_ij e^{s_ij/tau}) )

* w_ij = exp(1 + tanh(BM25_ij)) for negatives: a negative whose attributes overlap the anchor's
  (same brand, same category) is a hard negative and weighs up to e^2, an unrelated one e^1.
* w_ii = exp(1 + tanh(BM25_ii)) as in the paper (``positive_weight="bm25"``, the default), with
  BM25_ii the score of the anchor's attribute text against its positive's (here the same item,
  so the diagonal of the batch's BM25 matrix). An item with rich attributes gets w_ii near e^2,
  one with none e^1, so the weight of the positive term scales with how much its attributes say.
  ``positive_weight="one"`` keeps w_ii = 1 (the weights then speak about negatives only and act
  like an additive margin of 1 + tanh(BM25_ij) on each negative's logit) for the ablation.
* N_i drops likely false negatives before the softmax: another item of the same product (its
  image/text *is* a correct answer), and any candidate with s_ij > s_ii + delta (an unlabelled
  duplicate the model already ranks above the positive).

Everything is computed in log-space (log w added to the logits, dropped entries at -inf,
logsumexp), so 1/tau = 100 with s ~ 1 does not overflow.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as funcol

from afmrl.config import TrainConfig

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: 1/tau never exceeds 100


class AGCLLoss(nn.Module):
    """AGCL with switchable parts, so the ablation (plain InfoNCE / + weights / + filtering) runs
    through one function: ``attribute_weights=False`` sets every w to 1,
    ``positive_weight="one"`` keeps the weights off the positive term and
    ``false_negative_filter=False`` keeps every negative.

    The temperature is held as log(1/tau) (a parameter if learnable, else a buffer) and clamped at
    log(100) like CLIP. A learnable tau must reach the optimizer and the gradient averaging: make
    the loss a submodule of the model handed to DDP/DeepSpeed.
    """

    def __init__(self, temperature: float = 0.05, learn_temperature: bool = False,
                 attribute_weights: bool = True, false_negative_filter: bool = True,
                 margin: float = 0.1, gather_negatives: bool = True,
                 symmetric: bool = False, positive_weight: str = "bm25") -> None:
        super().__init__()
        if positive_weight not in ("bm25", "one"):
            raise ValueError(f"positive_weight {positive_weight!r} is not one of 'bm25' "
                             "(w_ii = exp(1 + tanh(BM25_ii)), the paper) or 'one' (w_ii = 1)")
        if not temperature >= 1 / 100:
            raise ValueError(f"temperature {temperature} is below 0.01: 1/tau is clamped at 100 "
                             "(as in CLIP); use a temperature >= 0.01")
        log_scale = torch.tensor(math.log(1 / temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale)
        self.attribute_weights = attribute_weights
        self.false_negative_filter = false_negative_filter
        self.margin = margin
        self.gather_negatives = gather_negatives
        self.symmetric = symmetric
        self.positive_weight = positive_weight

    @classmethod
    def from_config(cls, config: TrainConfig, symmetric: bool = False) -> AGCLLoss:
        return cls(temperature=config.temperature, learn_temperature=config.learn_temperature,
                   attribute_weights=config.attribute_weights,
                   false_negative_filter=config.false_negative_filter,
                   margin=config.false_negative_margin,
                   gather_negatives=config.gather_negatives, symmetric=symmetric,
                   positive_weight=config.positive_weight)

    @property
    def temperature(self) -> float:
        return math.exp(-min(self.logit_scale.item(), MAX_LOGIT_SCALE))

    def forward(self, queries: torch.Tensor, candidates: torch.Tensor, product_ids: torch.Tensor,
                bm25: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss (mean over this rank's anchors) and detached diagnostics for logging.

        queries, candidates: (b, d) L2-normalised embeddings of this rank's b items (row i of
        both is item i; they are not re-normalised here). product_ids: (b,) integer product id
        per item. bm25: BM25 of the anchors (rows, their attribute texts as queries) against the
        candidate items in gathered order (columns); required when attribute_weights is on.

        Cross-rank negatives (gather_negatives and torch.distributed initialised): candidates,
        product ids (and queries, if symmetric) are all-gathered, rank-major; each local anchor
        is scored against all world * b candidates and its positive sits at column rank * b + i.
        Every rank must pass the same b (ProductBatchSampler guarantees it), and bm25 must then
        be (b, world * b): rows = this rank's items, columns = rank 0's batch, rank 1's, ...
        The caller gathers the batch's item indices (``dist.all_gather_into_tensor``), looks up
        all texts and passes ``pairwise_bm25(global_texts, stats)[rank * b:(rank + 1) * b]``.
        The gather's backward sums each candidate's gradient from all ranks into its owner, and
        DDP/DeepSpeed average parameter gradients over ranks, so the result equals the gradient
        of the mean loss over the global batch on one process. Do not rescale by the world size.

        Diagnostics (averaged over directions if symmetric): neg_weight_mean (mean w over kept
        negatives), filtered_per_query (dropped negatives per anchor) and top1_accuracy (the
        positive scores at least as high as every item of another product).
        """
        b = queries.shape[0]
        if queries.dim() != 2 or queries.shape != candidates.shape:
            raise ValueError(f"queries {tuple(queries.shape)} and candidates "
                             f"{tuple(candidates.shape)} must both be (batch, dim)")
        if product_ids.shape != (b,):
            raise ValueError(f"product_ids must be ({b},) (one id per item), got "
                             f"{tuple(product_ids.shape)}")
        queries, candidates = queries.float(), candidates.float()
        product_ids = product_ids.to(device=queries.device, dtype=torch.long)
        world, rank = 1, 0
        if self.gather_negatives and dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
        if world > 1:
            # open_clip's gather-with-grad: in the pinned torch all_gather_single is differentiable
            # and its backward is a reduce-scatter sum (the 2-process test pins this down).
            group = dist.group.WORLD
            all_candidates = funcol.all_gather_single(candidates, 0, group)
            all_ids = funcol.all_gather_single(product_ids, 0, group)
            all_queries = funcol.all_gather_single(queries, 0, group) if self.symmetric else queries
        else:
            all_candidates, all_ids, all_queries = candidates, product_ids, queries
        num_candidates = world * b
        log_w = None
        if self.attribute_weights:
            if bm25 is None:
                raise ValueError("attribute_weights=True needs the bm25 matrix (pairwise_bm25 of "
                                 "the batch's attribute texts); pass it or disable the weights")
            if bm25.shape != (b, num_candidates):
                raise ValueError(f"bm25 must be ({b}, {num_candidates}): this rank's items x the "
                                 f"gathered candidates; got {tuple(bm25.shape)}")
            log_w = 1 + torch.tanh(bm25.to(device=queries.device, dtype=torch.float32))
        positives = torch.arange(b, device=queries.device) + rank * b
        same_product = product_ids[:, None] == all_ids[None, :]
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        pairs = [(queries, all_candidates)]
        if self.symmetric:
            pairs.append((candidates, all_queries))
        results = [self._direction(anchors @ others.T, scale, positives, same_product, log_w)
                   for anchors, others in pairs]
        loss = torch.stack([r[0] for r in results]).mean()
        diagnostics = {key: torch.stack([r[1][key] for r in results]).mean()
                       for key in results[0][1]}
        return loss, diagnostics

    def _direction(self, sim: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor,
                   same_product: torch.Tensor, log_w: torch.Tensor | None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One direction: rows of ``sim`` are anchors; row i's positive is column positives[i]."""
        rows = torch.arange(sim.shape[0], device=sim.device)
        is_positive = torch.zeros_like(sim, dtype=torch.bool)
        is_positive[rows, positives] = True
        detached = sim.detach()
        positive_sim = detached[rows, positives]
        dropped = torch.zeros_like(is_positive)
        if self.false_negative_filter:
            dropped = (same_product | (detached > positive_sim[:, None] + self.margin)) \
                & ~is_positive
        logits = sim * scale
        if log_w is not None:
            logits = logits + (log_w.masked_fill(is_positive, 0.0)
                               if self.positive_weight == "one" else log_w)
        logits = logits.masked_fill(dropped, float("-inf"))
        loss = (torch.logsumexp(logits, dim=1) - logits[rows, positives]).mean()

        negatives = ~(is_positive | dropped)
        weights = log_w.exp() if log_w is not None else torch.ones_like(detached)
        best_other_product = detached.masked_fill(same_product, float("-inf")).max(dim=1).values
        return loss, {
            "neg_weight_mean": (weights * negatives).sum() / negatives.sum().clamp(min=1),
            "filtered_per_query": dropped.sum(dim=1).float().mean(),
            "top1_accuracy": (positive_sim >= best_other_product).float().mean(),
        }

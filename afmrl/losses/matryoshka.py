"""Matryoshka training of any pairwise loss (plain MRL, Kusupati et al. 2022): the loss on each
embedding prefix, re-normalised, summed with weights, so the first 64 or 128 dimensions rank
almost as well as the full vector and serving can index a prefix (``index.dim_prefix``).

It wraps the loss rather than changing it: AGCL's weights and filtering apply unchanged on every
prefix (the BM25 weights depend on the attribute texts, not on the dimension).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MatryoshkaLoss(nn.Module):
    """``sum_d weight_d * loss(q[:, :d], c[:, :d])``; diagnostics are those of the largest prefix."""

    def __init__(self, loss: nn.Module, dims: Sequence[int],
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not dims or sorted(set(dims)) != list(dims) or dims[0] < 1:
            raise ValueError(f"matryoshka dims {list(dims)} must be increasing positive sizes")
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims) or min(weights) < 0:
            raise ValueError(f"need one non-negative weight per matryoshka dim: {list(dims)} "
                             f"vs weights {weights}")
        self.loss = loss  # a submodule: a learnable temperature still reaches the optimizer
        self.dims = tuple(dims)
        self.weights = tuple(weights)

    def forward(self, queries: torch.Tensor, candidates: torch.Tensor, *args, **kwargs
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.dims[-1] > queries.shape[1]:
            raise ValueError(f"matryoshka dim {self.dims[-1]} exceeds the embedding dimension "
                             f"{queries.shape[1]}")
        losses, diagnostics = [], {}
        for dim in self.dims:
            loss, diagnostics = self.loss(F.normalize(queries[:, :dim], dim=-1),
                                          F.normalize(candidates[:, :dim], dim=-1),
                                          *args, **kwargs)
            losses.append(loss)
        total = sum(weight * loss for weight, loss in zip(self.weights, losses))
        return total, {**diagnostics, **{f"loss_dim{dim}": loss.detach()
                                         for dim, loss in zip(self.dims, losses)}}

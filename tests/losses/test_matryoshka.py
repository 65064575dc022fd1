"""Matryoshka training: the wrapped loss on each prefix (re-normalised), summed with weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afmrl.losses import AGCLLoss
from afmrl.losses.matryoshka import MatryoshkaLoss


def batch(b: int = 6, d: int = 16):
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(b, d, generator=generator), dim=-1).requires_grad_()
    candidates = F.normalize(torch.randn(b, d, generator=generator), dim=-1)
    bm25 = torch.rand(b, b, generator=generator)
    return queries, candidates, torch.arange(b), bm25


def test_sum_of_weighted_prefix_losses():
    queries, candidates, ids, bm25 = batch()
    agcl = AGCLLoss(temperature=0.1, false_negative_filter=False)
    total, diagnostics = MatryoshkaLoss(agcl, [4, 16], [0.5, 1.0])(queries, candidates, ids,
                                                                    bm25)
    prefix, _ = agcl(F.normalize(queries[:, :4], dim=-1), F.normalize(candidates[:, :4], dim=-1),
                     ids, bm25)
    full, full_diagnostics = agcl(queries, candidates, ids, bm25)
    torch.testing.assert_close(total, 0.5 * prefix + full)
    torch.testing.assert_close(diagnostics["loss_dim4"], prefix.detach())
    assert diagnostics["top1_accuracy"] == full_diagnostics["top1_accuracy"]


def test_a_prefix_term_trains_only_its_dimensions():
    queries, candidates, ids, bm25 = batch()
    total, _ = MatryoshkaLoss(AGCLLoss(temperature=0.1), [4])(queries, candidates, ids, bm25)
    total.backward()
    assert queries.grad[:, :4].abs().sum() > 0
    assert torch.count_nonzero(queries.grad[:, 4:]) == 0


def test_bad_dims_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        MatryoshkaLoss(AGCLLoss(), [128, 64])
    with pytest.raises(ValueError, match="one non-negative weight"):
        MatryoshkaLoss(AGCLLoss(), [64, 128], [1.0])
    queries, candidates, ids, bm25 = batch()
    with pytest.raises(ValueError, match="exceeds the embedding dimension"):
        MatryoshkaLoss(AGCLLoss(), [32])(queries, candidates, ids, bm25)

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from afmrl.config import TrainConfig
from afmrl.losses import AGCLLoss, pairwise_bm25

# Hand-made batch of 3 items. queries = identity and candidates = S^T, so s_ij = S[i][j].
S = [[0.30, 0.60, 0.10],    # s_01 = 0.6 > s_00 + 0.1: margin-violating negative
     [0.20, 0.70, 0.65],    # items 1 and 2 are the same product: same-product negatives
     [-0.10, 0.40, 0.50]]
PRODUCT_IDS = torch.tensor([10, 20, 20])
BM25 = [[5.0, 2.0, 0.5],    # the diagonal is B_ii: the positive's weight in the paper form
        [1.0, 4.0, 3.0],
        [0.2, 1.5, 0.3]]
TAU, MARGIN = 0.5, 0.1


def w(bm25: float) -> float:
    return math.exp(1 + math.tanh(bm25))


def e(s: float) -> float:
    return math.exp(s / TAU)


# -log(w_ii e^{s_ii/tau} / (w_ii e^{s_ii/tau} + sum over kept negatives of w_ij e^{s_ij/tau})),
# by hand. "one": w_ii = 1; "paper": w_ii = exp(1 + tanh(B_ii)).
EXPECTED = {
    "plain": [-math.log(e(.3) / (e(.3) + e(.6) + e(.1))),
              -math.log(e(.7) / (e(.2) + e(.7) + e(.65))),
              -math.log(e(.5) / (e(-.1) + e(.4) + e(.5)))],
    "weighted_one": [-math.log(e(.3) / (e(.3) + w(2.0) * e(.6) + w(0.5) * e(.1))),
                     -math.log(e(.7) / (w(1.0) * e(.2) + e(.7) + w(3.0) * e(.65))),
                     -math.log(e(.5) / (w(0.2) * e(-.1) + w(1.5) * e(.4) + e(.5)))],
    "weighted_paper": [
        -math.log(w(5.0) * e(.3) / (w(5.0) * e(.3) + w(2.0) * e(.6) + w(0.5) * e(.1))),
        -math.log(w(4.0) * e(.7) / (w(1.0) * e(.2) + w(4.0) * e(.7) + w(3.0) * e(.65))),
        -math.log(w(0.3) * e(.5) / (w(0.2) * e(-.1) + w(1.5) * e(.4) + w(0.3) * e(.5)))],
    "filtered": [-math.log(e(.3) / (e(.3) + e(.1))),
                 -math.log(e(.7) / (e(.2) + e(.7))),
                 -math.log(e(.5) / (e(-.1) + e(.5)))],
    "weighted_filtered_one": [-math.log(e(.3) / (e(.3) + w(0.5) * e(.1))),
                              -math.log(e(.7) / (w(1.0) * e(.2) + e(.7))),
                              -math.log(e(.5) / (w(0.2) * e(-.1) + e(.5)))],
    "weighted_filtered_paper": [
        -math.log(w(5.0) * e(.3) / (w(5.0) * e(.3) + w(0.5) * e(.1))),
        -math.log(w(4.0) * e(.7) / (w(1.0) * e(.2) + w(4.0) * e(.7))),
        -math.log(w(0.3) * e(.5) / (w(0.2) * e(-.1) + w(0.3) * e(.5)))],
}
WEIGHTED_NEG_MEAN = (w(2.0) + w(0.5) + w(1.0) + w(3.0) + w(0.2) + w(1.5)) / 6
WEIGHTED_FILTERED_NEG_MEAN = (w(0.5) + w(1.0) + w(0.2)) / 3
NEG_WEIGHT_MEAN = {  # over kept negatives only, whatever the positive's weight
    "plain": 1.0, "filtered": 1.0,
    "weighted_one": WEIGHTED_NEG_MEAN, "weighted_paper": WEIGHTED_NEG_MEAN,
    "weighted_filtered_one": WEIGHTED_FILTERED_NEG_MEAN,
    "weighted_filtered_paper": WEIGHTED_FILTERED_NEG_MEAN,
}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_loss_matches_hand_computation(variant):
    # plain/filtered use the default positive_weight: it must not weigh anything when the
    # attribute weights are off.
    positive_weight = {"one": "one", "paper": "bm25"}.get(variant.rsplit("_", 1)[-1], "bm25")
    loss_fn = AGCLLoss(temperature=TAU, attribute_weights="weighted" in variant,
                       false_negative_filter="filtered" in variant, margin=MARGIN,
                       positive_weight=positive_weight)
    loss, diagnostics = loss_fn(torch.eye(3), torch.tensor(S).T, PRODUCT_IDS, torch.tensor(BM25))
    assert loss.item() == pytest.approx(sum(EXPECTED[variant]) / 3, rel=1e-6)
    assert diagnostics["neg_weight_mean"].item() == pytest.approx(NEG_WEIGHT_MEAN[variant],
                                                                  rel=1e-6)
    filtered = 1.0 if "filtered" in variant else 0.0  # one negative dropped per row
    assert diagnostics["filtered_per_query"].item() == filtered
    # Row 0 loses to item 1 (another product); rows 1, 2 only compete with item 0.
    assert diagnostics["top1_accuracy"].item() == pytest.approx(2 / 3)


def test_paper_positive_weight_is_the_default_and_one_is_the_ablation():
    assert TrainConfig().positive_weight == "bm25"
    assert AGCLLoss().positive_weight == "bm25"
    assert AGCLLoss.from_config(TrainConfig(positive_weight="one")).positive_weight == "one"
    # Two items, s = I, tau = 1, B = I: per row w_ii = e^{1 + tanh 1}, w_ij = e^{1 + tanh 0} = e.
    # paper: -log(w_ii e / (w_ii e + e e^0)) = log(1 + e^{-1 - tanh 1});
    # one:   -log(e / (e + e e^0)) = log(2).
    one_pair = (torch.eye(2), torch.eye(2), torch.tensor([0, 1]),
                torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    paper, _ = AGCLLoss(temperature=1.0, false_negative_filter=False)(*one_pair)
    one, _ = AGCLLoss(temperature=1.0, false_negative_filter=False,
                      positive_weight="one")(*one_pair)
    assert paper.item() == pytest.approx(math.log(1 + math.exp(-math.tanh(1.0) - 1)), rel=1e-6)
    assert one.item() == pytest.approx(math.log(1 + math.exp(1 - 1)), rel=1e-6)
    with pytest.raises(ValueError, match="positive_weight"):
        AGCLLoss(positive_weight="two")


def test_from_config_maps_the_train_section():
    config = TrainConfig(temperature=0.07, learn_temperature=True, false_negative_margin=0.2,
                         attribute_weights=False)
    loss_fn = AGCLLoss.from_config(config)
    assert loss_fn.temperature == pytest.approx(0.07)
    assert loss_fn.margin == 0.2 and not loss_fn.attribute_weights
    assert [name for name, _ in loss_fn.named_parameters()] == ["logit_scale"]


def random_batch(n: int = 6, d: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(n, d, generator=generator), dim=1).requires_grad_()
    candidates = F.normalize(torch.randn(n, d, generator=generator), dim=1).requires_grad_()
    bm25 = torch.rand(n, n, generator=generator) * 4
    return queries, candidates, torch.tensor([0, 1, 1, 2, 3, 3]), bm25


def test_symmetric_averages_both_directions_with_the_anchor_rows_of_bm25():
    queries, candidates, ids, bm25 = random_batch()
    symmetric, _ = AGCLLoss(symmetric=True)(queries, candidates, ids, bm25)
    forward, _ = AGCLLoss()(queries, candidates, ids, bm25)
    backward, _ = AGCLLoss()(candidates, queries, ids, bm25)
    torch.testing.assert_close(symmetric, (forward + backward) / 2)


def test_stable_at_the_largest_scale_and_learnable_temperature_gets_a_gradient():
    # 1/tau = 100 and s_ii = 1: e^{100 + 2} overflows float32 unless computed in log-space.
    queries = F.normalize(torch.eye(4, 8) + 0.01, dim=1).requires_grad_()
    candidates = queries.detach().clone().requires_grad_()
    loss_fn = AGCLLoss(temperature=0.01, learn_temperature=True)
    loss, _ = loss_fn(queries, candidates, torch.arange(4), torch.full((4, 4), 10.0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0
    for grad in (queries.grad, candidates.grad, loss_fn.logit_scale.grad):
        assert torch.isfinite(grad).all()
    assert loss_fn.logit_scale.grad.abs().item() > 0


def test_gradients_are_finite_when_every_negative_is_filtered():
    queries, candidates, _, bm25 = random_batch()
    loss, diagnostics = AGCLLoss()(queries, candidates, torch.zeros(6, dtype=torch.long), bm25)
    loss.backward()
    assert loss.item() == 0 and diagnostics["filtered_per_query"].item() == 5
    assert torch.isfinite(queries.grad).all() and torch.isfinite(candidates.grad).all()


def test_bad_inputs_raise_actionable_errors():
    queries, candidates, ids, bm25 = random_batch()
    with pytest.raises(ValueError, match="needs the bm25 matrix"):
        AGCLLoss()(queries, candidates, ids)
    with pytest.raises(ValueError, match=r"bm25 must be \(6, 6\)"):
        AGCLLoss()(queries, candidates, ids, bm25[:, :3])
    with pytest.raises(ValueError, match="product_ids"):
        AGCLLoss()(queries, candidates, ids[:3], bm25)
    with pytest.raises(ValueError, match="temperature >= 0.01"):
        AGCLLoss(temperature=0.005)


# ---------------------------------------------------------------------------------------------
# Cross-rank negatives: 2 gloo processes with real DDP vs one process on the global batch.

WORLD = 2
TEXTS = ["category: milk; brand: arla", "category: milk; brand: garant",
         "category: juice; brand: arla", "category: juice; brand: god morgon",
         "category: yoghurt; brand: arla", "category: juice; brand: arla; size: 1 l",
         "category: milk; brand: arla; variant: organic", "category: apple; colour: red"]
# Item 5 (rank 1) is another item of item 2's product (rank 0): a cross-rank false negative.
GLOBAL_IDS = torch.tensor([0, 1, 2, 3, 4, 2, 5, 6])


class TwoTowers(nn.Module):
    """Image and text projections with the loss as a submodule, so DDP averages tau's gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.loss = AGCLLoss(temperature=0.1, learn_temperature=True, margin=0.05,
                             symmetric=True)

    def forward(self, images, texts, ids, bm25):
        return self.loss(F.normalize(self.image(images), dim=1),
                         F.normalize(self.text(texts), dim=1), ids, bm25)


def global_batch():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(8, 6, generator=generator), torch.randn(8, 5, generator=generator),
            GLOBAL_IDS, pairwise_bm25(TEXTS))


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model = DistributedDataParallel(TwoTowers())
        images, texts, ids, bm25 = global_batch()
        mine = slice(rank * 4, (rank + 1) * 4)
        loss, _ = model(images[mine], texts[mine], ids[mine], bm25[mine])  # bm25: (4, 8)
        loss.backward()
        grads = {name: p.grad for name, p in model.module.named_parameters()}
        torch.save({"loss": loss.detach(), "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_ddp_gradients_equal_the_single_process_ones_on_cpu(tmp_path):
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = TwoTowers()
    loss, diagnostics = model(*global_batch())
    loss.backward()
    assert diagnostics["filtered_per_query"] > 0.25  # beyond the one same-product pair
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, loss.detach())
    for name, param in model.named_parameters():
        for result in ranks:
            torch.testing.assert_close(result["grads"][name], param.grad, msg=name)

"""AGCL training on Ray Train (TorchTrainer) + DeepSpeed ZeRO, CPU (gloo) or GPU (NCCL).

One code path for every scale: ``train.zero_stage`` 0 is plain data parallelism (DeepSpeed's
all-reduce engine), 1/2/3 shard optimizer state / gradients / parameters, ``train.offload`` puts
optimizer state on the CPU. The loss is ``AGCLLoss`` (a submodule, so a learnable temperature is
optimised and averaged like any weight).

Checkpoints (model, optimizer, scheduler, RNG, sampler position) go to
``<run>/train/<tag>/checkpoints`` via DeepSpeed every ``checkpoint_every_steps`` optimizer steps
and at each epoch end. A restarted worker group (Ray Train ``FailureConfig``) or a rerun of the
job resumes from the newest complete one. On multi-node clusters ``run_dir`` must be shared
storage (a PVC / NFS), as every rank writes its own ZeRO shards there.

Model selection: when the benchmarks include ``val`` (the catalog's val split), the exported
embedder is the one of the epoch with the best ``val/recall_at_1`` (kept in ``<tag>/best``),
not the last; ``metrics.json`` holds that epoch's metrics and ``exported_epoch`` says which.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from afmrl.config import AfmrlConfig, TrainConfig, config_from_dict
from afmrl.layout import RunLayout
from afmrl.tracking import WorkerMetricLogger
from afmrl.eval.protocol import EvalSet
from afmrl.train.data import PairSet
from afmrl.train.sampler import ProductBatchSampler
from afmrl.utils.console import TrainProgress, metrics_table, ray_train_logging
from afmrl.utils.io import atomic_write_json
from afmrl.utils.ray_utils import WORKER_GROUP_RESTARTS

log = logging.getLogger("afmrl")
METRICS_FILE = "metrics.json"  # rank 0's metrics of the exported epoch
SELECTION_BENCHMARK = "val"  # the benchmark whose recall_at_1 picks the exported epoch
SELECTION_METRIC = f"{SELECTION_BENCHMARK}/recall_at_1"  # read only when it is passed
BEST_DIR, BEST_FILE = "best", "best.json"  # the best-so-far export and its epoch's metrics
CHECKPOINT_LOG = "checkpoints.jsonl"  # one line per checkpoint: what it covers


def batch_sampler(train: TrainConfig, pairs: PairSet, num_replicas: int, rank: int = 0
                  ) -> ProductBatchSampler:
    """The batches a rank trains on (the driver builds rank 0's to count the steps)."""
    return ProductBatchSampler(
        pairs.product_ids, train.per_device_batch_size, num_replicas=num_replicas, rank=rank,
        seed=train.seed, coarse_ids=pairs.coarse_ids if train.hard_batches else None,
        batches_multiple_of=train.grad_accum_steps)


def optimizer_steps(train: TrainConfig, sampler: ProductBatchSampler) -> int:
    """Optimizer steps of a whole run: the length of the learning-rate schedule."""
    return sum(sampler.num_batches(e) for e in range(train.epochs)) // train.grad_accum_steps


def improves(metrics: dict[str, float], best: dict[str, float] | None) -> bool:
    """Whether this epoch's selection metric beats the best so far (ties keep the earlier)."""
    if SELECTION_METRIC not in metrics:
        return False
    return best is None or metrics[SELECTION_METRIC] > best[SELECTION_METRIC]


class EmbedderWithLoss(nn.Module):
    """The unit DeepSpeed wraps: embedder + AGCL loss, one forward over queries and candidates
    (one pass keeps every parameter in the graph, as DDP/ZeRO gradient hooks expect)."""

    def __init__(self, embedder: nn.Module, loss: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor], product_ids: torch.Tensor,
                bm25: torch.Tensor | None):
        embeddings = self.embedder(**batch)
        half = len(product_ids)
        return self.loss(embeddings[:half], embeddings[half:], product_ids, bm25)


def deepspeed_config(train: TrainConfig, total_steps: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if train.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": train.per_device_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.effective_batch_size,
        "zero_optimization": zero,
        # torch_adam: no JIT build of DeepSpeed's fused Adam (slow on first use, needs nvcc on GPU).
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr, "weight_decay": 0.01,
                                                  "torch_adam": True}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": max(total_steps, 1),
            "warmup_num_steps": max(1, int(train.warmup_ratio * total_steps)),
            "warmup_min_ratio": 0.0, "cos_min_ratio": 0.05}},
        "gradient_clipping": 1.0,
        "bf16": {"enabled": train.use_gpu},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def latest_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest DeepSpeed tag every rank finished writing, or None.

    DeepSpeed's own ``latest`` pointer is not proof: rank 0 writes it without waiting for the
    other ranks, and every file is written in place, so a worker killed mid-save leaves a
    truncated shard under its final name (seen: rank 1's optimizer file cut at 1 MiB). A tag
    counts when rank 0 logged it in ``checkpoints.jsonl`` (after the barrier that follows every
    rank's save) and each of its files is a complete torch archive.
    """
    log_file = checkpoint_dir.parent / CHECKPOINT_LOG
    if not log_file.is_file():
        return None
    logged = [json.loads(line)["tag"] for line in log_file.read_text().splitlines()
              if line.strip()]
    for tag in reversed(logged):
        files = list((checkpoint_dir / tag).glob("*.pt"))
        if files and all(zipfile.is_zipfile(f) for f in files):
            return tag
    return None


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def train_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker AGCL loop (runs inside Ray Train workers)."""
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from afmrl.losses import AGCLLoss, BM25Stats, pairwise_bm25
    from afmrl.losses.matryoshka import MatryoshkaLoss
    from afmrl.models.embedders import load_embedder, save_embedder
    from afmrl.eval.protocol import evaluate_model, prefixed

    from afmrl.utils.device import agcl_workers, train_device

    config = config_from_dict(loop_config["config"])
    train = config.train
    train_device(agcl_workers(config))  # DeepSpeed then places the engine on that device
    pairs: PairSet = loop_config["pairs"]
    out_dir = Path(loop_config["out_dir"])
    checkpoint_dir = out_dir / "checkpoints"
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(train.cpus_per_worker)))
    (out_dir / "workers").mkdir(parents=True, exist_ok=True)
    (out_dir / "workers" / f"rank_{rank}.pid").write_text(str(os.getpid()))
    random.seed(train.seed + rank)
    np.random.seed(train.seed + rank)
    torch.manual_seed(train.seed)

    embedder = load_embedder(loop_config["init_from"]).train()
    loss = AGCLLoss.from_config(train)
    if train.matryoshka_dims:
        loss = MatryoshkaLoss(loss, train.matryoshka_dims, train.matryoshka_weights or None)
    module = EmbedderWithLoss(embedder, loss)
    sampler = batch_sampler(train, pairs, world, rank)
    total_steps = optimizer_steps(train, sampler)
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=deepspeed_config(train, total_steps))
    device = engine.device
    stats = BM25Stats.fit(loop_config["bm25_corpus"]) if train.attribute_weights else None
    logger = WorkerMetricLogger(loop_config.get("tracking_uri"), loop_config.get("run_id"))

    tag = latest_checkpoint(checkpoint_dir)
    if tag is not None:
        _, client = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
        sampler.load_state_dict(client["sampler"])
        _set_rng_state(client["rng"][rank] if rank < len(client["rng"]) else client["rng"][0])
        if rank == 0:
            note = (f"resumed from {tag} (epoch {client['sampler']['epoch']}, batch "
                    f"{client['sampler']['position']})")
            log.info("AGCL %s", note)
            with open(out_dir / "resumes.log", "a") as handle:
                handle.write(note + "\n")

    def save(step: int) -> None:
        rngs = [None] * world
        dist.all_gather_object(rngs, _rng_state())
        step_tag = f"step_{step:07d}"
        engine.save_checkpoint(str(checkpoint_dir), tag=step_tag,
                               client_state={"sampler": sampler.state_dict(), "rng": rngs})
        dist.barrier()
        if rank == 0:  # keep the two newest checkpoints
            with open(out_dir / CHECKPOINT_LOG, "a") as handle:
                handle.write(json.dumps({"tag": step_tag, "optimizer_steps": engine.global_steps,
                                         "micro_steps": engine.micro_steps,
                                         **sampler.state_dict()}) + "\n")
            tags = sorted(p for p in checkpoint_dir.glob("step_*") if p.is_dir())
            for old in tags[:-2]:
                shutil.rmtree(old, ignore_errors=True)

    def evaluate() -> dict[str, float]:
        """Rank 0's metrics. Under ZeRO-3 every rank runs the same forward passes (the partitioned
        parameters are all-gathered by hooks that need every rank); otherwise rank 0 alone."""
        metrics: dict[str, float] = {}
        if rank == 0 or train.zero_stage == 3:
            embedder.eval()
            for name, benchmark in loop_config["benchmarks"].items():
                metrics.update(prefixed(evaluate_model(embedder, benchmark, config.eval.ks),
                                        name))
            embedder.train()
        dist.barrier()
        return metrics if rank == 0 else {}

    def export(path: Path, extra: dict[str, Any]) -> None:
        """Rank 0 writes the consolidated embedder (every rank joins the ZeRO-3 gather)."""
        params = list(module.parameters())
        gather = deepspeed.zero.GatheredParameters(params) if train.zero_stage == 3 else None
        with gather if gather is not None else contextlib.nullcontext():
            if rank == 0:
                save_embedder(embedder, path,
                              {**extra, "matryoshka_dims": list(train.matryoshka_dims)})
        dist.barrier()

    # The best epoch so far survives a restart; a fresh run (no checkpoint) starts without one.
    best_file = out_dir / BEST_FILE
    best = None
    if rank == 0 and tag is not None and best_file.is_file() and (out_dir / BEST_DIR).is_dir():
        best = json.loads(best_file.read_text())

    start_epoch = sampler.state_dict()["epoch"]
    step = engine.global_steps
    progress = TrainProgress(f"AGCL {loop_config['tag']}", total_steps, step, world)
    for epoch in range(start_epoch, train.epochs):
        sampler.set_epoch(epoch)
        engine.train()
        started, seen, losses = time.perf_counter(), 0, []
        for indices in sampler:
            local = torch.as_tensor(indices, dtype=torch.int64)
            batch = embedder.collate([pairs.queries[i] for i in indices] +
                                     [pairs.candidates[i] for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            bm25 = None
            if stats is not None:
                everyone = [torch.zeros_like(local) for _ in range(world)] if \
                    train.gather_negatives and world > 1 else [local]
                if len(everyone) > 1:
                    dist.all_gather(everyone, local)
                texts = [pairs.attribute_texts[i] for i in torch.cat(everyone).tolist()]
                offset = rank * len(indices) if len(everyone) > 1 else 0
                bm25 = pairwise_bm25(texts, stats)[offset:offset + len(indices)].to(device)
            product_ids = torch.as_tensor(pairs.product_ids[indices], device=device)
            loss, diagnostics = engine(batch, product_ids, bm25)
            engine.backward(loss)
            # Read before step(): step() advances the micro-step counter the answer is based on.
            stepped = engine.is_gradient_accumulation_boundary()
            engine.step()
            seen += len(indices)
            losses.append(loss.item())
            if stepped:
                step = engine.global_steps
                if rank == 0:
                    progress.update(epoch, train.epochs, step, losses, len(indices))
                if rank == 0 and step % 10 == 0:
                    logger.log({"train_loss": float(np.mean(losses[-10:])),
                                "lr": engine.get_lr()[0],
                                **{k: float(v) for k, v in diagnostics.items()}}, step)
                if train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0:
                    save(step)
        elapsed = time.perf_counter() - started
        epoch_metrics = {"epoch": epoch, "train_loss_epoch": float(np.mean(losses or [0.0])),
                         "samples_per_s_per_worker": seen / max(elapsed, 1e-9),
                         "peak_rss_gib": _peak_rss_gib()}
        if (epoch + 1) % train.eval_every_epochs == 0 or epoch + 1 == train.epochs:
            epoch_metrics.update(evaluate())
        decision = [rank == 0 and improves(epoch_metrics, best)]
        dist.broadcast_object_list(decision, src=0)
        if decision[0]:  # before the epoch's checkpoint: a resume never skips a better epoch
            export(out_dir / BEST_DIR, {"trained_steps": step, "tag": loop_config["tag"]})
            if rank == 0:
                best = {**epoch_metrics, "exported_epoch": epoch}
                atomic_write_json(best_file, best)
        save(step)
        if rank == 0:
            logger.log(epoch_metrics, step)
            # Ray Train v2 keeps no metrics reported without a checkpoint: the driver reads this.
            atomic_write_json(out_dir / METRICS_FILE, {**epoch_metrics, "exported_epoch": epoch})
            print(f"AGCL {loop_config['tag']}: epoch {epoch + 1}/{train.epochs} done\n"
                  + metrics_table(epoch_metrics), flush=True)

    selected = [best is not None] if rank == 0 else [False]
    dist.broadcast_object_list(selected, src=0)
    if not selected[0]:
        export(out_dir / "embedder", {"trained_steps": step, "tag": loop_config["tag"]})
    elif rank == 0:  # the best val epoch, not the last, becomes the export
        log.info("AGCL exports epoch %d (best %s %.4f)", best["exported_epoch"],
                 SELECTION_METRIC, best[SELECTION_METRIC])
        atomic_write_json(out_dir / METRICS_FILE, best)
        os.replace(out_dir / BEST_DIR, out_dir / "embedder")
    dist.barrier()


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


@dataclass(frozen=True)
class TrainResult:
    embedder: Path
    metrics: dict[str, float]
    seconds: float


def train_agcl(config: AfmrlConfig, tag: str, pairs: PairSet,
               benchmarks: dict[str, EvalSet],
               bm25_corpus: list[str], tracker=None, init_from: Path | None = None,
               max_failures: int = WORKER_GROUP_RESTARTS) -> TrainResult:
    """Run AGCL on a Ray Train worker group; returns the exported embedder and its metrics
    (the best ``val`` epoch's when ``benchmarks`` has "val", else the last epoch's).

    Skips training when ``<run>/train/<tag>/embedder`` already exists (resumable pipelines);
    delete it to retrain.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from afmrl.utils.device import agcl_workers, check_workers
    from afmrl.utils.ray_utils import fit_restarting, preflight

    train = config.train
    out_dir = RunLayout.of(config).train(tag)
    embedder_dir = out_dir / "embedder"
    if (embedder_dir / "embedder.json").is_file():
        log.info("AGCL %s already trained: %s", tag, embedder_dir)
        return TrainResult(embedder_dir, _saved_metrics(out_dir), 0.0)
    print(f"AGCL {tag}: effective batch = per_device_batch_size {train.per_device_batch_size} x "
          f"num_workers {train.num_workers} x grad_accum_steps {train.grad_accum_steps} = "
          f"{train.effective_batch_size} pairs/step; ZeRO-{train.zero_stage}"
          f"{' + offload' if train.offload else ''}; {len(pairs)} training pairs")
    steps = optimizer_steps(train, batch_sampler(train, pairs, train.num_workers))
    print(f"AGCL {tag}: {steps} optimizer step(s) in {train.epochs} epoch(s)")
    if steps < 2:  # the warm-up starts at learning rate 0 (deepspeed_config's WarmupCosineLR)
        print(f"AGCL {tag}: warning: the first optimizer step runs at the warm-up's learning "
              f"rate 0, so {steps} step(s) leave the exported embedder equal to its initial "
              f"weights; raise train.epochs or lower train.per_device_batch_size")
    workers = agcl_workers(config)
    preflight([workers], f"AGCL training ({train.num_workers} workers)")
    check_workers(workers, config.ray.call_timeout_s)
    if init_from is None:  # built once here: every rank starts from the same weights on disk
        from afmrl.models.embedders import build_embedder, has_images, save_embedder

        with_images = has_images(pairs.queries) or has_images(pairs.candidates)
        if not with_images and config.models.embedder == "dual":
            print(f"AGCL {tag}: no training pair has an image (a text-only catalog), so the "
                  f"dual embedder is built without its image tower")
        init_from = save_embedder(build_embedder(config.models, RunLayout.of(config).models,
                                                 train.image_size, with_images), out_dir / "init")
    import mlflow

    active = mlflow.active_run()
    loop_config = {
        "config": config.to_dict(), "pairs": pairs, "benchmarks": benchmarks,
        "bm25_corpus": bm25_corpus, "out_dir": str(out_dir), "tag": tag,
        "init_from": str(init_from),
        "tracking_uri": mlflow.get_tracking_uri() if active else None,
        "run_id": active.info.run_id if active else None,
    }
    started = time.perf_counter()
    fit_restarting(lambda: TorchTrainer(
        train_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(**workers.scaling_config()),
        torch_config=TorchConfig(backend="nccl" if workers.gpus else "gloo",
                                 timeout_s=int(train.step_timeout_s)),
        run_config=RunConfig(name=f"agcl-{tag}", storage_path=str(out_dir / "ray"),
                             failure_config=FailureConfig(max_failures=max_failures),
                             logging_config=ray_train_logging())), restarts=max_failures)
    seconds = time.perf_counter() - started
    if not (embedder_dir / "embedder.json").is_file():
        raise RuntimeError(f"AGCL {tag} finished without exporting {embedder_dir}; see the "
                           f"worker logs above")
    if tracker is not None:
        from afmrl.utils.io import fingerprint_tree

        tracker.log_metrics({"train_seconds": seconds})
        tracker.log_inputs({f"embedder_{tag}": fingerprint_tree(embedder_dir)})
    return TrainResult(embedder_dir, _saved_metrics(out_dir), seconds)


def _saved_metrics(out_dir: Path) -> dict[str, float]:
    """Rank 0's metrics of the exported epoch ({} for an export that predates the file)."""
    path = out_dir / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

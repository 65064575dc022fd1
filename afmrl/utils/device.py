"""The one place that decides where every afmrl component runs and what it asks Ray for.

Each function below returns the ``Placement`` of one kind of Ray actor / Ray Train worker /
Ray Data actor pool / Serve deployment: how many the code starts, the CPUs, GPUs and memory each
requests, and the torch device it uses. The creating code passes ``placement.ray_options()`` to
``.options(...)`` / ``map_batches`` / Serve options, or ``placement.scaling_config()`` to Ray
Train's ``ScalingConfig``; ``afmrl plan`` (``afmrl.plan``) prints the same objects, so the plan
is what runs. Inside the process, ``torch_device`` / ``train_device`` give the device to move
models to, after checking the GPU the config asked for is really usable there: a GPU-configured
component on a node without CUDA fails with one clear message instead of a crash deep inside
torch, NCCL, vLLM or FAISS.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from afmrl.config import AfmrlConfig, ExtractConfig, replace

GIB = 1 << 30
# CPUs of processes that mostly wait on a model or an index (a GPU does their work there).
EMBEDDER_CPUS = 0.5        # the RAR reward EmbedderActor and each embedding-job actor
EVALUATOR_CPUS = 0.5       # per RecallEvaluator actor
SHARD_CPUS = 0.5           # per index shard actor of the index stage
SERVE_SHARD_CPUS = 0.25    # per index shard actor of each Serve Retriever replica
# Serve replicas: with every deployment at serve.max_replicas=2, plus the shard actors, the app
# fits the 4 logical CPUs of the local profile.
REPLICA_CPUS = {"Embedder": 0.5, "AttributeGenerator": 0.5, "Retriever": 0.1,
                "SearchIngress": 0.1}
# The steps `afmrl plan` knows; each holds its placements at once, steps run one after another.
PLAN_STEPS = ("teacher", "sft", "extract", "train", "rar", "index", "serve")


class DeviceUnavailable(RuntimeError):
    """A component configured for a GPU landed where CUDA is not usable."""


@dataclass(frozen=True)
class Placement:
    """Where one kind of component runs: ``count`` processes, each with these resources."""
    stage: str
    component: str
    kind: str            # "actor", "Ray Data actor pool", "Ray Train worker", "Serve deployment"
    count: int
    cpus: float
    gpus: float = 0.0
    memory_bytes: int = 0  # Ray's ``memory`` resource (0: not reserved)
    gpu_key: str = ""      # the config key that asks for the GPU ...
    gpu_value: Any = None  # ... its value ...
    cpu_value: str = ""    # ... and what to set it to for CPU
    strategy: str = ""     # Ray scheduling strategy ("SPREAD": one per node while nodes last)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def ray_options(self) -> dict[str, Any]:
        """Keyword arguments of ``.options(...)`` / ``map_batches`` / ``ray_actor_options``."""
        options: dict[str, Any] = {"num_cpus": self.cpus}
        if self.gpus:
            options["num_gpus"] = self.gpus
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        if self.strategy:
            options["scheduling_strategy"] = self.strategy
        return options

    def bundle(self) -> dict[str, float]:
        """One process's request in Ray's resource names (what the pre-flight and fit use)."""
        bundle = {"CPU": self.cpus, "GPU": self.gpus}
        if self.memory_bytes:
            bundle["memory"] = float(self.memory_bytes)
        return bundle

    def scaling_config(self) -> dict[str, Any]:
        """Keyword arguments of Ray Train's ``ScalingConfig`` for a worker group."""
        per_worker: dict[str, float] = {"CPU": self.cpus}
        if self.gpus:
            per_worker["GPU"] = self.gpus
        if self.memory_bytes:
            per_worker["memory"] = float(self.memory_bytes)
        return {"num_workers": self.count, "use_gpu": self.gpus > 0,
                "resources_per_worker": per_worker}

    def total(self) -> dict[str, float]:
        return {key: value * self.count for key, value in self.bundle().items()}


def _gpu(stage: str, component: str, kind: str, count: int, cpus: float, gpus: float,
         key: str, value: Any, cpu_value: str, memory_bytes: int = 0,
         strategy: str = "") -> Placement:
    return Placement(stage, component, kind, count, cpus, gpus, memory_bytes, key, value,
                     cpu_value, strategy)


# -- every component ----------------------------------------------------------------------------


def extraction_actors(ex: ExtractConfig, stage: str = "extract",
                      component: str = "AttributeExtractor") -> Placement:
    """The Ray Data actor pool of the generation engines (``afmrl.extract.runner``). vLLM on CPU
    holds ``extract.kv_cache_gib`` of KV cache per actor, reserved as Ray memory."""
    memory = ex.kv_cache_gib * GIB if ex.engine == "vllm" and not ex.gpus_per_actor else 0
    return _gpu(stage, component, "Ray Data actor pool", ex.num_actors, ex.cpus_per_actor,
                ex.gpus_per_actor, "extract.gpus_per_actor", ex.gpus_per_actor, "0", memory)


def teacher_extract(config: AfmrlConfig) -> ExtractConfig:
    """The extraction settings of the distillation teacher: its own actor count and tensor
    parallelism, on as many GPUs per actor as it has ranks when extraction runs on GPUs."""
    ex = config.extract
    tp = ex.teacher_tensor_parallel_size
    return replace(ex, num_actors=ex.teacher_num_actors, tensor_parallel_size=tp,
                   gpus_per_actor=float(tp) if ex.gpus_per_actor else 0.0)


def teacher_actors(config: AfmrlConfig) -> Placement:
    return extraction_actors(teacher_extract(config), "teacher", "teacher AttributeExtractor")


def sft_workers(config: AfmrlConfig) -> Placement:
    """The Ray Train worker fine-tuning the generator on teacher attributes (distillation); it
    trains the generator like RAR does, so it follows ``rl.use_gpu``."""
    return _gpu("extract", "SFT worker", "Ray Train worker", 1, config.train.cpus_per_worker,
                1.0 if config.rl.use_gpu else 0.0, "rl.use_gpu", config.rl.use_gpu, "false")


def agcl_workers(config: AfmrlConfig) -> Placement:
    tr = config.train
    return _gpu("train", "AGCL worker", "Ray Train worker", tr.num_workers, tr.cpus_per_worker,
                1.0 if tr.use_gpu else 0.0, "train.use_gpu", tr.use_gpu, "false")


def rar_workers(config: AfmrlConfig) -> Placement:
    rl = config.rl
    return _gpu("rar", "GRPO worker", "Ray Train worker", rl.num_workers,
                config.train.cpus_per_worker, 1.0 if rl.use_gpu else 0.0, "rl.use_gpu",
                rl.use_gpu, "false")


def reward_embedder(config: AfmrlConfig) -> Placement:
    """The frozen embedder of the RAR reward: one ``EmbedderActor``."""
    gpus = config.models.inference_gpus
    return _gpu("rar", "reward EmbedderActor", "actor", 1, EMBEDDER_CPUS, gpus,
                "models.inference_gpus", gpus, "0")


def catalog_embedders(config: AfmrlConfig, stage: str = "index") -> Placement:
    """The embedding job's actor pool (``afmrl.index.embed_job``), at its largest size."""
    gpus = config.models.inference_gpus
    return _gpu(stage, "CatalogEmbedder", "Ray Data actor pool", config.index.embed_max_actors,
                EMBEDDER_CPUS, gpus, "models.inference_gpus", gpus, "0")


def recall_evaluators(config: AfmrlConfig) -> Placement:
    """RecallEvaluator actors: exact CPU search of the reward gallery (cheap; no GPU)."""
    return Placement("rar", "RecallEvaluator", "actor", config.eval.num_evaluators,
                     EVALUATOR_CPUS)


def index_shards(config: AfmrlConfig | None, stage: str = "index", *, index=None,
                 cpus: float | None = None, count: int | None = None) -> Placement:
    """Index shard actors (``afmrl.index.sharded``). With ``index.use_gpu`` each requests
    ``index.gpus_per_shard`` of a GPU: Ray hides GPUs from actors that request none, and FAISS
    then sees no device. ``index`` (an IndexConfig) overrides ``config.index``, e.g. a loaded
    index's saved settings."""
    index = index if index is not None else config.index
    gpus = index.gpus_per_shard if index.use_gpu else 0.0
    cpus = cpus if cpus is not None else (SERVE_SHARD_CPUS if stage == "serve" else SHARD_CPUS)
    # SPREAD: the shards of one index land on different nodes where there are several, so a
    # node's loss takes one shard and the shards' memory and search work divide over nodes.
    return _gpu(stage, "IndexShard", "actor", count or index.num_shards, cpus, gpus,
                "index.use_gpu", index.use_gpu, "false", strategy="SPREAD")


def serve_deployments(config: AfmrlConfig, with_generator: bool) -> list[Placement]:
    """The search app's deployments at ``serve.max_replicas`` each, and the index shard actors
    every Retriever replica starts."""
    serve, gpus = config.serve, config.models.inference_gpus
    placements = [_gpu("serve", "Embedder", "Serve deployment", serve.max_replicas,
                       REPLICA_CPUS["Embedder"], gpus, "models.inference_gpus", gpus, "0")]
    if with_generator:
        placements.append(_gpu("serve", "AttributeGenerator", "Serve deployment",
                               serve.max_replicas, REPLICA_CPUS["AttributeGenerator"], gpus,
                               "models.inference_gpus", gpus, "0"))
    placements += [
        Placement("serve", "Retriever", "Serve deployment", serve.max_replicas,
                  REPLICA_CPUS["Retriever"]),
        index_shards(config, "serve", count=serve.max_replicas * config.index.num_shards),
        Placement("serve", "SearchIngress", "Serve deployment", serve.max_replicas,
                  REPLICA_CPUS["SearchIngress"])]
    return placements


def serve_deployment(config: AfmrlConfig, name: str) -> Placement:
    return next(p for p in serve_deployments(config, True) if p.component == name)


def stage_placements(config: AfmrlConfig, stage: str, with_generator: bool = True
                     ) -> list[Placement]:
    """Everything one step of a stage holds at once (the pre-flight and ``afmrl plan`` use
    this): 'teacher' and 'sft' (distillation), 'extract', 'train', 'rar', 'index' or 'serve'."""
    if stage == "teacher":
        return [teacher_actors(config)]
    if stage == "sft":
        return [sft_workers(config)]
    if stage == "extract":
        return [extraction_actors(config.extract)]
    if stage == "train":
        return [agcl_workers(config)]
    if stage == "rar":
        return [rar_workers(config), reward_embedder(config),
                recall_evaluators(config)]
    if stage == "index":
        return [catalog_embedders(config), index_shards(config)]
    if stage == "serve":
        return serve_deployments(config, with_generator)
    raise ValueError(f"unknown stage {stage!r}; choose from {list(PLAN_STEPS)}")


# -- inside the process -------------------------------------------------------------------------


def _where() -> str:
    node = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            node = f"{ray.util.get_node_ip_address()} ({node}), Ray GPU ids {ray.get_gpu_ids()}"
    except Exception:  # outside Ray the host name is all there is
        pass
    return node


def require_cuda(placement: Placement) -> None:
    """Raise ``DeviceUnavailable`` when ``placement`` asks for a GPU and CUDA is not usable."""
    if not placement.gpus:
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"CUDA not available: {placement.component} is configured for GPU "
            f"({placement.gpu_key}={placement.gpu_value}) but torch.cuda.is_available() is False "
            f"on node {_where()} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); set "
            f"{placement.gpu_key}={placement.cpu_value} or run on a GPU node with a CUDA build "
            f"of torch")


def torch_device(placement: Placement):
    """The torch device of an actor / Serve replica (Ray makes its GPU ``cuda:0``)."""
    import torch

    require_cuda(placement)
    return torch.device(placement.device)


def train_device(placement: Placement):
    """The torch device of this Ray Train worker (its local rank's GPU, or the CPU)."""
    require_cuda(placement)
    if not placement.gpus:
        import torch

        return torch.device("cpu")
    from ray.train.torch import get_device

    return get_device()


def check_workers(placement: Placement, timeout_s: float) -> None:
    """Before a Ray Train worker group starts: one task with a worker's resources checks CUDA
    where such a worker would run, so a CPU-only node fails with the clear message here rather
    than inside NCCL's process-group set-up."""
    if not placement.gpus:
        return
    import ray

    from afmrl.utils.ray_utils import get_with_timeout

    probe = ray.remote(require_cuda).options(**placement.ray_options(), max_retries=0)
    try:
        get_with_timeout(probe.remote(placement), timeout_s,
                         f"the CUDA check of {placement.component}s")
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, DeviceUnavailable):
            raise DeviceUnavailable(str(error.cause)) from None
        raise

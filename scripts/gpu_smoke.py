"""GPU smoke test: the GPU code paths of afmrl on one CUDA device, tiny models, no downloads.

  python scripts/gpu_smoke.py [--out DIR]       # on a GPU node; a few minutes

1. AGCL: the vlm2vec embedder (tiny Qwen2-VL built offline, LoRA) in bf16 through the AGCL loss,
   forward + backward, checking the LoRA gradients are finite and non-zero.
2. RAR: one TRL GRPO step of the tiny generator on the GPU, rewarded by the recall reward
   (RecallReward: the EmbedderActor on its GPU share + RecallEvaluator over an in-memory gallery).
3. Serve: the index stage (EmbedderActor on the GPU, FAISS shards; on the GPU when faiss-gpu is
   installed) and the Ray Serve search app, one POST /search answered with hits.

Every step prints the device it ran on. It needs torch, transformers, peft and trl (and the rest
of afmrl's stack: Ray, FAISS) and reports what is missing; on a machine without CUDA it stops
with the "CUDA not available" message. ``--device cpu`` runs the same steps on the CPU (how the
script itself is checked on CPU-only machines; it proves nothing about GPUs).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

REQUIRED = ("torch", "transformers", "peft", "trl")
KEYS = ("category", "brand", "colour", "material", "flavour", "variant", "size", "packaging")
PRODUCTS = [("red apple juice", "red", "juice"), ("green pear cider", "green", "cider"),
            ("yellow banana milk", "yellow", "milk"), ("blue berry yoghurt", "blue", "yoghurt")]


def missing_packages() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def report(step: str, where: str, started: float, detail: str) -> None:
    print(f"[gpu_smoke] {step:<6} on {where:<28} {time.perf_counter() - started:6.1f}s  {detail}",
          flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smoke_config(out: Path, device: str):
    """The local profile on the tiny vlm2vec embedder, every GPU key on when ``device`` is cuda."""
    from afmrl.config import load_config

    gpu = device == "cuda"
    faiss_gpu = False
    if gpu:
        import faiss

        faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return load_config(None, [
        f"run_dir={out}", "models.embedder=vlm2vec", "models.vlm2vec_base=tiny",
        "models.lora_rank=8", "models.embed_dim=64", f"models.inference_gpus={0.25 if gpu else 0}",
        f"rl.use_gpu={str(gpu).lower()}", "rl.num_workers=1", "rl.group_size=2",
        "rl.prompts_per_step=2", "rl.max_steps=1", "rl.recall_k=1",
        "rl.max_completion_tokens=24", "rl.checkpoint_every_steps=100", "data.image_size=64",
        "index.kind=flat", "index.num_shards=2", f"index.use_gpu={str(faiss_gpu).lower()}",
        "serve.embed_replicas=1", "serve.max_replicas=1", f"serve.port={free_port()}",
        "ray.call_timeout_s=300", "ray.dashboard=false"])


def tiny_catalog(out: Path):
    """4 products: a catalog row (title + image) and two shopper photos (train, val) each."""
    import pandas as pd
    from PIL import Image

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for group, (title, colour, category) in enumerate(PRODUCTS):
        for split, shade in (("catalog", 0), ("train", 40), ("val", 80)):
            path = images / f"{group}-{split}.jpg"
            Image.new("RGB", (96, 96), colour).point(lambda v: max(0, v - shade)).save(path)
            rows.append({"item_id": f"{group}-{split}", "group_id": group, "split": split,
                         "title": title if split == "catalog" else "", "text": "",
                         "image_uri": str(path), "error": "", "coarse_group": category,
                         "content_hash": f"{group}-{split}",
                         "attributes": json.dumps({"colour": colour, "category": category})})
    return pd.DataFrame(rows)


def agcl_step(config, cache: Path, device: str) -> None:
    import torch

    from afmrl.losses import AGCLLoss, BM25Stats, pairwise_bm25
    from afmrl.models.embedders import EmbedInput, build_embedder
    from afmrl.train.trainer import EmbedderWithLoss

    started = time.perf_counter()
    embedder = build_embedder(config.models, cache).to(device=device, dtype=torch.bfloat16)
    module = EmbedderWithLoss(embedder, AGCLLoss.from_config(config.train)).to(device)
    catalog = tiny_catalog(cache / "agcl")
    rows = catalog[catalog["split"] == "catalog"]
    photos = catalog[catalog["split"] == "train"]
    queries = [EmbedInput(image=uri) for uri in photos["image_uri"]]
    candidates = [EmbedInput(text=title, image=uri)
                  for title, uri in zip(rows["title"], rows["image_uri"])]
    batch = {k: v.to(device) for k, v in embedder.collate(queries + candidates).items()}
    product_ids = torch.arange(len(queries), device=device)
    texts = rows["attributes"].tolist()  # AGCL weights negatives by BM25 of attribute texts
    bm25 = pairwise_bm25(texts, BM25Stats.fit(texts)).to(device)
    loss, _ = module(batch, product_ids, bm25)
    loss.backward()
    lora = [p.grad for name, p in embedder.named_parameters() if "lora_" in name
            and p.requires_grad]
    assert lora and all(g is not None and torch.isfinite(g).all() for g in lora), \
        "LoRA parameters got no finite gradient"
    assert any(g.abs().sum() > 0 for g in lora), "every LoRA gradient is zero"
    parameter = next(p for p in embedder.parameters() if p.requires_grad)
    report("AGCL", f"{parameter.device} ({parameter.dtype})", started,
           f"vlm2vec + LoRA ({len(lora)} LoRA tensors with gradients), loss {loss.item():.4f}")


def grpo_step(config, cache: Path, device: str, embedder_path: Path, catalog) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOTrainer

    from afmrl.models.tiny import build_tiny_generator
    from afmrl.rl.grpo import grpo_args, prompt_dataset, query_splits
    from afmrl.rl.reward import RecallReward
    from afmrl.utils.device import reward_embedder

    started = time.perf_counter()
    attributes = dict(zip(catalog["item_id"], catalog["attributes"]))
    reward = RecallReward.start(config, embedder_path, catalog, attributes, name="gpu-smoke")
    try:
        generator = build_tiny_generator(cache / "tiny-qwen2-vl", config.models.seed)
        model = AutoModelForImageTextToText.from_pretrained(str(generator), dtype=torch.float32)
        prompts, _ = query_splits(catalog, config.rl.seed)
        trainer = GRPOTrainer(
            model=model.to(device), processing_class=AutoProcessor.from_pretrained(str(generator)),
            reward_funcs=[reward], args=grpo_args(config, cache / "grpo"),
            train_dataset=prompt_dataset(prompts, config.extract.attribute_keys,
                                         config.data.image_size))
        result = trainer.train()
        policy_device = next(trainer.model.parameters()).device
        embedder_device = reward_embedder(config).device
        report("GRPO", f"{policy_device} (reward embedder {embedder_device})", started, f"{result.global_step} GRPO step(s), loss {result.training_loss:.4f}, "
                        f"reward = Recall@{config.rl.recall_k} over a {len(PRODUCTS)}-item gallery")
    finally:
        reward.shutdown()


def serve_step(config, cache: Path, embedder_path: Path, catalog) -> None:
    import urllib.request

    from afmrl.index.stage import build_catalog_index
    from afmrl.serve.launch import launch, stop_serving

    started = time.perf_counter()
    index_dir = build_catalog_index(config, embedder_path, catalog, cache / "index")
    url = launch(config, index_dir, None, blocking=False)
    try:
        request = urllib.request.Request(
            f"{url}/search", data=json.dumps({"text": "red apple juice", "k": 2}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            hits = json.loads(response.read())["hits"]
            status = response.status
    finally:
        stop_serving(stop_ray=False)
    faiss_where = "cuda" if config.index.use_gpu else "cpu (no faiss-gpu)"
    where = f"embedder {'cuda' if config.models.inference_gpus else 'cpu'}, FAISS {faiss_where}"
    report("serve", where, started,
           f"POST /search -> {status}, top hit {hits[0]['title']!r} of {len(hits)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu only checks the script itself on a machine without a GPU")
    args = p.parse_args(argv)
    missing = missing_packages()
    if missing:
        print(f"gpu_smoke: missing packages {missing}; install afmrl's GPU stack "
              f"(pip install -e '.[gpu]') first", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"CUDA not available: scripts/gpu_smoke.py runs on cuda but "
              f"torch.cuda.is_available() is False on node {socket.gethostname()} (torch "
              f"{torch.__version__}); run it on a GPU node with a CUDA build of torch",
              file=sys.stderr)
        return 2
    import ray

    from afmrl.models.embedders import build_embedder, save_embedder

    out = Path(args.out or tempfile.mkdtemp(prefix="afmrl-gpu-smoke-"))
    config = smoke_config(out, args.device)
    print(f"[gpu_smoke] torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "")
          + f", work folder {out}", flush=True)
    started = time.perf_counter()
    agcl_step(config, out / "models", args.device)
    ray.init(num_cpus=8, include_dashboard=False, namespace="afmrl-gpu-smoke")
    try:
        catalog = tiny_catalog(out)
        embedder_path = save_embedder(build_embedder(config.models, out / "models"),
                                      out / "embedder")
        grpo_step(config, out / "models", args.device, embedder_path, catalog)
        serve_step(config, out, embedder_path, catalog)
    finally:
        ray.shutdown()
    print(f"[gpu_smoke] all steps passed in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

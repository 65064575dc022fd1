"""AGCL training throughput: DDP (ZeRO-0) vs ZeRO-2 vs ZeRO-3 (and optional offload) on the
same data, model and workers; samples/s and peak memory per worker, with ratios to DDP.

  .venv/bin/python bench/bench_train.py --epochs 1 --workers 2

Each variant is a real Ray Train + DeepSpeed run (gloo on CPU) over the grocery train pairs; the
per-epoch samples/s and the peak RSS are what the workers report. Run on a quiet machine: all
variants share this process's run, so noise hits them alike, but 2 cores are easily disturbed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pairs", type=int, default=512, help="training pairs used")
    p.add_argument("--variants", default="0,2,3,3+offload")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from afmrl.config import load_config
    from afmrl.data import load_catalog
    from afmrl.train.data import training_pairs
    from afmrl.train.trainer import train_agcl
    from afmrl.utils.ray_utils import init_ray

    base = load_config(None)
    init_ray(base.ray)
    catalog = load_catalog(base.data)
    pairs = training_pairs(catalog, base.extract.attribute_keys, with_attributes=False)
    keep = np.random.default_rng(0).permutation(len(pairs))[:args.pairs]
    pairs = type(pairs)([pairs.queries[i] for i in keep], [pairs.candidates[i] for i in keep],
                        pairs.product_ids[keep], pairs.coarse_ids[keep],
                        [pairs.attribute_texts[i] for i in keep],
                        [pairs.query_item_ids[i] for i in keep],
                        [pairs.candidate_item_ids[i] for i in keep])
    rows = []
    for variant in args.variants.split(","):
        stage, _, offload = variant.partition("+")
        run_dir = tempfile.mkdtemp(prefix=f"afmrl-bench-train-{stage}-")
        config = load_config(None, [
            f"run_dir={run_dir}", f"train.zero_stage={stage}",
            f"train.offload={'true' if offload else 'false'}", f"train.epochs={args.epochs}",
            f"train.num_workers={args.workers}", f"train.per_device_batch_size={args.batch}",
            "train.eval_every_epochs=1000", "train.attribute_weights=false"])
        result = train_agcl(config, "bench", pairs, {}, [""], None)
        rows.append((("DDP (ZeRO-0)" if stage == "0" else f"ZeRO-{stage}") +
                     (" + offload" if offload else ""),
                     result.metrics["samples_per_s_per_worker"],
                     result.metrics["peak_rss_gib"], result.seconds))
    ddp = rows[0]
    print(f"\n{args.pairs} grocery pairs, {args.workers} CPU workers, batch {args.batch}/worker, "
          f"{args.epochs} epoch(s), dual embedder (tiny ViT + MiniLM)\n")
    base = ddp[0]  # the first variant is the baseline (DDP with the default --variants)
    print(f"| strategy | samples/s/worker | ÷ {base} | peak RSS/worker (GiB) | ÷ {base} | "
          f"wall (s) |")
    print("|---|---|---|---|---|---|")
    for name, rate, rss, seconds in rows:
        print(f"| {name} | {rate:.1f} | {rate / ddp[1]:.2f}× | {rss:.2f} | {rss / ddp[2]:.2f}× "
              f"| {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Extraction throughput: the Ray Data + vLLM pipeline vs a single-process transformers
``generate`` loop vs the bare vLLM engine, on the same model and the same catalog rows.

  .venv/bin/python bench/bench_extract.py --rows 64

Prints items/s for each and the ratios: pipeline / transformers (what the distributed path buys)
and pipeline / bare vLLM (what Ray Data costs on top of the engine). All three measured in this
process run, after a warm-up, so machine noise affects them alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64, help="catalog rows (images + titles)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--generator", default=None, help="model dir (default: tiny, built offline)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from afmrl.config import DEFAULT_SHARED_DATA, load_config
    from afmrl.data import grocery_catalog
    from afmrl.data.images import load_image
    from afmrl.extract.engines import TransformersEngine, VllmEngine
    from afmrl.extract.runner import run_extraction
    from afmrl.models.processor import PromptItem, extraction_request
    from afmrl.models.tiny import build_tiny_generator
    from afmrl.utils.ray_utils import init_ray

    work = Path(tempfile.mkdtemp(prefix="afmrl-bench-extract-"))
    generator = Path(args.generator) if args.generator else build_tiny_generator(work / "gen")
    config = load_config(None, [f"extract.batch_size={args.batch_size}",
                                f"extract.num_actors={args.actors}"])
    catalog = grocery_catalog(DEFAULT_SHARED_DATA)
    rows = catalog[catalog["split"] != "catalog"].head(args.rows).reset_index(drop=True)
    keys = config.extract.attribute_keys

    def requests():
        return [(extraction_request(PromptItem(image_uri=u), keys), load_image(u, 224))
                for u in rows["image_uri"]]

    results = {}
    # 1. single-process transformers generate loop (batched like the pipeline)
    hf = TransformersEngine(generator, config.extract.max_tokens, 0.0, 224)
    hf.generate(requests()[:2])
    started = time.perf_counter()
    batch = requests()
    for i in range(0, len(batch), args.batch_size):
        hf.generate(batch[i:i + args.batch_size])
    results["transformers generate (1 process)"] = len(rows) / (time.perf_counter() - started)
    del hf
    # 2. bare vLLM engine, same structured output
    engine = VllmEngine(generator, config.extract, 224, work / "vllm")
    engine.generate(requests()[:2])
    started = time.perf_counter()
    engine.generate(requests())
    results["bare vLLM engine"] = len(rows) / (time.perf_counter() - started)
    del engine
    # 3. the pipeline: Ray Data over vLLM actors (includes image loading and Parquet writes)
    init_ray(config.ray)
    run_extraction(rows.head(2), generator, "warm", config.extract, config.ray,
                   work / "warm", 224, hide_titles=True)
    result = run_extraction(rows, generator, "bench", config.extract, config.ray,
                            work / "pipe", 224, hide_titles=True)
    import pandas as pd

    busy = sum(pd.read_parquet(part)["seconds"].iloc[0]
               for part in (work / "pipe" / "parts").glob("part-*.parquet"))
    results[f"Ray Data + vLLM, end to end incl. engine start ({args.actors} actor)"] = \
        result.metrics["rows_per_s"]
    pipeline = len(rows) * args.actors / busy
    results[f"Ray Data + vLLM, steady state ({args.actors} actor)"] = pipeline
    print(f"\n{len(rows)} grocery photos, tiny Qwen2-VL generator, batch {args.batch_size}\n")
    print("| engine | items/s | pipeline ÷ this |")
    print("|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.2f} | {pipeline / rate:.2f}× |")
    print("\nSteady state = rows / time the actors spent inside batches (image loading, "
          "generation, parsing, the Parquet write); end to end adds Ray Data scheduling and the "
          "vLLM engine start-up of each actor.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The RL reward's retrieval cost: per-query Recall@k / AP@k / rank for one batch of enriched
queries, through the ``RecallEvaluator`` actor group vs the same scorer in-process vs a numpy
brute-force baseline, all in this process's run.

    .venv/bin/python bench/bench_evaluator.py --n 100000 --batches 16,64,256,1024

A GRPO step scores prompts x group-size completions in one call (16 with the local defaults,
a few hundred on GPUs). The latency of that call is what the reward adds to every step; compare
it with the step time (README: ~3.5 s per step on CPU).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_index import clustered_embeddings, numpy_top_k  # noqa: E402


def numpy_recall(gallery: np.ndarray, gallery_products: np.ndarray, queries: np.ndarray,
                 products: np.ndarray, k: int) -> np.ndarray:
    """Baseline: numpy brute-force top-k, then Recall@k (any correct item in the top-k)."""
    top = numpy_top_k(gallery, queries, k)
    return (gallery_products[top] == products[:, None]).any(axis=1).astype(np.float32)


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, 1000 * float(np.median(times))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="gallery size (generated)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=50, help="Recall@k depth (paper: 50)")
    parser.add_argument("--batches", default="16,64,256,1024", help="queries per reward call")
    parser.add_argument("--evaluators", type=int, default=2, help="RecallEvaluator actors")
    parser.add_argument("--kind", default="flat", help="index kind (index.kind) of the scorers")
    parser.add_argument("--repeats", type=int, default=7, help="calls timed, median reported")
    args = parser.parse_args(argv)

    from afmrl.config import EvalConfig, IndexConfig, RayConfig
    from afmrl.index.evaluator import GalleryScorer, RecallEvaluator
    from afmrl.utils.ray_utils import init_ray

    (gallery, gallery_products), draw = clustered_embeddings(args.n, args.dim,
                                                             max(1, args.n // 20), seed=0)
    index_config = IndexConfig(kind=args.kind)
    eval_config = EvalConfig(ks=(1, 10, args.k), num_evaluators=args.evaluators)
    scorer = GalleryScorer(gallery, gallery_products, index_config, eval_config.ks)
    init_ray(RayConfig())
    evaluator = RecallEvaluator.get_or_create("bench-evaluator", gallery, gallery_products,
                                              index_config, eval_config)
    rows = []
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            queries, products = draw(batch)
            baseline, numpy_ms = median_ms(lambda: numpy_recall(
                gallery, gallery_products, queries, products, args.k), args.repeats)
            local, local_ms = median_ms(lambda: scorer.score(queries, products), args.repeats)
            remote, actor_ms = median_ms(lambda: evaluator.evaluate(queries, products),
                                         args.repeats)
            # The actors must match the in-process scorer exactly; an approximate index may
            # miss some of the exact baseline's hits (reported, not an error).
            if not np.array_equal(remote.recall[args.k], local.recall[args.k]):
                raise AssertionError(f"RecallEvaluator disagrees with the in-process scorer at "
                                     f"batch {batch}")
            same = float(np.mean(local.recall[args.k] == baseline))
            rows.append((batch, numpy_ms, local_ms, actor_ms, same))
    finally:
        evaluator.shutdown()

    print(f"\n{args.n} gallery items x {args.dim} dims ({args.n // 20} products), Recall@{args.k}"
          f" + AP + ranks per query, {args.kind} index, {args.evaluators} evaluator actors; median of "
          f"{args.repeats} calls\n")
    print("| queries per call | numpy ms | in-process scorer ms | RecallEvaluator ms | "
          "evaluator ÷ numpy | evaluator ÷ in-process | Recall@k as numpy |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for batch, numpy_ms, local_ms, actor_ms, same in rows:
        print(f"| {batch} | {numpy_ms:.1f} | {local_ms:.1f} | {actor_ms:.1f} | "
              f"{actor_ms / numpy_ms:.2f}× | {actor_ms / local_ms:.2f}× | {same:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark online serving: p50/p99 latency and QPS of text search over HTTP (Ray Serve) against
the same embed + search called in-process, with dynamic batching off (max_batch_size 1) and on.

    python bench/bench_serve.py                          # sample index, MiniLM text tower
    python bench/bench_serve.py --index runs/local/index --seconds 20 --clients 8 --batch 16
    python bench/bench_serve.py --modes dense lexical hybrid   # retrieval modes over HTTP

Every deployment runs ``--replicas`` replicas (autoscaling pinned, so capacity does not change
mid-measurement); no generator (enrich off). Timings on a shared 2-core box swing a lot: compare
the ratios measured in one run. Prints a markdown table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # serve_apps from a checkout

from afmrl.config import AfmrlConfig, replace  # noqa: E402
from afmrl.serve.loadgen import LoadResult, run_load  # noqa: E402
from afmrl.utils.job import parse, parser  # noqa: E402

QUERIES = ("apple juice", "oat milk", "vanilla yoghurt", "orange juice 1l", "sour cream",
           "red grapefruit juice", "ecological milk", "soy drink", "cream cheese", "kefir")
K = 10


def in_process(config: AfmrlConfig, index_dir: Path, seconds: float) -> LoadResult:
    """One caller doing what one request does, minus HTTP and Serve: embed, then search.
    One torch thread, like an Embedder replica (Ray sets OMP_NUM_THREADS=1 for it)."""
    import torch

    from afmrl.models.embedders import EmbedInput, embed, load_embedder
    from afmrl.serve.catalog import Catalog

    torch.set_num_threads(1)
    catalog = Catalog(index_dir, config.ray)
    model = load_embedder(catalog.source.check_embedder())
    result = LoadResult()

    def query(text: str) -> None:
        catalog.search(embed(model, [EmbedInput(text)])[0], K, {})

    try:
        for text in QUERIES:  # warm-up
            query(text)
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            t0 = time.monotonic()
            query(QUERIES[n % len(QUERIES)])
            result.latencies_s.append(time.monotonic() - t0)
            n += 1
        result.seconds = time.monotonic() - started
    finally:
        catalog.index.shutdown()
    return result


def over_http(config: AfmrlConfig, index_dir: Path, seconds: float,
              clients: Sequence[int], modes: Sequence[str | None] = (None,)
              ) -> dict[tuple[str | None, int], LoadResult]:
    """HTTP load per (retrieval mode, client count); mode None: the app's default."""
    from afmrl.serve.launch import launch

    url = launch(config, index_dir, None, blocking=False)
    results = {}
    for mode in modes:
        extra = {} if mode is None else {"mode": mode}
        payloads = [{"text": text, "k": K, **extra} for text in QUERIES]
        run_load(f"{url}/search", payloads, max(clients), 2.0)  # warm-up
        for n in clients:
            results[mode, n] = result = run_load(f"{url}/search", payloads, n, seconds)
            if result.errors:
                raise RuntimeError(f"{len(result.errors)} failed requests, e.g. "
                                   f"{result.errors[0]}")
    return results


def table(rows: list[tuple[str, str, int, LoadResult]], baseline: LoadResult) -> str:
    lines = ["| path | max_batch_size | clients | p50 ms | p99 ms | QPS | QPS / in-process | "
             "p50 / in-process |", "|---|---|---|---|---|---|---|---|"]
    for path, batch, clients, r in rows:
        lines.append(f"| {path} | {batch} | {clients} | {r.percentile_ms(50):.1f} | "
                     f"{r.percentile_ms(99):.1f} | {r.qps:.1f} | {r.qps / baseline.qps:.2f} | "
                     f"{r.percentile_ms(50) / baseline.percentile_ms(50):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--index", default=None,
                   help="index folder (default: a sample index under <run_dir>/bench/serve)")
    p.add_argument("--seconds", type=float, default=5.0, help="measurement time per cell")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--batch", type=int, default=16, help="max_batch_size of the batched runs")
    p.add_argument("--replicas", type=int, default=1, help="replicas of every deployment")
    p.add_argument("--modes", nargs="+", choices=("dense", "lexical", "hybrid"), default=None,
                   help="instead of the batching comparison: each retrieval mode over HTTP "
                        "(max_batch_size 1), with hybrid/dense p50 printed")
    config, args = parse(argv, __doc__, p)
    from ray import serve

    from afmrl.serve.sample import sample_index
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    index_dir = Path(args.index) if args.index else \
        sample_index(config, config.run_path / "bench" / "serve")
    baseline = in_process(config, index_dir, args.seconds)
    rows: list[tuple[str, str, int, LoadResult]] = [("in-process embed + search", "-", 1,
                                                     baseline)]
    clients = sorted({1, args.clients})
    http: dict[tuple[str | None, int], LoadResult] = {}
    try:
        for batch in (1,) if args.modes else (1, args.batch):
            serving = replace(config, serve=replace(config.serve, max_batch_size=batch,
                                                    embed_replicas=args.replicas,
                                                    max_replicas=args.replicas))
            http = over_http(serving, index_dir, args.seconds, clients, args.modes or (None,))
            for (mode, n), result in http.items():
                path = "HTTP (Ray Serve)" + (f" mode={mode}" if mode else "")
                rows.append((path, str(batch), n, result))
    finally:
        serve.shutdown()
    print(f"\nbench_serve: {args.seconds:g} s per cell, k={K}, {args.replicas} replica(s) per "
          f"deployment, text tower {config.models.text_tower}, "
          f"{sum(len(r.latencies_s) for *_, r in rows)} requests\n")
    print(table(rows, baseline))
    if args.modes and {"dense", "hybrid"} <= set(args.modes):
        for n in clients:
            ratio = http["hybrid", n].percentile_ms(50) / http["dense", n].percentile_ms(50)
            print(f"hybrid / dense p50 over HTTP, {n} client(s): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

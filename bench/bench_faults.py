"""Load with faults: searches and live catalog writes at a fixed rate while one replica of each
deployment (Retriever, Embedder, SearchIngress) in turn is killed like a crash.

    python bench/bench_faults.py models.text_tower=tiny               # sample index
    python bench/bench_faults.py --rate 10 --before 10 --after 20 --replicas 2

Prints, per killed deployment: requests sent and failed and p50/p99 latency before the kill,
during recovery (kill -> replacement running + grace) and after; seconds to recover; and whether
any acknowledged write was lost (every 2xx PUT readable, every 2xx DELETE still deleted). The
baseline for latency is the "before" window of the same run. Exit status 1 on a lost write or a
failure outside the recovery window.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # serve_apps from a checkout

from afmrl.config import replace  # noqa: E402
from afmrl.serve.loadgen import measure_fault  # noqa: E402
from afmrl.utils.job import parse, parser  # noqa: E402

QUERIES = [{"text": text, "k": 10} for text in (
    "apple juice", "oat milk", "vanilla yoghurt", "orange juice 1l", "sour cream",
    "red grapefruit juice", "ecological milk", "soy drink", "cream cheese", "kefir")]
DEPLOYMENTS = ("Retriever", "Embedder", "SearchIngress")


def row(deployment: str, run: dict) -> str:
    cells = [deployment]
    for window in ("before", "during", "after"):
        w = run[window]
        cells.append(f"{w['sent']} / {w['failed']} / {w['p50_ms']} / {w['p99_ms']}")
    cells += [str(run["recover_s"]), str(len(run["workload"].acked_puts)),
              str(len(run["workload"].acked_deletes)), str(len(run["lost"]))]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--index", default=None,
                   help="index folder (default: a sample index under <run_dir>/bench/faults)")
    p.add_argument("--rate", type=float, default=8.0, help="requests per second (1 in 4 writes)")
    p.add_argument("--before", type=float, default=8.0, help="seconds of load before the kill")
    p.add_argument("--after", type=float, default=12.0, help="seconds of load after recovery")
    p.add_argument("--grace", type=float, default=2.0,
                   help="seconds after the replacement runs still counted as recovery")
    p.add_argument("--replicas", type=int, default=2, help="replicas of every deployment")
    config, args = parse(argv, __doc__, p)
    from ray import serve

    from afmrl.serve.config_gen import APP_NAME
    from afmrl.serve.launch import launch
    from afmrl.serve.sample import sample_index
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    config = replace(config, serve=replace(config.serve, embed_replicas=args.replicas,
                                           max_replicas=args.replicas))
    index_dir = Path(args.index) if args.index else \
        sample_index(config, config.run_path / "bench" / "faults")
    rows, bad = [], 0
    try:
        url = launch(config, index_dir, None, blocking=False)
        for deployment in DEPLOYMENTS:
            run = measure_fault(url, APP_NAME, deployment, args.replicas, QUERIES, args.rate,
                                args.before, args.after, args.grace)
            run["lost"] = run["workload"].lost_writes(url)
            bad += bool(run["lost"]) + run["before"]["failed"] + run["after"]["failed"]
            rows.append(row(deployment, run))
    finally:
        serve.shutdown()
    print(f"\nbench_faults: {args.rate:g} req/s (3 searches : 1 PUT/DELETE), {args.replicas} "
          f"replicas per deployment, text tower {config.models.text_tower}; windows: "
          f"sent / failed / p50 ms / p99 ms\n")
    print("| killed | before | during recovery | after | recover s | acked PUTs | "
          "acked DELETEs | lost writes |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

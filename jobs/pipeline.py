"""The main job: the whole AFMRL pipeline, end to end, resumable (what `make demo` runs).

  afmrl pipeline --config configs/demo.yaml            # the <= 15 min demo on 2 CPU cores
  afmrl pipeline --config configs/full.yaml            # the longer profile of the README results
  afmrl pipeline --config configs/mini.yaml --no-wait  # CI-sized, exits after a smoke query
  afmrl pipeline --config configs/demo.yaml --dry-run  # stages, configs, plan, time estimate
  ray job submit --working-dir . -- python jobs/pipeline.py --config configs/gpu.yaml --no-wait

Ctrl-C stops it at any stage: the search app is shut down, the local Ray cluster this job
started is stopped, and finished stages stay recorded, so a rerun resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parser, parse  # noqa: E402


def _print_summary(pipeline, summary) -> None:
    from afmrl.pipeline import format_results

    print(f"\nAFMRL results (profile '{pipeline.config.profile}'; grocery benchmark: test "
          f"photos vs catalog items)")
    print(format_results(summary))
    print(f"\nrun dir:      {pipeline.layout.root}")
    report = pipeline.layout.root / "report.html"
    if report.is_file():
        print(f"report:       {report}")
    print(f"MLflow:       {summary['mlflow']} (parent run {summary['parent_run_id']})")
    print(f"              mlflow ui --backend-store-uri {summary['mlflow']}")
    print(f"checkpoints:  {pipeline.layout.root / 'train'}, {pipeline.layout.rar}")
    print(f"index:        {pipeline.layout.index}")
    if summary["endpoint"]:
        print(f"endpoint:     {summary['endpoint']}  (search page at {summary['endpoint']}/)")
        print(f"  curl -s -X POST {summary['endpoint']}/search -H 'content-type: "
              f"application/json' -d '{{\"text\": \"orange juice\", \"k\": 5}}'")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--no-wait", action="store_true",
                   help="exit after the serve stage answers a query (default: keep serving "
                        "until Ctrl-C)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the stages, their configs, the resource plan and the estimated "
                        "time on this machine, then exit")
    config, args = parse(argv, __doc__, p)
    if args.dry_run:
        from afmrl.doctor import dry_run

        print(dry_run(config))
        return 0
    import ray

    from afmrl.pipeline import Pipeline
    from afmrl.serve.launch import stop_serving, wait_for_interrupt
    from afmrl.utils.console import install_interrupt_handler
    from afmrl.plan import join_checked
    from afmrl.utils.ray_utils import ResourceShortfall

    install_interrupt_handler()
    started_ray = not ray.is_initialized()
    try:
        join_checked(config)
        pipeline = Pipeline(config)
        summary = pipeline.run()
        _print_summary(pipeline, summary)
        if summary["endpoint"] and not args.no_wait:
            print("serving; Ctrl-C to stop", flush=True)
            wait_for_interrupt()
    except ResourceShortfall as shortfall:
        print(f"afmrl pipeline: {shortfall}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C / SIGTERM (afmrl.utils.console.Interrupted)
        print(f"\ninterrupted ({stop or 'Ctrl-C'}): stopping the search app and Ray; finished "
              f"stages are saved, rerun the same command to resume", file=sys.stderr, flush=True)
        stop_serving(started_ray)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: the whole AFMRL pipeline, end to end, resumable (what `make demo` runs).

  afmrl pipeline --config configs/local.yaml            # full grocery run on CPU
  afmrl pipeline --config configs/mini.yaml --no-wait   # CI-sized, exits after a smoke query
  ray job submit --working-dir . -- python jobs/pipeline.py --config configs/gpu.yaml --no-wait
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parser, parse  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--no-wait", action="store_true",
                   help="exit after the serve stage answers a query (default: keep serving "
                        "until Ctrl-C)")
    config, args = parse(argv, __doc__, p)
    from afmrl.pipeline import Pipeline, format_results
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    pipeline = Pipeline(config)
    summary = pipeline.run()
    print("\nAFMRL results (grocery benchmark: test photos vs catalog items)")
    print(format_results(summary))
    print(f"\nrun dir:      {pipeline.layout.root}")
    print(f"MLflow:       {summary['mlflow']} (parent run {summary['parent_run_id']})")
    print(f"              mlflow ui --backend-store-uri {summary['mlflow']}")
    print(f"checkpoints:  {pipeline.layout.root / 'train'}, {pipeline.layout.rar}")
    print(f"index:        {pipeline.layout.index}")
    if summary["endpoint"]:
        print(f"endpoint:     {summary['endpoint']}  (search page at {summary['endpoint']}/)")
        print(f"  curl -s -X POST {summary['endpoint']}/search -H 'content-type: "
              f"application/json' -d '{{\"text\": \"orange juice\", \"k\": 5}}'")
        if not args.no_wait:
            from afmrl.serve.launch import wait_until_interrupted

            print("serving; Ctrl-C to stop")
            wait_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())

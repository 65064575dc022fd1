"""Serve AFMRL product search over HTTP with Ray Serve (Ctrl-C stops it).

  afmrl serve --config configs/local.yaml
  afmrl serve --config configs/local.yaml --index runs/local/index --generator none serve.port=8080
The search page is at the printed URL, the API reference at <URL>/docs.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parse, parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--index", default=None, help="index folder (default: <run_dir>/index)")
    p.add_argument("--generator", default=None,
                   help="generator folder for query enrichment (default: the run's rar, else "
                        "sft generator, else none); 'none' turns enrichment off")
    p.add_argument("--detach", action="store_true",
                   help="return once serving; the app keeps running on the Ray cluster of "
                        "ray.address / $RAY_ADDRESS")
    config, args = parse(argv, __doc__, p)
    from afmrl.index.stage import SOURCE_FILE
    from afmrl.layout import RunLayout
    from afmrl.serve.launch import curl_example, default_generator, launch, wait_until_interrupted
    from afmrl.plan import join_checked

    layout = RunLayout.of(config)
    index = Path(args.index) if args.index else layout.index
    if not (index / SOURCE_FILE).is_file():
        p.exit(2, f"no index at {index}; run `afmrl index` first or pass --index\n")
    generator = default_generator(layout) if args.generator is None else \
        None if args.generator == "none" else Path(args.generator)
    join_checked(config, ["serve"])
    url = launch(config, index, generator, blocking=False)
    enrichment = "off" if not generator else \
        f"{'on' if config.serve.enrich_by_default else 'on request'}, {generator}"
    print(f"search app: {url}/  (API reference: {url}/docs, enrichment: {enrichment})")
    print(curl_example(url, config.serve))
    if not args.detach:
        wait_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())

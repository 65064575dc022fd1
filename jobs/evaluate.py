"""Evaluate embedders and baselines on any catalog: one table, rows = systems, cols = metrics.

  afmrl eval --config configs/local.yaml data.catalog=catalog.parquet --baselines
  afmrl eval --config configs/local.yaml --embedder runs/local/train/agcl/embedder --split val
  afmrl eval data.catalog=pricerunner --baselines --json pricerunner.json

Protocol: queries = the rows of --split, gallery = the 'catalog' rows, correct = same group_id;
a catalog without 'catalog' rows is evaluated leave-one-out within the split. --embedder
defaults to the run's latest trained embedder (cit, else agcl, else infonce) and may be absent
with --baselines, which adds character 2-4-gram TF-IDF, BM25 over title + text + attributes and
the untrained (zero-shot) embedder on the same queries and gallery. Writes the table as JSON
(--json, default <run_dir>/eval/<split>.json) plus .md, .groups.json (per coarse group) and
.png beside it, and logs everything to MLflow.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parser, parse, stage_run  # noqa: E402

BUNDLED = ("grocery", "pricerunner")  # adapters that need no Ray Data read


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--embedder", default=None,
                   help="exported embedder folder (default: the run's latest trained one)")
    p.add_argument("--split", default="test", help="split whose rows are the queries")
    p.add_argument("--baselines", action="store_true",
                   help="add TF-IDF, BM25 and the untrained (zero-shot) embedder")
    p.add_argument("--attributes", default=None,
                   help="generator tag whose attributes label the catalog (<run_dir>/extract/"
                        "<tag>; default: rar, else sft, else none) or 'none'")
    p.add_argument("--json", default=None, help="where to write the table (JSON)")
    config, args = parse(argv, __doc__, p)
    from afmrl.eval.run import evaluate_catalog, latest_embedder
    from afmrl.layout import RunLayout

    layout = RunLayout.of(config)
    embedder = Path(args.embedder) if args.embedder else latest_embedder(layout)
    if embedder is None and not args.baselines:
        print(f"afmrl eval: no trained embedder under {layout.root / 'train'}; pass "
              f"--embedder DIR or --baselines", file=sys.stderr)
        return 2
    if config.data.catalog not in BUNDLED:
        from afmrl.utils.ray_utils import init_ray

        init_ray(config.ray)  # user catalog files are read with Ray Data
    out = Path(args.json) if args.json else layout.root / "eval" / f"{args.split}.json"
    with stage_run(config, "eval") as tracker:
        try:
            table = evaluate_catalog(config, args.split, embedder, args.baselines,
                                     args.attributes)
        except ValueError as error:  # e.g. no rows in the split: the message says which
            print(f"afmrl eval: {error}", file=sys.stderr)
            return 2
        paths = table.write(out)
        table.log(tracker, paths)
    print(table.markdown())
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

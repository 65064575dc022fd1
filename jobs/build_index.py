"""Build the sharded FAISS index of the catalog with a trained embedder.

  afmrl index --config configs/local.yaml --embedder runs/local/train/cit/embedder
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parser, parse, stage_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--embedder", default=None,
                   help="exported embedder (default: <run_dir>/train/cit, else train/agcl)")
    p.add_argument("--attributes", default="rar",
                   help="generator tag whose catalog attributes to index (falls back to sft)")
    config, args = parse(argv, __doc__, p)
    from afmrl.data import load_catalog
    from afmrl.extract.stage import load_attributes, with_attributes
    from afmrl.index.stage import build_catalog_index
    from afmrl.layout import RunLayout
    from afmrl.plan import join_checked

    layout = RunLayout.of(config)
    embedder = Path(args.embedder) if args.embedder else next(
        (layout.embedder(t) for t in ("cit", "agcl") if layout.embedder(t).is_dir()), None)
    if embedder is None or not embedder.is_dir():
        p.exit(2, f"no trained embedder found under {layout.root / 'train'}; run `afmrl train` "
                  f"first or pass --embedder\n")
    catalog = load_catalog(config.data)
    for tag in (args.attributes, "sft"):
        if layout.attributes(tag).is_dir():
            catalog = with_attributes(catalog, load_attributes(layout.attributes(tag)))
            break
    join_checked(config, ["index"])
    with stage_run(config, "index") as tracker:
        path = build_catalog_index(config, embedder, catalog, layout.index, tracker)
    print(f"index: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

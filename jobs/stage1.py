"""Stage 1: train the AGCL embedder on Ray Train + DeepSpeed ZeRO.

  afmrl train --config configs/local.yaml train.zero_stage=3 train.num_workers=2
  afmrl train train.attribute_weights=false train.false_negative_filter=false   # plain InfoNCE
  ray job submit --working-dir . -- python jobs/stage1.py --config configs/gpu.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parser, parse, stage_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--tag", default="agcl", help="name of this run under <run_dir>/train/")
    p.add_argument("--attributes", default="sft",
                   help="generator tag whose attributes to use (<run_dir>/extract/<tag>), or "
                        "'none' to train without attributes")
    config, args = parse(argv, __doc__, p)
    from afmrl.extract.stage import load_attributes
    from afmrl.layout import RunLayout
    from afmrl.train.stage import run_agcl
    from afmrl.plan import join_checked

    join_checked(config, ["train"])
    attributes = None if args.attributes == "none" else \
        load_attributes(RunLayout.of(config).attributes(args.attributes))
    with stage_run(config, f"train_{args.tag}") as tracker:
        result = run_agcl(config, attributes, args.tag, tracker)
    print(f"embedder: {result.embedder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

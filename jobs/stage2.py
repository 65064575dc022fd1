"""Stage 2 (RAR): GRPO on the attribute generator, rewarded by the Recall@k of enriched queries.

Inputs come from the run directory: the distilled generator (else the base one), the AGCL
embedder and the catalog attributes of `afmrl extract`.

  afmrl rar --config configs/mini.yaml rl.max_steps=4
  afmrl rar --config configs/local.yaml rl.rollout_engine=vllm
  ray job submit --working-dir . -- python jobs/stage2.py --config configs/gpu.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parse, stage_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    config, _ = parse(argv, __doc__)
    from afmrl.data import load_catalog
    from afmrl.extract.stage import base_generator, load_attributes
    from afmrl.layout import RunLayout
    from afmrl.plan import join_checked
    from afmrl.rl.grpo import run_rar

    layout = RunLayout.of(config)
    embedder = layout.embedder("agcl")
    if not (embedder / "embedder.json").is_file():
        print(f"error: no AGCL embedder at {embedder}; run `afmrl train` first",
              file=sys.stderr)
        return 2
    try:
        attributes = load_attributes(layout.attributes("sft"))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    catalog = load_catalog(config.data)
    generator = layout.generator_sft if layout.generator_sft.is_dir() else \
        base_generator(config, catalog)
    join_checked(config, ["rar"])
    with stage_run(config, "rar") as tracker:
        out = run_rar(config, generator, embedder, catalog, attributes, tracker)
    print(f"generator (RAR): {out}\ncurves: {layout.rar / 'reward_curve.png'}\n"
          f"checkpoints: {layout.rar / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

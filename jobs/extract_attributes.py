"""Stage 0: label the catalog with key attributes (distil the generator, then Ray Data + vLLM).

  afmrl extract --config configs/local.yaml extract.num_actors=2
  ray job submit --working-dir . -- python jobs/extract_attributes.py --config configs/gpu.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parse, stage_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    config, _ = parse(argv, __doc__)
    from afmrl.data import load_catalog
    from afmrl.extract.stage import distilled_generator, extract_all
    from afmrl.layout import RunLayout
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    with stage_run(config, "extract") as tracker:
        catalog = load_catalog(config.data)
        generator = distilled_generator(config, catalog, tracker)
        table = extract_all(config, generator, "sft", tracker, catalog)
    print(f"attributes: {len(table)} rows -> {RunLayout.of(config).attributes('sft')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 0: label the catalog with key attributes (distil the generator, then Ray Data + vLLM).

  afmrl extract --config configs/local.yaml extract.num_actors=2
  afmrl extract --config configs/gpu.yaml --teacher Qwen/Qwen2.5-VL-72B-Instruct
  ray job submit --working-dir . -- python jobs/extract_attributes.py --config configs/gpu.yaml

With a teacher (``--teacher MODEL`` or extract.teacher_model) the paper's distillation runs
first: the teacher labels the catalog through the same extraction (its own tensor-parallel
actors), the generator is fine-tuned on those labels (extract.sft_steps), then it labels
everything. The whole plan (`afmrl plan --stages extract`) is checked against the cluster
before any work.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parse, parser, stage_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="distillation teacher (path or hub id; sets extract.teacher_model)")
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = p.parse_known_args(argv)
    if known.teacher:  # an override like any other, so --print-config shows it
        argv.append(f"extract.teacher_model={known.teacher}")
    config, _ = parse(argv, __doc__, p)
    from afmrl.data import load_catalog
    from afmrl.extract.stage import distilled_generator, extract_all
    from afmrl.layout import RunLayout
    from afmrl.plan import join_checked

    join_checked(config, ["extract"])
    with stage_run(config, "extract") as tracker:
        catalog = load_catalog(config.data)
        generator = distilled_generator(config, catalog, tracker)
        table = extract_all(config, generator, "sft", tracker, catalog)
    if config.extract.teacher_model and config.extract.sft_steps:
        print(f"teacher labels: {RunLayout.of(config).attributes('teacher') / 'teacher.parquet'}")
    print(f"attributes: {len(table)} rows -> {RunLayout.of(config).attributes('sft')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`afmrl plan`: every Ray actor, worker and deployment each stage creates, with its resources.

  afmrl plan --config configs/gpu.yaml              the plan (no cluster needed)
  afmrl plan --config configs/gpu.yaml --check      ... and whether the running cluster holds it

The plan is made of the ``Placement`` objects of ``afmrl.utils.device`` — the same objects the
stages pass to ``.options(...)``, Ray Data, Ray Train's ``ScalingConfig`` and the Serve
deployment options — so it cannot drift from what runs. Stages run one after another: a
stage's total is what it holds at once, and the cluster must hold the largest stage.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

from afmrl.config import AfmrlConfig
from afmrl.utils.device import Placement, stage_placements

# Pipeline stages -> their steps, one after another ("cit" re-extracts, then retrains).
_PLANNED = {"extract": ("teacher", "sft", "extract"), "train": ("train",), "rar": ("rar",),
            "cit": ("extract", "train"), "index": ("index",), "serve": ("serve",)}


@dataclass(frozen=True)
class StagePlan:
    """One stage (or one step of CIT): its placements and what it holds at once."""
    stage: str
    placements: tuple[Placement, ...]

    @property
    def total(self) -> dict[str, float]:
        total = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}
        for placement in self.placements:
            for name, amount in placement.total().items():
                total[name] += amount
        return total


def resource_plan(config: AfmrlConfig, stages: Sequence[str] | None = None,
                  with_generator: bool = True) -> list[StagePlan]:
    """The plan of ``stages`` (default: ``config.stages``); ``with_generator``: the serve stage
    runs the AttributeGenerator deployment (query enrichment)."""
    plans = []
    for stage in stages if stages is not None else config.stages:
        steps = [s for s in _PLANNED[stage] if _runs(config, s)]
        for step in steps:
            name = f"{stage}/{step}" if len(steps) > 1 else stage
            plans.append(StagePlan(name, tuple(stage_placements(config, step, with_generator))))
    return plans


def _runs(config: AfmrlConfig, step: str) -> bool:
    """Distillation steps run only when configured: SFT with sft_steps, the teacher with SFT and
    a teacher model."""
    ex = config.extract
    if step == "sft":
        return ex.sft_steps > 0
    if step == "teacher":
        return ex.sft_steps > 0 and ex.teacher_model is not None
    return True


def _gib(amount: float) -> str:
    return f"{amount / (1 << 30):.1f}" if amount else "-"


def format_plan(plans: Sequence[StagePlan]) -> str:
    """A table per stage: count, CPUs/GPUs/memory (GiB) each, device, and the stage totals."""
    header = f"  {'component':<26} {'kind':<20} {'count':>5} {'CPU':>6} {'GPU':>6} " \
             f"{'mem GiB':>8}  device"
    lines = []
    for plan in plans:
        lines += [f"stage {plan.stage}", header]
        for p in plan.placements:
            lines.append(f"  {p.component:<26} {p.kind:<20} {p.count:>5} {p.cpus:>6g} "
                         f"{p.gpus:>6g} {_gib(p.memory_bytes):>8}  {p.device}"
                         + (f" ({p.gpu_key}={p.gpu_value})" if p.gpus else ""))
        total = plan.total
        lines += [f"  {'total':<26} {'':<20} {sum(p.count for p in plan.placements):>5} "
                  f"{total['CPU']:>6g} {total['GPU']:>6g} {_gib(total['memory']):>8}", ""]
    peak = {name: max(plan.total[name] for plan in plans) for name in ("CPU", "GPU", "memory")}
    lines.append(f"largest stage (stages run one after another): {peak['CPU']:g} CPU, "
                 f"{peak['GPU']:g} GPU, {_gib(peak['memory'])} GiB memory")
    return "\n".join(lines)


def check_plan(plans: Sequence[StagePlan]) -> None:
    """Raise ``ResourceShortfall`` (naming the stage and what to change) when a stage does not
    fit the connected Ray cluster; call after ``init_ray``, before any work."""
    from afmrl.utils.ray_utils import preflight

    for plan in plans:
        preflight(plan.placements, f"stage {plan.stage}")


def join_checked(config: AfmrlConfig, stages: Sequence[str] | None = None) -> None:
    """Join (or start) the Ray cluster and stop before any work when ``stages`` do not fit it:
    every job starts with this, so a plan the cluster cannot hold fails in seconds with what to
    change instead of hanging on an unschedulable actor."""
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    check_plan(resource_plan(config, stages))


def main(argv: Sequence[str] | None = None) -> int:
    from afmrl.utils.job import parse, parser

    p = parser(__doc__)
    p.add_argument("--stages", default=None,
                   help="comma-separated stages (default: the config's stages)")
    p.add_argument("--check", action="store_true",
                   help="connect to the Ray cluster (ray.address / $RAY_ADDRESS) and check "
                        "that every stage fits it")
    config, args = parse(argv, __doc__, p)
    stages = args.stages.split(",") if args.stages else None
    unknown = [s for s in stages or () if s not in _PLANNED]
    if unknown:
        p.exit(2, f"unknown stages {unknown}; choose from {list(_PLANNED)}\n")
    plans = resource_plan(config, stages)
    print(format_plan(plans))
    if args.check:
        from afmrl.utils.ray_utils import ResourceShortfall, init_ray

        init_ray(config.ray)
        try:
            check_plan(plans)
        except ResourceShortfall as error:
            print(f"does not fit: {error}", file=sys.stderr)
            return 1
        print("fits the connected Ray cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

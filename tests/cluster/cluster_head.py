"""Test helper: a real `ray start --head` cluster a test module owns (never `ray stop`: it would
kill every Ray cluster on the machine; the processes of this cluster are found by its temp dir)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Head:
    dashboard: str  # http://127.0.0.1:<port>: `ray job submit` / `serve deploy` address
    gcs: str        # 127.0.0.1:<port>: what a driver's ray.init(address=...) joins
    env: dict[str, str]
    temp_dir: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_processes(marker: str) -> list[int]:
    """PIDs whose command line names this cluster's temp dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(
                    errors="ignore"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@contextlib.contextmanager
def ray_head(num_cpus: int = 4, **extra_env: str) -> Iterator[Head]:
    """Start a head with every port explicit (another local cluster holds the defaults)."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: socket paths are limited
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_ADDRESS": "", **extra_env}
    ports = {f"--{name}": free_port() for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port")}
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}",
                        f"--num-cpus={num_cpus}", f"--dashboard-port={dashboard}",
                        "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                        f"--temp-dir={temp_dir}", "--disable-usage-stats",
                        *(f"{flag}={value}" for flag, value in ports.items())],
                       check=True, env=env, capture_output=True, timeout=180)
        yield Head(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{port}", env, temp_dir)
    finally:
        for pid in _own_processes(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)

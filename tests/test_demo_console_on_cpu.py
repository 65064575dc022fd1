"""The demo experience on the mini profile, as a person sees it in a terminal: stage lines with
elapsed time and ETA, training progress lines, no library noise, and Ctrl-C while serving stops
the whole thing (search app and the job's own Ray cluster) within 30 s, with the finished stages
saved for a rerun."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from afmrl.config import REPO_ROOT
from afmrl.utils.console import NOISE_MARKERS, noise_lines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_mini_pipeline_console_and_ctrl_c_while_serving(shared_data, tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "afmrl.cli", "pipeline", "--config",
               str(REPO_ROOT / "configs" / "mini.yaml"), f"run_dir={tmp_path}",
               f"data.root={shared_data}", f"serve.port={port}", "models.text_tower=tiny",
               "extract.sft_steps=40", "train.epochs=2", "rl.max_steps=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        for line in driver.stdout:
            lines.append(line.rstrip("\n"))
            if "serving; Ctrl-C to stop" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 1500
        while not serving.wait(5) and driver.poll() is None and time.monotonic() < deadline:
            pass
        assert serving.is_set(), "the pipeline never reached serving:\n" + \
            "\n".join(lines[-60:])
        answer = requests.post(f"http://127.0.0.1:{port}/search",
                               json={"text": "orange juice", "k": 3}, timeout=60)
        assert answer.status_code == 200, answer.text

        interrupted = time.monotonic()
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground job
        code = driver.wait(timeout=30)
        stopped_in = time.monotonic() - interrupted
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        reader.join(timeout=5)
    console = "\n".join(lines)
    assert code == 130, console[-3000:]
    assert stopped_in < 30
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert "interrupted" in console and "rerun the same command to resume" in console

    # State saved: every stage is recorded, so a rerun resumes instead of redoing work.
    state = json.loads((tmp_path / "pipeline_state.json").read_text())
    assert set(state["stages"]) == {"extract", "train", "rar", "cit", "index", "serve"}

    # Readable: a start and an end line per stage with elapsed time and the ETA of the rest,
    # training progress lines, the results table; no line from the known noise sources.
    for number, stage in enumerate(["extract", "train", "rar", "cit", "index", "serve"], 1):
        assert f"[{number}/6] {stage} started" in console
        assert f"[{number}/6] {stage} finished in" in console
    assert "ETA" in console and "for the remaining stages" in console
    progress = [line for line in lines if "AGCL agcl: epoch" in line and "samples/s" in line]
    assert progress, console[-3000:]
    assert "| agcl |" in console
    noise = list(noise_lines(lines))
    assert not noise, f"library noise on the console ({NOISE_MARKERS}):\n" + "\n".join(noise)

"""The main job end to end on the mini subset (items_mini_packages.csv), as a user runs it: the
driver is killed once in the middle of the train stage and the rerun resumes to the same
artefacts; every stage's artefacts exist and load; the results table holds a number for every
model; the endpoint answers a real query; Ctrl-C while serving stops the job and its own Ray
cluster within 30 s; the console shows stage lines with elapsed time and ETA, training progress
and no library noise; the MLflow run tree is complete (a child run per stage and per AGCL
variant); and a rerun of the finished pipeline reruns no finished stage.

One test, because every part needs the same multi-minute pipeline run."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from afmrl.config import REPO_ROOT, load_config
from afmrl.layout import RunLayout
from afmrl.tracking import run_tree
from afmrl.utils.console import NOISE_MARKERS, OUTPUT_ENV, QUIET_ENV, noise_lines

MODELS = ("zero_shot", "infonce", "agcl", "agcl_rar_attributes", "cit")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pipeline(overrides, wait: bool = False) -> subprocess.Popen:
    """The job in its own process group (it owns its local Ray cluster and Serve app); with
    ``wait`` it keeps serving until Ctrl-C, else it exits after the serve stage's smoke query.
    Its environment lacks the quiet and output variables an earlier test may have exported,
    so the console it prints is the one a user's shell gets."""
    command = [sys.executable, "-m", "afmrl.cli", "pipeline", "--config",
               str(REPO_ROOT / "configs" / "mini.yaml"), *([] if wait else ["--no-wait"]),
               *overrides]
    env = {key: value for key, value in os.environ.items()
           if key not in QUIET_ENV and key not in OUTPUT_ENV and key != "RAY_ADDRESS"}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def collect(process: subprocess.Popen, lines: list[str],
            serving: threading.Event | None = None) -> threading.Thread:
    """Read the job's output as it comes (an unread pipe would block the job once full)."""
    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if serving is not None and "serving; Ctrl-C to stop" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def query_while_serving(process: subprocess.Popen, port: int, timeout: float = 1800
                        ) -> tuple[list[str], requests.Response, float]:
    """Wait until the job serves, POST a query to its endpoint, then Ctrl-C it (the endpoint
    lives only as long as the job that owns the Ray cluster). Returns its output lines, the
    answer and the seconds Ctrl-C took to stop the job."""
    lines: list[str] = []
    serving = threading.Event()
    reader = collect(process, lines, serving)
    deadline = time.monotonic() + timeout
    while not serving.wait(5) and process.poll() is None and time.monotonic() < deadline:
        pass
    try:
        assert serving.is_set(), "the pipeline never reached serving:\n" + "\n".join(lines[-60:])
        answer = requests.post(f"http://127.0.0.1:{port}/search",
                               json={"text": "orange juice", "k": 3}, timeout=60)
    finally:
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground job
        try:
            process.wait(timeout=60)
        finally:
            stopped_in = time.monotonic() - interrupted
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            reader.join(timeout=10)
    assert process.returncode == 130, "\n".join(lines[-60:])
    return lines, answer, stopped_in


def finish(process: subprocess.Popen, timeout: float = 1800) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-5000:]
    return out


def stage_records(layout: RunLayout) -> dict:
    return json.loads(layout.pipeline_state.read_text())["stages"]


@pytest.mark.slow
# Three pipeline runs: 632-848 s on a 2-core machine (alone / inside the full suite), over 900 s
# (the suite's per-test limit) on a slower one; its own waits allow 1,800 s per run.
@pytest.mark.timeout(1800)
def test_pipeline_mini_end_to_end(shared_data, tmp_path):
    port = free_port()
    overrides = [f"run_dir={tmp_path}", f"data.root={shared_data}", f"serve.port={port}",
                 "models.text_tower=tiny", "extract.sft_steps=60", "train.epochs=2",
                 "train.per_device_batch_size=2", "train.checkpoint_every_steps=1",
                 "rl.max_steps=2"]
    config = load_config(REPO_ROOT / "configs" / "mini.yaml", overrides)
    layout = RunLayout.of(config)

    # 1. Kill the driver (and the cluster it owns) once the train stage has a checkpoint. Ray
    # Train workers outlive a SIGKILLed driver by about a second, and the mini run with its
    # default batch trains one step per epoch: the whole stage finished before they died. Small
    # batches and a checkpoint per step leave ~13 steps after the first checkpoint.
    first = pipeline(overrides)
    first_lines: list[str] = []
    first_reader = collect(first, first_lines)
    checkpoint = layout.train("infonce") / "checkpoints" / "latest"
    deadline = time.time() + 1500
    while not checkpoint.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert checkpoint.is_file(), "the train stage never checkpointed: nothing was interrupted"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    first_reader.join(timeout=10)
    before = stage_records(layout)
    assert set(before) == {"extract"}, before  # killed mid-train
    attributes = (layout.attributes("sft") / "summary.json").read_text()

    # 2. The rerun resumes (extract is not rerun, training continues from its checkpoint) and
    # serves until Ctrl-C; the endpoint answers a real query with the documented schema.
    lines, response, stopped_in = query_while_serving(pipeline(overrides, wait=True), port)
    out = "\n".join(lines)
    records = stage_records(layout)
    assert records["extract"] == before["extract"]
    assert (layout.attributes("sft") / "summary.json").read_text() == attributes
    assert (layout.train("infonce") / "resumes.log").read_text().startswith("resumed from step_")
    assert set(config.stages) <= set(records)

    # Artefacts of every stage exist and load.
    from transformers import AutoModelForImageTextToText

    from afmrl.extract.stage import load_attributes
    from afmrl.models.embedders import load_embedder
    from afmrl.utils.io import fingerprint_tree

    for tag in ("sft", "rar"):
        assert len(load_attributes(layout.attributes(tag))) == 186 + 31  # + the shop titles
    for generator in (layout.generator_sft, layout.generator_rar):
        AutoModelForImageTextToText.from_pretrained(str(generator))
    for tag in ("infonce", "agcl", "cit"):
        load_embedder(layout.embedder(tag))
    manifest = json.loads((layout.index / "manifest.json").read_text())
    assert manifest["item_count"] == 31 and manifest["layout"] == "sharded"
    assert manifest["model_hash"] == fingerprint_tree(layout.embedder("cit"))

    # The results table: a number for every model the run produced.
    table = json.loads(layout.results.read_text())
    rows = {row["system"]: row for row in table["rows"]}
    assert set(MODELS) <= set(rows), sorted(rows)
    for name in MODELS:
        assert math.isfinite(rows[name]["recall_at_1"]), name
        assert math.isfinite(rows[name]["within_group/recall_at_1"]), name
        assert math.isfinite(rows[name]["text_queries/recall_at_1"]), name
        assert rows[name]["num_queries"] == 155 + 31  # the mini subset's test photos + shop titles
    assert "| cit |" in out and "endpoint:" in out

    # The served endpoint answered a real query with the documented schema.
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["hits"]) == 3 and body["query_text"]
    assert {"item_id", "score", "title", "attributes"} <= set(body["hits"][0])

    # Ctrl-C while serving stopped the search app and the job's own Ray cluster in time.
    assert stopped_in < 30, stopped_in
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert "interrupted" in out and "rerun the same command to resume" in out

    # A readable console: a start and an end line per stage with elapsed time (extract in the
    # killed run, the rest in the resumed one) and the ETA of the rest, training progress lines,
    # the results table; no line from the known noise sources in either run.
    first_out = "\n".join(first_lines)
    assert "[1/6] extract started" in first_out and "[1/6] extract finished in" in first_out
    for number, stage in enumerate(["train", "rar", "cit", "index", "serve"], 2):
        assert f"[{number}/6] {stage} started" in out, out[-3000:]
        assert f"[{number}/6] {stage} finished in" in out, out[-3000:]
    assert "ETA" in out and "for the remaining stages" in out
    assert [line for line in lines if "AGCL agcl: epoch" in line and "samples/s" in line]
    # once each: Ray Train's print patch printed every worker line twice
    assert len([line for line in lines if "AGCL agcl: epoch 1/" in line and "done" in line]) == 1
    assert "| agcl |" in out
    noise = list(noise_lines(first_lines + lines))
    assert not noise, f"library noise on the console ({NOISE_MARKERS}):\n" + "\n".join(noise)

    # The MLflow run tree: one parent, a child per stage, a grandchild per AGCL variant (the
    # killed driver's runs stay RUNNING; the finished ones are the resumed run's).
    runs = run_tree(config)
    parents = [r for r in runs if r["name"] == "pipeline"]
    assert len(parents) == 1
    finished = [r for r in runs if r["status"] == "FINISHED"]
    children = {r["name"]: r["run_id"] for r in finished if r["parent"] == parents[0]["run_id"]}
    assert set(config.stages) <= set(children)
    variants = {r["name"]: r["parent"] for r in finished if r["name"].startswith("train_")}
    assert variants["train_infonce"] == variants["train_agcl"] == children["train"]
    assert variants["train_cit"] == children["cit"]

    # 3. A rerun of the finished pipeline reruns no finished stage (same run ids, timings).
    finish(pipeline(overrides))
    again = stage_records(layout)
    for stage in set(config.stages) - {"serve"}:
        assert again[stage] == records[stage], stage
    assert len([r for r in run_tree(config) if r["name"] == "pipeline"]) == 1

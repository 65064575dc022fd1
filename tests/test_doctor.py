"""`afmrl doctor` says what is wrong and what to do, and `make demo` stops on its advice;
`afmrl pipeline --dry-run` prints the stages, plan and estimate without running anything."""
from __future__ import annotations

import subprocess
import sys

from afmrl.cli import main as cli
from afmrl.config import REPO_ROOT, load_config
from afmrl.doctor import estimate_stage_seconds, run_checks

DEMO = str(REPO_ROOT / "configs" / "demo.yaml")


def test_a_missing_data_root_fails_with_advice(tmp_path, capsys):
    code = cli(["doctor", "--config", DEMO, "--skip", "shim,vllm,ray",
                f"data.root={tmp_path / 'nowhere'}"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAIL  shared data: missing: {tmp_path / 'nowhere'}/grocery_store/items.csv" in out
    assert "-> put the data sets under" in out and "data.root=PATH" in out
    assert "1 check(s) failed: shared data" in out


def test_the_light_checks_pass_on_this_machine(shared_data, capsys):
    assert cli(["doctor", "--config", DEMO, "--skip", "shim,vllm,ray",
                f"data.root={shared_data}"]) == 0
    out = capsys.readouterr().out
    assert "ok    shared data" in out and "all checks passed" in out


def test_memory_check_compares_with_the_profile():
    config = load_config(None, ["train.num_workers=4096"])
    [memory] = [c for c in run_checks(config, skip={"python", "versions", "disk", "data",
                                                    "shim", "vllm", "ray"})]
    assert not memory.ok and "lower train.num_workers" in memory.advice


def test_make_demo_runs_the_doctor_first_and_stops_on_failure(tmp_path):
    """The demo target of the Makefile: doctor, then the pipeline (never reached here)."""
    done = subprocess.run(["make", "-n", "demo"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    commands = [line for line in done.stdout.splitlines() if "afmrl.cli" in line]
    assert "doctor --config configs/demo.yaml" in commands[0]
    assert "pipeline --config configs/demo.yaml" in commands[1]


def test_demo_profile_is_estimated_under_15_minutes(shared_data):
    demo = estimate_stage_seconds(load_config(DEMO, [f"data.root={shared_data}"]))
    full = estimate_stage_seconds(load_config(REPO_ROOT / "configs" / "full.yaml",
                                              [f"data.root={shared_data}"]))
    assert set(demo) == {"extract", "train", "rar", "cit", "index", "serve"}
    assert sum(demo.values()) < 15 * 60 < sum(full.values())


def test_dry_run_prints_stages_plan_and_estimate_and_runs_nothing(shared_data, tmp_path):
    done = subprocess.run([sys.executable, "-m", "afmrl.cli", "pipeline", "--config", DEMO,
                           "--dry-run", f"run_dir={tmp_path / 'run'}",
                           f"data.root={shared_data}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for number, stage in enumerate(["extract", "train", "rar", "cit", "index", "serve"], 1):
        assert f"[{number}/6] {stage}  (~" in done.stdout
    assert "train: {" in done.stdout and "largest stage" in done.stdout
    assert "estimated time on a 2-core CPU machine" in done.stdout
    assert not (tmp_path / "run" / "pipeline_state.json").exists()

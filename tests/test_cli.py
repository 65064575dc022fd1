"""The `afmrl` CLI: help a newcomer can follow, config helpers, tiny models, bad input."""
import subprocess
import sys

from afmrl.cli import JOBS, main
from afmrl.config import REPO_ROOT


def test_help_lists_every_job(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in JOBS:
        if (REPO_ROOT / "jobs" / f"{JOBS[command]}.py").is_file():
            assert f"afmrl {command}" in out


def test_every_job_has_a_main_and_help(capsys):
    import pytest

    from afmrl.cli import _job_main

    for job in JOBS.values():
        if not (REPO_ROOT / "jobs" / f"{job}.py").is_file():
            continue
        with pytest.raises(SystemExit) as exit_info:
            _job_main(job)(["--help"])
        assert exit_info.value.code == 0
        assert "--config" in capsys.readouterr().out


def test_config_reference_doc_is_in_sync(capsys):
    assert main(["config", "reference"]) == 0
    generated = capsys.readouterr().out.strip()
    committed = (REPO_ROOT / "docs" / "config_reference.md").read_text()
    assert generated in committed, "regenerate: afmrl config reference > docs/config_reference.md"
    assert str(REPO_ROOT.parent) not in generated, "the reference must not depend on the checkout path"


def test_bad_config_exits_2_with_message(capsys):
    assert main(["config", "show", "train.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "afmrl.cli", "train", "train.epochs=x"],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2 and "expected an integer" in result.stderr


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2


def test_models_tiny_is_deterministic(tmp_path):
    from afmrl.utils.io import sha256_tree

    assert main(["models", "tiny", "--out", str(tmp_path / "a")]) == 0
    assert main(["models", "tiny", "--out", str(tmp_path / "b")]) == 0
    for name in ("tiny-qwen2-vl", "tiny-vision", "tiny-text"):
        assert sha256_tree(tmp_path / "a" / name) == sha256_tree(tmp_path / "b" / name)

"""The `afmrl` CLI: help a newcomer can follow, config helpers, tiny models, bad input."""
import re
import subprocess
import sys

import pytest

from afmrl.cli import JOBS, main
from afmrl.config import REPO_ROOT


def listed_commands(capsys) -> list[str]:
    """Every command the top-level help advertises (`afmrl <command> ...` lines)."""
    assert main(["--help"]) == 0
    return sorted(set(re.findall(r"^  afmrl (\w[\w-]*)", capsys.readouterr().out, re.M)))


def exit_code(call) -> int:
    """A command's status whether it returns it or exits with it (argparse's --help exits)."""
    try:
        return call() or 0
    except SystemExit as exit_info:
        return exit_info.code or 0


def test_help_lists_every_job(capsys):
    commands = listed_commands(capsys)
    # eval (#12) is a job; catalog and export are commands of their own: all must be listed.
    assert set(JOBS) | {"catalog", "export", "models", "config"} <= set(commands)


def test_every_listed_command_has_help(capsys):
    for command in listed_commands(capsys):
        assert exit_code(lambda: main([command, "--help"])) == 0, command
        assert "usage:" in capsys.readouterr().out, command


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_job_checks_its_config_without_running(command, capsys):
    """--print-config validates the config with overrides and exits before any work starts."""
    from afmrl.cli import _job_main

    job = _job_main(JOBS[command])
    assert exit_code(lambda: job(["--print-config", "train.epochs=7"])) == 0
    assert "epochs: 7" in capsys.readouterr().out
    assert exit_code(lambda: job(["--print-config", "train.epochs=x"])) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert exit_code(lambda: main(["config", "show", "train.epochs=7"])) == 0


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

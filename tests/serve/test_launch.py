"""launch() itself is exercised by the live_app fixture; here: its helpers and the job's checks."""
from __future__ import annotations

import importlib.util

import pytest

from afmrl.config import REPO_ROOT, ServeConfig
from afmrl.layout import RunLayout
from afmrl.serve.launch import base_url, curl_example, default_generator, wait_healthy


def serve_job():
    spec = importlib.util.spec_from_file_location("afmrl_jobs_serve",
                                                  REPO_ROOT / "jobs" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_best_generator_of_a_run_is_chosen(tmp_path):
    layout = RunLayout(tmp_path)
    assert default_generator(layout) is None
    layout.generator_sft.mkdir(parents=True)
    assert default_generator(layout) == layout.generator_sft
    layout.generator_rar.mkdir()
    assert default_generator(layout) == layout.generator_rar


def test_urls_and_the_printed_curl_example():
    assert base_url(ServeConfig(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    assert "Authorization" not in curl_example("http://h:1", ServeConfig())
    assert "Bearer $AFMRL_TOKEN" in curl_example("http://h:1", ServeConfig(auth_token="t"))


def test_waiting_for_a_dead_endpoint_times_out_with_the_reason():
    with pytest.raises(TimeoutError, match="not healthy within"):
        wait_healthy("http://127.0.0.1:9", ServeConfig(), timeout_s=1.0)


def test_the_serve_job_refuses_a_missing_index(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        serve_job().main([f"run_dir={tmp_path}"])
    assert exit_.value.code == 2
    assert "run `afmrl index` first" in capsys.readouterr().err


"""The console: stage lines with elapsed time and ETA, progress lines, tables, noise silenced at
its source (and back with --verbose), and Ctrl-C that reaches our handler."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest

from afmrl.utils.console import (OUTPUT_ENV, QUIET_ENV, Interrupted, StageClock, TrainProgress,
                                 format_seconds, format_table, install_interrupt_handler,
                                 noise_lines)


def test_stage_lines_carry_elapsed_time_and_the_eta_of_the_remaining_stages():
    lines = []
    clock = StageClock(["extract", "train", "serve"], {"extract": 60, "train": 600, "serve": 30},
                       emit=lines.append)
    clock.start("extract")
    clock.end("extract")
    clock.skip("train")
    assert lines[0].startswith("[1/3] extract started (expect ~1m00s); elapsed 0s")
    assert lines[1].startswith("[1/3] extract finished in 0s; elapsed 0s")
    assert lines[1].endswith("ETA 10m30s for the remaining stages")
    assert lines[2] == "[2/3] train: done earlier, skipped"
    unknown = StageClock(["a", "b"], {}, emit=lines.append)
    unknown.start("a")
    unknown.end("a")
    assert lines[-1].endswith("ETA unknown")


def test_format_seconds_and_tables():
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
    table = format_table([{"model": "agcl", "recall_at_1": 0.1234}, {"model": "infonce",
                                                                     "recall_at_1": 0.5}])
    assert table.splitlines() == ["model    recall_at_1", "-------  -----------",
                                  "agcl     0.123      ", "infonce  0.500      "]


def test_train_progress_prints_step_loss_rate_and_eta(capsys):
    progress = TrainProgress("AGCL agcl", total_steps=4, first_step=0, world_size=2, every_s=0)
    progress.update(0, 2, 1, [2.0, 1.0], batch_size=8)
    line = capsys.readouterr().out.strip()
    assert line.startswith("AGCL agcl: epoch 1/2 step 1/4 (25%) loss 1.5000 ")
    assert "samples/s ETA" in line


QUIET_FAISS = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
               "from afmrl.utils.console import setup_console; setup_console({verbose}); "
               "import faiss; import warnings; warnings.warn('the PreemptionWatcher argument x');"
               "import torch._library.triton as triton;"  # torch resets log levels on import
               "triton.logger.warning('Triton not available, find_triton_kernels = []');"
               "import matplotlib.font_manager")  # an empty MPLCONFIGDIR: it builds its cache


@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_is_silenced_at_its_source_and_back_with_verbose(verbose, tmp_path):
    # A fresh environment: an earlier test in this process may have exported the quiet one
    # (e.g. TORCH_LOGS), which the child would inherit even in verbose mode.
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env["MPLCONFIGDIR"] = str(tmp_path)  # as on a fresh machine, where the run report draws
    done = subprocess.run([sys.executable, "-c", QUIET_FAISS.format(verbose=verbose)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    noise = list(noise_lines(done.stderr.splitlines()))
    if verbose:
        assert any("faiss" in line.lower() for line in noise)
        assert any("PreemptionWatcher" in line for line in noise)
        assert any("Triton not available" in line for line in noise)
        assert any("generated new fontManager" in line for line in noise)
    else:
        assert noise == []


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_train_workers_keep_the_builtin_print_also_when_verbose(verbose, monkeypatch):
    """Ray Train's print patch duplicates every worker line: it is off in the driver's
    environment (a local cluster's workers inherit it) and in every job's worker env."""
    from afmrl.utils.console import ray_runtime_env, setup_console

    for key in (*OUTPUT_ENV, *QUIET_ENV, "AFMRL_VERBOSE"):
        monkeypatch.delenv(key, raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # setup_console sets it
    setup_console(verbose=verbose)
    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert ray_runtime_env()["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert ("TRANSFORMERS_VERBOSITY" in os.environ) is not verbose  # quiet only when not verbose


def test_ctrl_c_raises_interrupted_even_after_ray_train_registered_its_handler():
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        install_interrupt_handler()
        with pytest.raises(Interrupted):
            signal.raise_signal(signal.SIGINT)
        # What fit() does: our replacement registers a handler that raises, not one that
        # swallows the signal or exits 0.
        DataParallelTrainer._register_sigint_handler(None, controller=None)
        with pytest.raises(Interrupted, match="during training"):
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_eval_metrics_print_as_a_table_per_benchmark():
    from afmrl.utils.console import metrics_table

    text = metrics_table({"train_loss_epoch": 1.25, "test/recall_at_1": 0.1,
                          "test/recall_at_5": 0.3, "pricerunner/recall_at_1": 0.45,
                          "test/mrr": 0.2})
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0] == "  train_loss_epoch 1.25"
    assert lines[1].split() == ["benchmark", "recall_at_1", "recall_at_5"]
    assert lines[3].split() == ["test", "0.100", "0.300"]
    assert lines[4].split() == ["pricerunner", "0.450"]


def test_lines_no_setting_turns_off_are_dropped_from_the_stream(ray_local, capsys):
    """Lines Ray streams from its workers that no setting turns off (Ray's announcement of the
    worker log level, DeepSpeed's print in every training worker, Serve's shutdown retry): the
    driver's stream drops them and prints the rest of the batch."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    streamed = ["[2026-11-30 20:17:03,317 I 1 1] logging.cc:303: Set ray log level from "
                "environment variable RAY_BACKEND_LOG_LEVEL to 3",
                "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
                "Task ServeController.graceful_shutdown failed. There are infinite retries "
                "remaining, so the task will be retried."]
    dispatcher.emit({"ip": "192.0.2.9", "localhost": "192.0.2.9", "pid": 4242, "job": "",
                     "is_err": False, "task_name": "t", "actor_name": None,
                     "lines": [*streamed, "a worker's own line"]})
    printed = "".join(capsys.readouterr())
    assert "a worker's own line" in printed
    assert not [line for line in streamed if line in printed]
    # Ray's error channel prints through the module's printer, not the dispatcher: a task
    # retried on a killed actor (Serve's graceful_shutdown after Ctrl-C) arrives that way.
    import ray._private.worker as ray_worker

    ray_worker.print_to_stdstream({"lines": [streamed[2], "an error worth reading"],
                                   "pid": "raylet", "is_err": False}, ignore_prefix=False)
    printed = "".join(capsys.readouterr())
    assert "an error worth reading" in printed and streamed[2] not in printed


def test_only_streamed_log_level_announcements_count_as_noise():
    announcement = ("[2026-11-30 20:17:03,317 I 1 1] logging.cc:303: Set ray log level from "
                    "environment variable RAY_BACKEND_LOG_LEVEL to 3")
    streamed = [f"\x1b[33m(raylet)\x1b[0m {announcement}", f"(TrainController pid=7) {announcement}"]
    assert list(noise_lines([announcement, *streamed, "loss 0.1"])) == streamed

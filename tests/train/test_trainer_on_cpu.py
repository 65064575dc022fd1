"""AGCL on a real Ray Train worker group with DeepSpeed (gloo, 2 CPU workers)."""
import os
import signal
import threading
import time

import mlflow
import pytest

from afmrl.config import load_config
from afmrl.models.embedders import load_embedder
from afmrl.tracking import Tracker
from afmrl.train.stage import run_agcl
from afmrl.train.trainer import latest_checkpoint


def _config(tmp_path, *extra):
    return load_config(None, [
        f"run_dir={tmp_path}", "data.grocery_items_file=items_mini_packages.csv",
        "models.text_tower=tiny", "train.image_size=32", "train.per_device_batch_size=4",
        "train.pair_splits=[catalog]", "eval.pricerunner_clusters=0", "train.lr=1e-3",
        "train.cpus_per_worker=1", *extra])


@pytest.mark.parametrize("embedder, zero_stage", [("dual", 2), ("dual", 3), ("vlm2vec", 2)])
def test_agcl_trains_exports_and_logs(ray_local, mini_catalog, tmp_path, embedder, zero_stage):
    config = _config(tmp_path, f"train.zero_stage={zero_stage}", "train.epochs=2",
                     f"models.embedder={embedder}")
    tracker = Tracker(config)
    with tracker.run("train"):
        result = run_agcl(config, None, "agcl", tracker, mini_catalog)
        run_id = mlflow.active_run().info.run_id
    model = load_embedder(result.embedder)
    assert model.kind == embedder
    metrics = mlflow.tracking.MlflowClient(tracker.uri).get_run(run_id).data.metrics
    assert "grocery/recall_at_1" in metrics and "samples_per_s_per_worker" in metrics
    assert 0.0 <= metrics["grocery/recall_at_10"] <= 1.0
    # The driver gets the last epoch's metrics (Ray Train v2 drops checkpoint-less reports).
    assert result.metrics["epoch"] == 1 and result.metrics["samples_per_s_per_worker"] > 0
    assert result.metrics["grocery/recall_at_1"] == metrics["grocery/recall_at_1"]
    # A second call finds the export and does not retrain, and still knows its metrics.
    again = run_agcl(config, None, "agcl", None, mini_catalog)
    assert again.seconds == 0.0 and again.metrics == result.metrics


def test_killed_worker_resumes_and_finishes(ray_local, mini_catalog, tmp_path):
    config = _config(tmp_path, "train.epochs=4", "train.checkpoint_every_steps=1",
                     "train.zero_stage=2")
    out = tmp_path / "train" / "agcl"
    killed = []

    def kill_rank_1_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline and latest_checkpoint(out / "checkpoints") is None:
            time.sleep(0.2)
        pid_file = out / "workers" / "rank_1.pid"
        if pid_file.is_file():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            killed.append(latest_checkpoint(out / "checkpoints"))

    killer = threading.Thread(target=kill_rank_1_after_first_checkpoint)
    killer.start()
    result = run_agcl(config, None, "agcl", None, mini_catalog)
    killer.join()
    assert killed, "no worker was killed: the test proved nothing"
    assert (out / "resumes.log").read_text().startswith("resumed from step_")
    assert (result.embedder / "embedder.json").is_file()

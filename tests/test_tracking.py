"""MLflow tracking against a real sqlite store."""
import pytest

from afmrl.config import load_config
from afmrl.tracking import Tracker, WorkerMetricLogger, metric_key, run_tree


@pytest.mark.parametrize("raw, clean", [("Recall@10", "recall_at_10"), ("mAP@10", "map_at_10"),
                                        ("grocery/Recall@1", "grocery/recall_at_1"),
                                        ("loss (train)", "loss_train")])
def test_metric_keys_are_mlflow_safe(raw, clean):
    assert metric_key(raw) == clean


def test_parent_and_child_runs_with_provenance(tmp_path):
    import mlflow

    config = load_config(None, [f"run_dir={tmp_path}"])
    tracker = Tracker(config)
    assert tracker.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracker.run("pipeline") as parent:
        with tracker.run("extract", nested=True):
            tracker.log_metrics({"Recall@10": 0.5, "nan": float("nan")}, step=1)
            tracker.log_inputs({"catalog": "abc123"})
    runs = {r["name"]: r for r in run_tree(config)}
    assert runs["extract"]["parent"] == parent.info.run_id
    assert runs["extract"]["metrics"] == {"recall_at_10": 0.5}
    client = mlflow.tracking.MlflowClient(tracker.uri)
    data = client.get_run(parent.info.run_id).data
    assert data.tags["git_sha"] and data.params["train.lr"] == "0.0001"
    child = client.get_run(runs["extract"]["run_id"]).data
    assert child.tags["hash.catalog"] == "abc123"


def test_worker_logger_writes_into_the_drivers_run_by_id(tmp_path):
    config = load_config(None, [f"run_dir={tmp_path}"])
    tracker = Tracker(config)
    with tracker.run("train") as active:
        run_id = active.info.run_id
    # A worker process knows only the URI and the run id (no fluent MLflow state).
    worker = WorkerMetricLogger(tracker.uri, run_id)
    worker.log({"grocery/Recall@1": 0.25, "loss": float("inf"), "skipped": None}, step=3)
    WorkerMetricLogger(None, None).log({"ignored": 1.0}, step=0)  # no run: a no-op
    runs = {r["name"]: r for r in run_tree(config)}
    assert runs["train"]["metrics"] == {"grocery/recall_at_1": 0.25}

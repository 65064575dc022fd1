"""The whole AFMRL pipeline as one tracked, resumable run.

  extract  distil the generator on teacher attributes, label catalog + query photos
  train    AGCL embedder (and the plain-InfoNCE baseline for the ablation table)
  rar      GRPO on the generator, reward = Recall@k of attribute-enriched queries
  cit      the RAR generator relabels everything, AGCL trains again
  index    sharded FAISS index of the catalog with the final embedder
  serve    Ray Serve HTTP search app

One MLflow parent run per pipeline (its id is kept in ``pipeline_state.json`` so a resumed run
logs into the same parent) and a child run per stage. Each finished stage is recorded in the
state file and skipped on resume; every stage is also idempotent on its own (extraction skips
finished rows, training skips an exported embedder, RAR resumes from its checkpoint).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.layout import RunLayout
from afmrl.utils.io import atomic_write_json

log = logging.getLogger("afmrl")


class PipelineState:
    """Finished stages, their outputs and timings, persisted atomically after every stage."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else \
            {"stages": {}, "parent_run_id": None}

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def record(self, stage: str, seconds: float, outputs: dict[str, Any]) -> None:
        self.data["stages"][stage] = {"seconds": round(seconds, 1), **outputs}
        atomic_write_json(self.path, self.data)

    def get(self, stage: str, key: str) -> Any:
        return self.data["stages"].get(stage, {}).get(key)

    def set_parent(self, run_id: str) -> None:
        self.data["parent_run_id"] = run_id
        atomic_write_json(self.path, self.data)


class Pipeline:
    def __init__(self, config: AfmrlConfig, serve_blocking: bool = False):
        from afmrl.data import load_catalog

        self.config = config
        self.layout = RunLayout.of(config)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.state = PipelineState(self.layout.pipeline_state)
        self.catalog = load_catalog(config.data)
        self.serve_blocking = serve_blocking
        self.endpoint: str | None = None

    # -- stages ---------------------------------------------------------------------------------
    def extract(self, tracker) -> dict[str, Any]:
        from afmrl.extract.stage import distilled_generator, extract_all

        generator = distilled_generator(self.config, self.catalog, tracker)
        table = extract_all(self.config, generator, "sft", tracker, self.catalog)
        return {"generator": str(generator), "rows": len(table)}

    def _attributes(self, tag: str) -> pd.DataFrame:
        from afmrl.extract.stage import load_attributes

        return load_attributes(self.layout.attributes(tag))

    def train(self, tracker) -> dict[str, Any]:
        from afmrl.train.stage import ablation_config, run_agcl

        attributes = self._attributes("sft")
        outputs = {}
        for variant in ("infonce", "agcl"):
            result = run_agcl(ablation_config(self.config, variant), attributes, variant,
                              tracker, self.catalog)
            outputs[variant] = str(result.embedder)
        return outputs

    def rar(self, tracker) -> dict[str, Any]:
        from afmrl.rl.grpo import run_rar

        generator = Path(self.state.get("extract", "generator"))
        path = run_rar(self.config, generator, self.layout.embedder("agcl"), self.catalog,
                       self._attributes("sft"), tracker)
        return {"generator": str(path)}

    def cit(self, tracker) -> dict[str, Any]:
        from afmrl.extract.stage import extract_all
        from afmrl.train.stage import run_agcl

        table = extract_all(self.config, self.layout.generator_rar, "rar", tracker, self.catalog)
        result = run_agcl(self.config, table, "cit", tracker, self.catalog)
        return {"embedder": str(result.embedder)}

    def index(self, tracker) -> dict[str, Any]:
        from afmrl.extract.stage import with_attributes
        from afmrl.index.stage import build_catalog_index

        tag = "rar" if self.layout.attributes("rar").is_dir() else "sft"
        catalog = with_attributes(self.catalog, self._attributes(tag))
        path = build_catalog_index(self.config, self.final_embedder(), catalog,
                                   self.layout.index, tracker)
        return {"index": str(path), "attributes": tag}

    def serve(self, tracker) -> dict[str, Any]:
        from afmrl.serve.launch import launch

        generator = self.layout.generator_rar if self.layout.generator_rar.is_dir() else \
            self.layout.generator_sft
        self.endpoint = launch(self.config, self.layout.index, generator,
                               blocking=self.serve_blocking)
        return {"endpoint": self.endpoint}

    def final_embedder(self) -> Path:
        for tag in ("cit", "agcl"):
            if (self.layout.embedder(tag) / "embedder.json").is_file():
                return self.layout.embedder(tag)
        raise FileNotFoundError("no trained embedder; run the train stage first")

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import mlflow

        from afmrl.tracking import Tracker

        tracker = Tracker(self.config)
        stages: dict[str, Callable] = {name: getattr(self, name) for name in self.config.stages}
        with tracker.run("pipeline", run_id=self.state.data["parent_run_id"],
                         tags={"afmrl.stage": "pipeline"}) as parent:
            self.state.set_parent(parent.info.run_id)
            for number, (name, stage) in enumerate(stages.items(), 1):
                if self.state.done(name) and name != "serve":
                    log.info("[%d/%d] %s: done earlier, skipped", number, len(stages), name)
                    continue
                log.info("[%d/%d] %s ...", number, len(stages), name)
                started = time.perf_counter()
                with tracker.run(name, nested=True, tags={"afmrl.stage": name}) as child:
                    outputs = stage(tracker)
                    seconds = time.perf_counter() - started
                    tracker.log_metrics({"stage_seconds": seconds})
                self.state.record(name, seconds, {**outputs, "run_id": child.info.run_id})
                log.info("[%d/%d] %s finished in %.0fs", number, len(stages), name, seconds)
            results = self.results_table()
            if results:
                tracker.log_table_json(results, "results/grocery_table.json")
                for row in results:
                    tracker.log_metrics({f"{row['model']}/{k}": v for k, v in row.items()
                                         if k != "model"})
            return {"parent_run_id": parent.info.run_id, "results": results,
                    "mlflow": tracker.uri, "endpoint": self.endpoint,
                    "timings": {k: v["seconds"] for k, v in self.state.data["stages"].items()}}

    def results_table(self) -> list[dict[str, Any]]:
        """Recall@1/5/10 on the grocery benchmark for every model the run produced (the paper's
        ablation shape): untrained, plain InfoNCE, AGCL, AGCL + RAR attributes, CIT."""
        from afmrl.extract.stage import with_attributes
        from afmrl.models.embedders import build_embedder, load_embedder
        from afmrl.train.data import grocery_benchmark
        from afmrl.train.evaluation import evaluate_model

        if self.config.data.catalog != "grocery":
            return []
        keys = self.config.extract.attribute_keys
        rows = []

        def measure(name: str, model, tag: str | None) -> None:
            catalog = self.catalog if tag is None else \
                with_attributes(self.catalog, self._attributes(tag))
            benchmark = grocery_benchmark(catalog, keys, with_attributes=tag is not None)
            metrics = evaluate_model(model, benchmark, (1, 5, 10))
            rows.append({"model": name, "recall_at_1": metrics["recall_at_1"],
                         "recall_at_5": metrics["recall_at_5"],
                         "recall_at_10": metrics["recall_at_10"],
                         "within_group_recall_at_1": metrics.get("within_group/recall_at_1",
                                                                 float("nan"))})

        have = {tag: (self.layout.embedder(tag) / "embedder.json").is_file()
                for tag in ("infonce", "agcl", "cit")}
        if not any(have.values()):
            return []
        untrained = build_embedder(self.config.models, self.layout.models,
                                   self.config.train.image_size)
        measure("untrained", untrained, "sft")
        if have["infonce"]:
            measure("infonce", load_embedder(self.layout.embedder("infonce")), "sft")
        if have["agcl"]:
            agcl = load_embedder(self.layout.embedder("agcl"))
            measure("agcl", agcl, "sft")
            if self.layout.attributes("rar").is_dir():
                measure("agcl_rar_attributes", agcl, "rar")
        if have["cit"]:
            measure("cit", load_embedder(self.layout.embedder("cit")), "rar")
        return rows


def format_results(summary: dict[str, Any]) -> str:
    lines = ["| model | R@1 | R@5 | R@10 | within-group R@1 |", "|---|---|---|---|---|"]
    for row in summary.get("results", []):
        lines.append(f"| {row['model']} | {row['recall_at_1']:.3f} | {row['recall_at_5']:.3f} | "
                     f"{row['recall_at_10']:.3f} | {row['within_group_recall_at_1']:.3f} |")
    lines.append("")
    lines.append("stage timings (s): " + ", ".join(f"{k} {v}" for k, v in
                                                   summary.get("timings", {}).items()))
    return "\n".join(lines)

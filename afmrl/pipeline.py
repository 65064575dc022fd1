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
from afmrl.utils.console import StageClock, install_interrupt_handler
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
        for variant in ("infonce", "agcl"):  # each variant in its own child run
            with tracker.run(f"train_{variant}", nested=True,
                             tags={"afmrl.stage": "train", "afmrl.variant": variant}):
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
        with tracker.run("train_cit", nested=True,
                         tags={"afmrl.stage": "cit", "afmrl.variant": "cit"}):
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
        from afmrl.eval.run import latest_embedder

        embedder = latest_embedder(self.layout)
        if embedder is None:
            raise FileNotFoundError("no trained embedder; run the train stage first")
        return embedder

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import mlflow

        from afmrl.doctor import estimate_stage_seconds
        from afmrl.report import build_report
        from afmrl.tracking import Tracker

        tracker = Tracker(self.config)
        stages: dict[str, Callable] = {name: getattr(self, name) for name in self.config.stages}
        with tracker.run("pipeline", run_id=self.state.data["parent_run_id"],
                         tags={"afmrl.stage": "pipeline"}) as parent:
            self.state.set_parent(parent.info.run_id)
            clock = StageClock(list(stages), estimate_stage_seconds(self.config, self.catalog))
            for name, stage in stages.items():
                if self.state.done(name) and name != "serve":
                    clock.skip(name)
                    continue
                clock.start(name)
                started = time.perf_counter()
                with tracker.run(name, nested=True, tags={"afmrl.stage": name}) as child:
                    outputs = stage(tracker)
                    seconds = time.perf_counter() - started
                    tracker.log_metrics({"stage_seconds": seconds})
                install_interrupt_handler()  # Ray Train leaves its own SIGINT handler behind
                self.state.record(name, seconds, {**outputs, "run_id": child.info.run_id})
                clock.end(name)
            table = self.results_table()
            if table is not None:
                table.log(tracker, table.write(self.layout.results))
            tracker.log_artifact(build_report(self.config, self.catalog), "report")
            return {"parent_run_id": parent.info.run_id,
                    "results": table.rows if table is not None else [],
                    "results_markdown": table.markdown() if table is not None else "",
                    "mlflow": tracker.uri, "endpoint": self.endpoint,
                    "timings": {k: v["seconds"] for k, v in self.state.data["stages"].items()}}

    def results_table(self):
        """The evaluation table on the ``test`` split for every model the run produced (the
        paper's ablation shape: untrained, plain InfoNCE, AGCL, AGCL + RAR attributes, CIT)
        next to the text baselines; None before any embedder is trained."""
        from afmrl.eval.run import add_dense, labelled_eval_set, trained, untrained_embedder
        from afmrl.eval.table import ZERO_SHOT, EvalTable
        from afmrl.models.embedders import load_embedder

        if not any(trained(self.layout, tag) for tag in ("infonce", "agcl", "cit")):
            return None
        table = EvalTable("test", tuple(self.config.eval.ks))
        has = {tag: self.layout.attributes(tag).is_dir() for tag in ("sft", "rar")}
        try:
            first = labelled_eval_set(self.config, self.catalog, "test",
                                      "sft" if has["sft"] else None)
            relabelled = labelled_eval_set(self.config, self.catalog, "test", "rar") \
                if has["rar"] else first
        except ValueError as error:  # e.g. a catalog without test rows
            table.notes.append(f"no test evaluation: {error}")
            return table
        table.add_baselines(first)
        add_dense(self.config, table, ZERO_SHOT, untrained_embedder(self.config, first), None,
                  first)
        for tag, name, eval_set in (("infonce", "infonce", first), ("agcl", "agcl", first),
                                    ("agcl", "agcl_rar_attributes", relabelled if has["rar"]
                                     else None), ("cit", "cit", relabelled)):
            if eval_set is not None and trained(self.layout, tag):
                embedder = self.layout.embedder(tag)
                add_dense(self.config, table, name, load_embedder(embedder), embedder, eval_set)
        return table


def format_results(summary: dict[str, Any]) -> str:
    lines = [summary.get("results_markdown") or "(no results table: no embedder trained)", ""]
    lines.append("stage timings (s): " + ", ".join(f"{k} {v}" for k, v in
                                                   summary.get("timings", {}).items()))
    return "\n".join(lines)

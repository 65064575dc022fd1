"""Where every artefact of a run lives, in one place (stages, the pipeline and serving agree).

runs/<name>/
  models/               tiny base models, the distilled (sft) and RL-improved (rar) generators
  extract/<generator>/  attributes.parquet per generator (catalog + query photos)
  train/<tag>/          checkpoints/ and embedder/ (consolidated export) per AGCL run
  rar/                  GRPO checkpoints and reward curves
  index/                FAISS shards + manifest
  mlflow.db, mlartifacts/
  pipeline_state.json   finished stages (resume)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from afmrl.config import AfmrlConfig


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, config: AfmrlConfig) -> "RunLayout":
        return cls(config.run_path)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def generator_sft(self) -> Path:
        return self.models / "generator-sft"

    @property
    def generator_rar(self) -> Path:
        return self.models / "generator-rar"

    def attributes(self, generator_tag: str) -> Path:
        return self.root / "extract" / generator_tag

    def train(self, tag: str) -> Path:
        return self.root / "train" / tag

    def embedder(self, tag: str) -> Path:
        return self.train(tag) / "embedder"

    @property
    def rar(self) -> Path:
        return self.root / "rar"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def results(self) -> Path:
        """The pipeline's evaluation table (JSON; .md, .groups.json and .png beside it)."""
        return self.root / "results" / "test.json"

    @property
    def pipeline_state(self) -> Path:
        return self.root / "pipeline_state.json"

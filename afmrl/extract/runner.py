"""Distributed attribute extraction: Ray Data shards the catalog over a pool of engine actors.

Why our own actor class over ``vllm.LLM`` rather than ``ray.data.llm``: on CPU ``ray.data.llm``
needs a placement-group override or it waits forever for a GPU (stack.md), and we need three
things inside the actor anyway: image validation before the engine, schema parsing of every
output, and a durable per-batch write so a killed actor never loses finished rows. The same class
runs the transformers baseline, so the benchmark compares engines on one pipeline.

Resumability: each row's resume key is hash(content_hash, model fingerprint, prompt version).
Actors write every finished batch atomically to ``parts/``; a rerun reads the parts, skips keys
already done, and the final ``attributes.parquet`` is rebuilt from all parts.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from afmrl.config import ExtractConfig, RayConfig
from afmrl.data.images import ImageError, load_image
from afmrl.extract.schema import attribute_text, coverage, parse_attributes
from afmrl.models.processor import PromptItem, extraction_request
from afmrl.utils.device import Placement
from afmrl.utils.io import atomic_path, atomic_write_json

OUTPUT_COLUMNS = ("item_id", "group_id", "split", "content_hash", "resume_key", "model_id",
                  "prompt_version", "raw_output", "attributes", "attribute_text", "parse_error",
                  "input_error", "num_tokens")


def resume_key(content_hash: str, model_id: str, prompt_version: str) -> str:
    return hashlib.sha256(f"{content_hash}|{model_id}|{prompt_version}".encode()).hexdigest()[:32]


class AttributeExtractor:
    """Ray Data actor: one generation engine, one durable part file per finished batch."""

    def __init__(self, model_path: str, model_id: str, config: ExtractConfig, image_size: int,
                 parts_dir: str, cache_root: str, hide_titles: bool = False,
                 placement: Placement | None = None):
        from afmrl.extract.engines import make_engine
        from afmrl.utils.device import torch_device

        device = str(torch_device(placement)) if placement is not None else "cpu"
        self.engine = make_engine(config, model_path, image_size, cache_root, device=device)
        self.config = config
        self.model_id = model_id
        self.image_size = image_size
        self.parts_dir = Path(parts_dir)
        self.hide_titles = hide_titles

    def _request(self, row: pd.Series) -> tuple[str, Any]:
        item = PromptItem(title="" if self.hide_titles else row["title"],
                          text="" if self.hide_titles else row["text"],
                          image_uri=row["image_uri"])
        image = load_image(item.image_uri, self.image_size) if item.image_uri else None
        return extraction_request(item, self.config.attribute_keys), image

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        # A retried batch (its actor died after writing) is read back, never generated again.
        digest = hashlib.sha256("".join(batch["resume_key"]).encode()).hexdigest()[:20]
        part = self.parts_dir / f"part-{digest}.parquet"
        if part.is_file():
            return pd.read_parquet(part)
        started = time.perf_counter()
        requests, positions, input_errors = [], [], [""] * len(batch)
        for position, (_, row) in enumerate(batch.iterrows()):
            if row["error"]:
                input_errors[position] = row["error"]
                continue
            try:
                requests.append(self._request(row))
                positions.append(position)
            except ImageError as error:  # the image broke after validation: record, go on
                input_errors[position] = str(error)
        generated = self.engine.generate(requests) if requests else []
        raw = [""] * len(batch)
        tokens = [0] * len(batch)
        for position, (text, count) in zip(positions, generated):
            raw[position], tokens[position] = text, count
        parsed = [parse_attributes(text, self.config.attribute_keys) if not err else None
                  for text, err in zip(raw, input_errors)]
        out = pd.DataFrame({
            "item_id": batch["item_id"].values, "group_id": batch["group_id"].values,
            "split": batch["split"].values, "content_hash": batch["content_hash"].values,
            "resume_key": batch["resume_key"].values, "model_id": self.model_id,
            "prompt_version": self.config.prompt_version, "raw_output": raw,
            "attributes": [json.dumps(p.values, sort_keys=True) if p else "{}" for p in parsed],
            "attribute_text": [attribute_text(p.values, self.config.attribute_keys) if p else ""
                               for p in parsed],
            "parse_error": [p.error if p else "" for p in parsed],
            "input_error": input_errors, "num_tokens": tokens,
        })
        out["seconds"] = time.perf_counter() - started
        with atomic_path(part) as tmp:
            out.to_parquet(tmp, index=False)
        return out


@dataclass(frozen=True)
class ExtractionResult:
    path: Path
    table: pd.DataFrame
    metrics: dict[str, float]


def _finished(parts_dir: Path) -> pd.DataFrame:
    parts = sorted(parts_dir.glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=[*OUTPUT_COLUMNS, "seconds"])
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def extraction_metrics(table: pd.DataFrame, keys: tuple[str, ...], seconds: float,
                       new_keys: set[str]) -> dict[str, float]:
    """Throughput of this run plus quality of the whole output (MLflow-safe keys)."""
    generated = table[table["input_error"] == ""]
    from afmrl.extract.schema import ParsedAttributes

    parsed = [ParsedAttributes(json.loads(a), e)
              for a, e in zip(generated["attributes"], generated["parse_error"])]
    new_rows = int(table["resume_key"].isin(new_keys).sum())
    metrics = {
        "rows_total": float(len(table)), "rows_new": float(new_rows),
        "rows_per_s": new_rows / seconds if seconds > 0 and new_rows else 0.0,
        "input_errors": float((table["input_error"] != "").sum()),
        "parse_failures": float((generated["parse_error"] != "").sum()),
        "parse_failure_rate": float((generated["parse_error"] != "").mean())
        if len(generated) else 0.0,
    }
    new_tokens = float(table.loc[table["resume_key"].isin(new_keys), "num_tokens"].sum())
    metrics["tokens_per_s"] = new_tokens / seconds if seconds > 0 and new_rows else 0.0
    metrics.update(coverage(parsed, keys))
    return metrics


def run_extraction(catalog: pd.DataFrame, model_path: str | Path, model_id: str,
                   config: ExtractConfig, ray_config: RayConfig, out_dir: str | Path,
                   image_size: int, hide_titles: bool = False,
                   placement: Placement | None = None) -> ExtractionResult:
    """Extract attributes for every catalog row not already done; return the full table.

    ``hide_titles`` extracts from images alone (RAR queries: a shopper's photo has no title).
    ``placement``: the actor pool's resources and device (``afmrl.utils.device``; by default
    ``extraction_actors`` of ``config``).
    """
    import ray.data

    from afmrl.utils.device import extraction_actors
    from afmrl.utils.ray_utils import pool_needs, preflight, stall_deadline

    placement = placement or extraction_actors(config)
    out_dir = Path(out_dir)
    parts_dir = out_dir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    todo = catalog.copy()
    todo["resume_key"] = [resume_key(h, model_id, config.prompt_version)
                          for h in todo["content_hash"]]
    done_keys = set(_finished(parts_dir)["resume_key"])
    todo = todo[~todo["resume_key"].isin(done_keys)]
    started = time.perf_counter()
    if len(todo):
        preflight([placement], f"extraction ({placement.count} actors)")
        # Ray Data restarts a dead actor and retries its batch (max_restarts=-1 by default);
        # batches it had finished are already durable in parts/. from_items builds its blocks
        # (one per batch) here: from_pandas and repartition run tasks outside Ray Data's
        # progress guard, which waited forever when other work held every CPU.
        dataset = ray.data.from_items(todo.reset_index(drop=True).to_dict("records"),
                                      override_num_blocks=-(-len(todo) // config.batch_size))
        labelled = (dataset.map_batches(
            AttributeExtractor, batch_format="pandas", batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(size=placement.count),
            **placement.ray_options(),
            fn_constructor_kwargs={
                "model_path": str(model_path), "model_id": model_id, "config": config,
                "image_size": image_size, "parts_dir": str(parts_dir),
                "cache_root": str(out_dir / "vllm_cache"), "hide_titles": hide_titles,
                "placement": placement}))
        with stall_deadline(labelled, ray_config.call_timeout_s, "extraction",
                            needs=pool_needs(placement, placement.count)):
            labelled.materialize()
    seconds = time.perf_counter() - started
    table = _finished(parts_dir)
    wanted = {resume_key(h, model_id, config.prompt_version) for h in catalog["content_hash"]}
    table = table[table["resume_key"].isin(wanted)]
    table = table.drop_duplicates("resume_key", keep="last")
    order = {item: i for i, item in enumerate(catalog["item_id"])}
    table = table.sort_values("item_id", key=lambda s: s.map(order)).reset_index(drop=True)
    metrics = extraction_metrics(table, config.attribute_keys, seconds, set(todo["resume_key"]))
    path = out_dir / "attributes.parquet"
    with atomic_path(path) as tmp:
        table[list(OUTPUT_COLUMNS)].to_parquet(tmp, index=False)
    atomic_write_json(out_dir / "manifest.json", {"model_id": model_id, "rows": len(table),
                                                  "prompt_version": config.prompt_version,
                                                  "metrics": metrics})
    return ExtractionResult(path, table[list(OUTPUT_COLUMNS)], metrics)

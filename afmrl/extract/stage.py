"""Stage 0 as a unit: resolve the generator (distilled from teacher attributes if configured),
then label the catalog (title + image) and the shopper photos (image only) with attributes."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.data import load_catalog
from afmrl.layout import RunLayout
from afmrl.utils.io import atomic_write_json, fingerprint_tree, sha256_json

log = logging.getLogger("afmrl")


def base_generator(config: AfmrlConfig, catalog: pd.DataFrame) -> Path:
    """The configured generator; 'tiny' is built offline with the catalog's vocabulary."""
    from afmrl.models.embedders import resolve_model_path

    gallery = catalog[catalog["split"] == "catalog"]
    texts = (gallery["title"] + " " + gallery["text"]).tolist()
    return resolve_model_path(config.models.generator, RunLayout.of(config).models,
                              config.models.seed, texts)


def teacher_labels(config: AfmrlConfig, catalog: pd.DataFrame, tracker=None) -> Path:
    """The paper's distillation teacher: ``extract.teacher_model`` labels the catalog items
    (title + image) through the same Ray Data + vLLM extraction as the student, on its own
    tensor-parallel actors (``afmrl.utils.device.teacher_actors``). Writes and returns
    ``extract/teacher/teacher.parquet`` (item_id, attributes) of the rows that parsed."""
    from afmrl.extract.runner import run_extraction
    from afmrl.models.embedders import resolve_model_path
    from afmrl.utils.device import teacher_actors, teacher_extract
    from afmrl.utils.io import atomic_path

    gallery = catalog[catalog["split"] == "catalog"]
    layout = RunLayout.of(config)
    teacher = resolve_model_path(config.extract.teacher_model, layout.models / "teacher",
                                 config.models.seed + 1, (gallery["title"] + " " +
                                                          gallery["text"]).tolist())
    out = layout.attributes("teacher")
    result = run_extraction(gallery, teacher, fingerprint_tree(teacher), teacher_extract(config),
                            config.ray, out / "catalog", config.data.image_size,
                            placement=teacher_actors(config))
    table = result.table
    labelled = table[(table["parse_error"] == "") & (table["input_error"] == "")]
    path = out / "teacher.parquet"
    with atomic_path(path) as tmp:
        labelled[["item_id", "attributes"]].to_parquet(tmp, index=False)
    log.info("teacher %s labelled %d of %d catalog items -> %s", config.extract.teacher_model,
             len(labelled), len(table), path)
    if tracker is not None:
        tracker.log_metrics({f"teacher_{k}": v for k, v in result.metrics.items()})
    return path


def _sft_loop(loop: dict) -> None:
    """The SFT worker (Ray Train): trains on the worker's device, logs into the stage's run."""
    from afmrl.config import config_from_dict
    from afmrl.extract.sft import sft_generator
    from afmrl.tracking import Tracker
    from afmrl.utils.device import sft_workers, train_device

    config = config_from_dict(loop["config"])
    cfg = config.extract
    device = train_device(sft_workers(config))
    tracker = Tracker(config) if loop["run_id"] else None
    with tracker.run("sft", run_id=loop["run_id"]) if tracker else contextlib.nullcontext():
        sft_generator(loop["base"], loop["out"], loop["examples"], cfg.attribute_keys,
                      cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr, config.data.image_size,
                      config.seed, tracker, device=device)


def run_sft(config: AfmrlConfig, base: Path, out: Path, examples: list) -> None:
    """SFT of the generator in a Ray Train worker group (``afmrl.utils.device.sft_workers``),
    like the other training, not in the driver."""
    import mlflow
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from afmrl.utils.console import ray_train_logging
    from afmrl.utils.device import check_workers, sft_workers
    from afmrl.utils.ray_utils import preflight

    workers = sft_workers(config)
    preflight([workers], "generator SFT")
    check_workers(workers, config.ray.call_timeout_s)
    active = mlflow.active_run()
    TorchTrainer(
        _sft_loop,
        train_loop_config={"config": config.to_dict(), "base": str(base), "out": str(out),
                           "examples": examples, "run_id": active.info.run_id if active else None},
        scaling_config=ScalingConfig(**workers.scaling_config()),
        torch_config=TorchConfig(backend="nccl" if workers.gpus else "gloo",
                                 timeout_s=int(config.train.step_timeout_s)),
        run_config=RunConfig(name=f"sft-{out.name}",
                             storage_path=str(RunLayout.of(config).root / "extract" / "ray"),
                             logging_config=ray_train_logging()),
    ).fit()


def teacher_file(config: AfmrlConfig, catalog: pd.DataFrame, tracker=None) -> str | None:
    """Where SFT's teacher attributes come from: the teacher model's labels, else the
    configured file, else (a text catalog) the title rules of the text teacher; None = the
    catalog's own metadata (grocery)."""
    from afmrl.extract.text_teacher import text_teacher_file

    cfg = config.extract
    if cfg.teacher_model:
        return str(teacher_labels(config, catalog, tracker))
    return cfg.teacher_file or text_teacher_file(
        catalog, cfg.attribute_keys, RunLayout.of(config).models / "teacher-text.parquet")


def distilled_generator(config: AfmrlConfig, catalog: pd.DataFrame, tracker=None) -> Path:
    """SFT on teacher attributes (skipped when already done for the same inputs)."""
    from afmrl.extract.sft import teacher_examples

    base = base_generator(config, catalog)
    cfg = config.extract
    if cfg.sft_steps == 0:
        return base
    out = RunLayout.of(config).generator_sft
    examples = teacher_examples(catalog, cfg.attribute_keys,
                                teacher_file(config, catalog, tracker))
    if not examples:
        log.warning("SFT skipped: no teacher attributes for any catalog/train row; extraction "
                    "uses the base generator %s", base)
        return base
    recipe = sha256_json({"base": fingerprint_tree(base), "steps": cfg.sft_steps,
                          "lr": cfg.sft_lr, "batch": cfg.sft_batch_size, "seed": config.seed,
                          "examples": [(e.item, e.target) for e in examples]})
    stamp = out.parent / f".{out.name}.recipe"
    if out.is_dir() and stamp.is_file() and stamp.read_text() == recipe:
        log.info("distilled generator up to date: %s", out)
        return out
    run_sft(config, base, out, examples)
    stamp.write_text(recipe)
    return out


def extract_all(config: AfmrlConfig, generator: Path, tag: str, tracker=None,
                catalog: pd.DataFrame | None = None) -> pd.DataFrame:
    """Attributes for the configured splits; returns one table (item_id -> attributes)."""
    from afmrl.extract.runner import run_extraction

    catalog = load_catalog(config.data) if catalog is None else catalog
    catalog = catalog[catalog["split"].isin(config.extract.splits)]
    model_id = fingerprint_tree(generator)
    out = RunLayout.of(config).attributes(tag)
    tables, metrics = [], {}
    # Rows are read as they are: a photo-only query row has no title in the catalog itself.
    for part, rows in (("catalog", catalog[catalog["split"] == "catalog"]),
                       ("queries", catalog[catalog["split"] != "catalog"])):
        if rows.empty:
            continue
        result = run_extraction(rows, generator, model_id, config.extract, config.ray,
                                out / part, config.data.image_size)
        tables.append(result.table)
        metrics.update({f"{part}_{k}": v for k, v in result.metrics.items()})
        log.info("extract %s/%s: %d rows, parse failures %.1f%%, %.1f rows/s", tag, part,
                 len(result.table), 100 * result.metrics["parse_failure_rate"],
                 result.metrics["rows_per_s"])
    table = pd.concat(tables, ignore_index=True)
    atomic_write_json(out / "summary.json", {"generator": str(generator), "model_id": model_id,
                                             "rows": len(table), "metrics": metrics})
    if tracker is not None:
        tracker.log_metrics(metrics)
        tracker.log_inputs({"generator": model_id, "attributes": sha256_json(
            table[["item_id", "attributes"]].values.tolist())})
    return table


def attributes_by_item(table: pd.DataFrame) -> dict[str, str]:
    """item_id -> attributes JSON (rows that failed to parse map to whatever parsed: often {})."""
    return dict(zip(table["item_id"], table["attributes"]))


def with_attributes(catalog: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The catalog with its ``attributes`` column filled from an extraction table."""
    by_item = attributes_by_item(table)
    catalog = catalog.copy()
    catalog["attributes"] = [by_item.get(i, a) or "" for i, a in
                             zip(catalog["item_id"], catalog["attributes"])]
    return catalog


def load_attributes(path: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted(path.glob("*/attributes.parquet"))]
    if not frames:
        raise FileNotFoundError(f"no attributes under {path}; run `afmrl extract` first")
    return pd.concat(frames, ignore_index=True)


def parse_json(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}

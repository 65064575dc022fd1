"""Stage 0 as a unit: resolve the generator (distilled from teacher attributes if configured),
then label the catalog (title + image) and the shopper photos (image only) with attributes."""
from __future__ import annotations

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


def distilled_generator(config: AfmrlConfig, catalog: pd.DataFrame, tracker=None) -> Path:
    """SFT on teacher attributes (skipped when already done for the same inputs)."""
    from afmrl.extract.sft import sft_generator, teacher_examples
    from afmrl.extract.text_teacher import text_teacher_file

    base = base_generator(config, catalog)
    cfg = config.extract
    if cfg.sft_steps == 0:
        return base
    out = RunLayout.of(config).generator_sft
    # No teacher file: a text catalog is taught by the title rules of the text teacher.
    teacher_file = cfg.teacher_file or text_teacher_file(
        catalog, cfg.attribute_keys, out.parent / "teacher-text.parquet")
    examples = teacher_examples(catalog, cfg.attribute_keys, teacher_file)
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
    sft_generator(base, out, examples, cfg.attribute_keys, cfg.sft_steps, cfg.sft_batch_size,
                  cfg.sft_lr, config.data.image_size, config.seed, tracker)
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

"""Evaluation of a run's models on its catalog: what `afmrl eval` and the pipeline's results
table share (which attributes label the catalog, which embedder is the latest, the baselines)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.eval.protocol import EvalSet, build_eval_set, ranking_depth
from afmrl.eval.table import ZERO_SHOT, EvalTable
from afmrl.layout import RunLayout

EMBEDDER_TAGS = ("cit", "agcl", "infonce")  # newest recipe first


def trained(layout: RunLayout, tag: str) -> bool:
    return (layout.embedder(tag) / "embedder.json").is_file()


def latest_embedder(layout: RunLayout) -> Path | None:
    """The run's latest trained embedder (CIT, else AGCL, else plain InfoNCE), or None."""
    return next((layout.embedder(t) for t in EMBEDDER_TAGS if trained(layout, t)), None)


def attributes_tag(layout: RunLayout, requested: str | None) -> str | None:
    """Which extraction labels the catalog: ``requested`` ('none' = no attributes), else the
    RL-improved generator's, else the distilled one's, else none."""
    if requested == "none":
        return None
    if requested:
        if not layout.attributes(requested).is_dir():
            raise ValueError(f"no attributes at {layout.attributes(requested)}; run "
                             f"`afmrl extract` or pass --attributes none")
        return requested
    return next((t for t in ("rar", "sft") if layout.attributes(t).is_dir()), None)


def labelled_eval_set(config: AfmrlConfig, catalog: pd.DataFrame, split: str,
                      tag: str | None) -> EvalSet:
    """The split's evaluation set, labelled with the attributes of generator ``tag`` (queries
    enriched with them as at search time when ``train.query_attributes``)."""
    from afmrl.extract.stage import load_attributes, with_attributes

    layout = RunLayout.of(config)
    if tag is not None:
        catalog = with_attributes(catalog, load_attributes(layout.attributes(tag)))
    return build_eval_set(catalog, split, config.extract.attribute_keys,
                          with_attributes=tag is not None and config.train.query_attributes)


def untrained_embedder(config: AfmrlConfig, eval_set: EvalSet):
    """The zero-shot baseline, with an image tower only where ``eval_set`` has images."""
    from afmrl.models.embedders import build_embedder, has_images

    return build_embedder(config.models, RunLayout.of(config).models, config.train.image_size,
                          has_images(eval_set.queries) or has_images(eval_set.gallery))


def gallery_embeddings(config: AfmrlConfig, model, embedder: Path | None,
                       eval_set: EvalSet) -> np.ndarray | None:
    """The gallery's embeddings from the Ray Data embedding job (the index stage's actor
    pool) when it has at least ``eval.embed_job_min_rows`` rows, else None: the caller embeds
    it in process. ``embedder`` is where ``model`` was loaded from; None (the zero-shot
    baseline, built in memory) saves it under the run for the job's actors to load."""
    from afmrl.index.embed_job import embed_in_order
    from afmrl.models.embedders import save_embedder

    if len(eval_set.gallery) < config.eval.embed_job_min_rows:
        return None
    root = RunLayout.of(config).root / "eval"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".zero-shot-") as saved:
        if embedder is None:  # built in memory: saved for the job's actors to load
            embedder = save_embedder(model, Path(saved) / "embedder")
        return embed_in_order(config, embedder, eval_set.gallery_rows, root / ".embedding-job",
                              f"the '{eval_set.split}' evaluation gallery")


def add_dense(config: AfmrlConfig, table: EvalTable, system: str, model, embedder: Path | None,
              eval_set: EvalSet) -> None:
    """``system``'s row: ``model`` ranks ``eval_set``, its gallery embedded by the job if large."""
    table.add_model(system, model, eval_set, gallery_embeddings(config, model, embedder, eval_set))


def system_name(embedder: Path) -> str:
    """'runs/x/train/agcl/embedder' -> 'agcl'."""
    return embedder.parent.name if embedder.name == "embedder" else embedder.name


def evaluate_catalog(config: AfmrlConfig, split: str, embedder: Path | None, baselines: bool,
                     attributes: str | None = None, catalog: pd.DataFrame | None = None
                     ) -> EvalTable:
    """`afmrl eval`: the baselines (if asked) and ``embedder`` on one evaluation set."""
    from afmrl.data import load_catalog
    from afmrl.models.embedders import load_embedder

    layout = RunLayout.of(config)
    catalog = load_catalog(config.data) if catalog is None else catalog
    tag = attributes_tag(layout, attributes)
    eval_set = labelled_eval_set(config, catalog, split, tag)
    table = EvalTable(split, tuple(config.eval.ks))
    if tag is None:
        table.notes.append("no generated attributes: items and queries as the catalog has them")
    models = {}  # system -> (model, the folder it was loaded from; None: built in memory)
    if baselines:
        table.add_baselines(eval_set)
        models[ZERO_SHOT] = (untrained_embedder(config, eval_set), None)
    if embedder is not None:
        models[system_name(embedder)] = (load_embedder(embedder), embedder)
    for system, (model, folder) in models.items():
        add_dense(config, table, system, model, folder, eval_set)
    if "lexical" in table.rankings:
        tuned = add_hybrid_rows(config, catalog, tag, table, eval_set, models)
        if embedder is not None and system_name(embedder) in tuned:
            save_fusion_for_index(layout, embedder, *tuned[system_name(embedder)])
    return table


def save_fusion_for_index(layout: RunLayout, embedder: Path, fusion, sweep: list) -> None:
    """The run's index serves what was tuned on val, if it was built with this embedder."""
    from afmrl.index.fusion import save_tuned
    from afmrl.index.stage import SOURCE_FILE

    source = layout.index / SOURCE_FILE
    if source.is_file() and \
            Path(json.loads(source.read_text())["embedder"]) == Path(embedder).resolve():
        save_tuned(layout.index, fusion, sweep, "val")


def add_hybrid_rows(config: AfmrlConfig, catalog: pd.DataFrame, tag: str | None,
                    table: EvalTable, eval_set, models: dict) -> dict[str, tuple]:
    """``<model>+lexical`` rows: each model's dense ranking fused with the lexical one, the
    fusion tuned on the catalog's ``val`` split when it has one (else ``retrieval.*``).
    ``models``: {system: (model, the folder it was loaded from or None)}. Returns
    ``{system: (fusion, sweep)}`` of the tuned ones."""
    from afmrl.eval.protocol import rank_dense, rank_hybrid, rank_lexical, tune_hybrid
    from afmrl.index.fusion import describe

    depth = ranking_depth(table.ks)
    has_val = table.split != "val" and "val" in set(catalog["split"])
    val_set = labelled_eval_set(config, catalog, "val", tag) if has_val else None
    val_lexical = rank_lexical(val_set, depth) if has_val else None
    tuned = {}
    for name, (model, folder) in models.items():
        fusion, where = config.retrieval, "retrieval.* defaults (no val split)"
        if has_val:
            val_dense = rank_dense(model, val_set, depth,
                                   gallery=gallery_embeddings(config, model, folder, val_set))
            fusion, sweep = tune_hybrid(val_set, val_dense, val_lexical, table.ks,
                                        config.retrieval)
            tuned[name] = (fusion, sweep)
            where = "tuned on val"
        table.add(f"{name}+lexical", eval_set,
                  rank_hybrid(table.rankings[name], table.rankings["lexical"], fusion, depth))
        table.notes.append(f"{name}+lexical: hybrid {describe(fusion)}, {where}")
    return tuned

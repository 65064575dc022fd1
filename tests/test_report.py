"""The run report reads what a run holds (results table, MLflow curves, per-group results,
embedders) and shows it on one self-contained page."""
from __future__ import annotations

import json
import re

import numpy as np

from afmrl.config import load_config
from afmrl.layout import RunLayout
from afmrl.report import EXAMPLES, build_report, pick_examples


def test_examples_come_from_distinct_products_first():
    products = np.repeat(np.arange(5), 4)
    picked = pick_examples(products, count=8)
    assert len(picked) == len(set(picked)) == 8
    assert set(products[picked[:5]]) == set(range(5))


def test_report_shows_results_curves_groups_and_examples(shared_data, tmp_path):
    from afmrl.eval.run import labelled_eval_set
    from afmrl.eval.table import EvalTable
    from afmrl.models.embedders import build_embedder, save_embedder
    from afmrl.data import load_catalog
    from afmrl.tracking import Tracker

    config = load_config(None, [f"run_dir={tmp_path}", f"data.root={shared_data}",
                                "data.grocery_items_file=items_mini_packages.csv",
                                "models.text_tower=tiny", "profile=mini"])
    layout = RunLayout.of(config)
    catalog = load_catalog(config.data)
    models = {}
    for seed, tag in ((1, "infonce"), (2, "agcl")):
        models[tag] = build_embedder(load_config(None, [f"models.seed={seed}",
                                                        "models.text_tower=tiny"]).models,
                                     layout.models, config.train.image_size)
        save_embedder(models[tag], layout.embedder(tag))
    table = EvalTable("test", (1, 5, 10))
    eval_set = labelled_eval_set(config, catalog, "test", None)
    for tag, model in models.items():
        table.add_model(tag, model, eval_set)
    table.write(layout.results)
    tracker = Tracker(config)
    with tracker.run("pipeline") as parent:
        with tracker.run("train", nested=True):
            with tracker.run("agcl", nested=True):
                for step, loss in enumerate([2.0, 1.5, 1.2]):
                    tracker.log_metrics({"train_loss": loss, "test/recall_at_1": 0.1 * step},
                                        step)
    layout.pipeline_state.write_text(json.dumps({"parent_run_id": parent.info.run_id,
                                                 "stages": {"train": {"seconds": 12.0}}}))

    page = build_report(config, catalog).read_text()
    assert page.startswith("<!doctype html>") and "profile <b>mini</b>" in page
    for tag in ("infonce", "agcl"):
        r1 = next(r["recall_at_1"] for r in table.rows if r["system"] == tag)
        assert f"<td>{tag}</td><td>{r1:.3f}</td>" in page
    assert "alt='agcl'" in page  # the learning-curve chart of the agcl run
    assert "alt='per-group recall'" in page
    assert f"{EXAMPLES} example test queries" in page
    assert page.count("<figure") == EXAMPLES * 5 * 2  # top-5 of the best and the baseline
    assert "agcl (best)" in page or "agcl (baseline)" in page
    scores = [float(x) for x in re.findall(r"<br>(-?[0-9.]+)</figcaption>", page)]
    for start in range(0, len(scores), 5):  # each model's top-5, best first
        assert scores[start:start + 5] == sorted(scores[start:start + 5], reverse=True)
    assert "data:image/jpeg;base64," in page  # images inline: the page is self-contained

"""The pipeline's results table is the evaluation table on ``test`` for every model the run
produced, next to the baselines (fast: saved untrained embedders stand in for trained ones)."""
import json
import math

import pytest

from afmrl.config import load_config
from afmrl.layout import RunLayout


def test_results_table_has_a_row_for_every_trained_model(shared_data, tmp_path):
    from afmrl.models.embedders import build_embedder, save_embedder
    from afmrl.pipeline import Pipeline, format_results

    config = load_config(None, [f"run_dir={tmp_path}", f"data.root={shared_data}",
                                "data.catalog=pricerunner", "data.max_groups=60",
                                "models.text_tower=tiny", "train.image_size=32"])
    pipeline = Pipeline(config)
    assert pipeline.results_table() is None  # nothing trained yet: no table
    layout = RunLayout.of(config)
    for tag in ("infonce", "agcl"):
        save_embedder(build_embedder(config.models, layout.models, 32), layout.embedder(tag))
    table = pipeline.results_table()
    rows = {row["system"]: row for row in table.rows}
    assert list(rows) == ["tfidf", "bm25", "lexical", "zero_shot", "infonce", "agcl"]
    test_rows = pipeline.catalog[pipeline.catalog["split"] == "test"]
    queries = int((test_rows.groupby("group_id").size() >= 2).sum())
    assert all(math.isfinite(row["recall_at_1"]) for row in table.rows)
    # Each model row is that embedder scored by the protocol on the test split.
    from afmrl.eval.protocol import build_eval_set, evaluate_model
    from afmrl.models.embedders import load_embedder

    test = build_eval_set(pipeline.catalog, "test", config.extract.attribute_keys, False)
    expected = evaluate_model(load_embedder(layout.embedder("agcl")), test, config.eval.ks)
    assert rows["agcl"]["recall_at_1"] == pytest.approx(expected["recall_at_1"])
    assert rows["agcl"]["mrr"] == pytest.approx(expected["mrr"])
    assert rows["tfidf"]["num_queries"] >= queries > 0
    table.write(layout.results)
    assert json.loads(layout.results.read_text())["rows"] == json.loads(json.dumps(table.rows))
    printed = format_results({"results_markdown": table.markdown(), "timings": {"train": 1.0}})
    assert "| agcl |" in printed and "stage timings (s): train 1.0" in printed

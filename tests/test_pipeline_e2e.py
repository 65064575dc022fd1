"""The main job end to end on the mini subset (items_mini_packages.csv): every stage's
artefacts exist and load, the endpoint answers a real query, the MLflow run tree is complete,
and a rerun resumes instead of redoing work."""
import json

import pytest
import requests

from afmrl.config import REPO_ROOT
from afmrl.layout import RunLayout
from afmrl.tracking import run_tree


@pytest.mark.slow
def test_pipeline_mini_end_to_end(shared_data, tmp_path, capsys):
    import ray
    from ray import serve

    from afmrl.config import load_config
    from afmrl.cli import _job_main

    if ray.is_initialized():  # the job starts and owns its own local cluster
        ray.shutdown()
    overrides = [f"run_dir={tmp_path}", f"data.root={shared_data}", "serve.port=8765",
                 "models.text_tower=tiny", "extract.sft_steps=60", "train.epochs=2",
                 "rl.max_steps=2", "eval.pricerunner_clusters=100"]
    main = _job_main("pipeline")
    try:
        assert main(["--config", str(REPO_ROOT / "configs" / "mini.yaml"), "--no-wait",
                     *overrides]) == 0
        config = load_config(REPO_ROOT / "configs" / "mini.yaml", overrides)
        layout = RunLayout.of(config)
        out = capsys.readouterr().out
        assert "| agcl |" in out and "endpoint:" in out

        # Artefacts of every stage exist and load.
        from transformers import AutoModelForImageTextToText

        from afmrl.extract.stage import load_attributes
        from afmrl.models.embedders import load_embedder

        for tag in ("sft", "rar"):
            assert len(load_attributes(layout.attributes(tag))) == 186
        for generator in (layout.generator_sft, layout.generator_rar):
            AutoModelForImageTextToText.from_pretrained(str(generator))
        for tag in ("infonce", "agcl", "cit"):
            load_embedder(layout.embedder(tag))
        from afmrl.utils.io import fingerprint_tree

        manifest = json.loads((layout.index / "manifest.json").read_text())
        assert manifest["item_count"] == 31 and manifest["layout"] == "sharded"
        assert manifest["model_hash"] == fingerprint_tree(layout.embedder("cit"))

        # The served endpoint answers a real query with the documented schema.
        response = requests.post("http://127.0.0.1:8765/search",
                                 json={"text": "orange juice", "k": 3}, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["hits"]) == 3 and body["query_text"]
        assert {"item_id", "score", "title", "attributes"} <= set(body["hits"][0])

        # The MLflow run tree: one parent, a child per stage.
        runs = run_tree(config)
        parents = [r for r in runs if r["name"] == "pipeline"]
        assert len(parents) == 1
        children = {r["name"] for r in runs if r["parent"] == parents[0]["run_id"]}
        assert set(config.stages) <= children
        assert all(r["status"] == "FINISHED" for r in runs)
    finally:
        serve.shutdown()
        ray.shutdown()

    # A rerun resumes: every stage but serve is skipped, the parent run is reused.
    try:
        assert main(["--config", str(REPO_ROOT / "configs" / "mini.yaml"), "--no-wait",
                     *overrides]) == 0
        state = json.loads(layout.pipeline_state.read_text())
        assert set(config.stages) <= set(state["stages"])
        runs = run_tree(config)
        assert len([r for r in runs if r["name"] == "pipeline"]) == 1
        assert len([r for r in runs if r["name"] == "extract"]) == 1
    finally:
        serve.shutdown()
        ray.shutdown()

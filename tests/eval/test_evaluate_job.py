"""`afmrl eval` run as a user would: a catalog file of their own, the bundled PriceRunner, an
image-only catalog, and the errors a user can make."""
import json

import mlflow
import pandas as pd
import pytest

from afmrl.cli import main

TINY = ["models.text_tower=tiny", "train.image_size=32"]


def _text_catalog(path):
    """Three products, a catalog item each, two test queries each (titles that share words)."""
    rows = []
    for product, name in enumerate(["arla milk red carton 1l", "arla milk blue carton 1l",
                                    "oatly oat drink 1l"]):
        rows.append((f"c{product}", product, name, "catalog"))
        rows += [(f"q{product}_{n}", product, f"{name} offer {n}", "test") for n in range(2)]
    pd.DataFrame(rows, columns=["item_id", "group_id", "title", "split"]).to_parquet(path)
    return path


def test_eval_with_baselines_on_a_user_catalog(tmp_path, ray_local, capsys):
    catalog = _text_catalog(tmp_path / "catalog.parquet")
    out = tmp_path / "table.json"
    assert main(["eval", f"data.catalog={catalog}", f"run_dir={tmp_path / 'run'}", *TINY,
                 "--baselines", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| system | R@1 | R@5 | R@10 | mAP@10 | MRR |" in printed
    rows = {row["system"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"tfidf", "bm25", "lexical", "zero_shot", "zero_shot+lexical"}
    # Each query's title contains its product's catalog title: the lexical baselines are exact.
    assert rows["tfidf"]["recall_at_1"] == 1.0 and rows["bm25"]["recall_at_1"] == 1.0
    assert rows["lexical"]["recall_at_1"] == 1.0
    assert rows["tfidf"]["num_queries"] == 6.0
    assert out.with_suffix(".md").read_text().startswith("| system |")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    groups = json.loads(out.with_suffix(".groups.json").read_text())
    assert set(groups) == set(rows)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("afmrl").experiment_id])
    assert run.data.metrics["test/tfidf/recall_at_1"] == 1.0


def test_eval_of_an_embedder_defaults_to_the_runs_latest(tmp_path, ray_local, capsys):
    from afmrl.config import load_config
    from afmrl.layout import RunLayout
    from afmrl.models.embedders import build_embedder, save_embedder

    catalog = _text_catalog(tmp_path / "catalog.parquet")
    overrides = [f"data.catalog={catalog}", f"run_dir={tmp_path / 'run'}", *TINY]
    assert main(["eval", *overrides]) == 2  # no trained embedder and no --baselines
    assert "pass --embedder DIR or --baselines" in capsys.readouterr().err
    config = load_config(None, overrides)
    layout = RunLayout.of(config)
    save_embedder(build_embedder(config.models, layout.models, 32), layout.embedder("agcl"))
    assert main(["eval", *overrides, "--split", "test"]) == 0
    table = json.loads((layout.root / "eval" / "test.json").read_text())
    assert [row["system"] for row in table["rows"]] == ["agcl"]
    assert main(["eval", *overrides, "--split", "val"]) == 2  # a split the catalog lacks
    assert "no usable rows with split 'val'" in capsys.readouterr().err


def test_image_only_catalog_skips_text_baselines_with_a_note(tmp_path, ray_local, capsys):
    from PIL import Image

    rows = []
    for product, colour in enumerate(["red", "blue"]):
        for n, split in enumerate(["catalog", "test"]):
            path = tmp_path / f"{colour}{n}.png"
            Image.new("RGB", (32, 32), colour).save(path)
            rows.append((f"{colour}{n}", product, "", str(path), split))
    catalog = tmp_path / "images.csv"
    pd.DataFrame(rows, columns=["item_id", "group_id", "title", "image_uri", "split"]
                 ).to_csv(catalog, index=False)
    out = tmp_path / "images.json"
    assert main(["eval", f"data.catalog={catalog}", f"run_dir={tmp_path / 'run'}", *TINY,
                 "--baselines", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [row["system"] for row in table["rows"]] == ["zero_shot"]
    assert any(note.startswith("text baselines (tfidf, bm25") and "skipped" in note
               for note in table["notes"])


def test_eval_of_unseen_pricerunner_clusters(shared_data, tmp_path, capsys):
    """PriceRunner through the same harness: leave-one-out within the test clusters."""
    out = tmp_path / "pricerunner.json"
    assert main(["eval", "data.catalog=pricerunner", f"data.root={shared_data}",
                 "data.max_groups=400", f"run_dir={tmp_path / 'run'}", *TINY, "--baselines",
                 "--json", str(out)]) == 0
    rows = {row["system"]: row for row in json.loads(out.read_text())["rows"]}
    # Model numbers and capacities make character n-grams strong on offer titles (the data
    # README's TF-IDF reference is R@1 0.58 on all 35k offers; a 400-cluster gallery is easier).
    assert rows["tfidf"]["recall_at_1"] > 0.8
    assert rows["bm25"]["recall_at_1"] > 0.7
    assert rows["zero_shot"]["recall_at_1"] < rows["tfidf"]["recall_at_1"]
    assert rows["tfidf"]["num_queries"] == rows["zero_shot"]["num_queries"] > 50


def _gallery_catalog(path, products: int = 12):
    """``products`` catalog items and one test query each (a query's title extends its item's)."""
    rows = []
    for product in range(products):
        name = f"brand{product} drink {product * 7 % 11} variant {product}"
        rows += [(f"item-{product}", product, name, "catalog"),
                 (f"query-{product}", product, f"{name} offer", "test")]
    pd.DataFrame(rows, columns=["item_id", "group_id", "title", "split"]).to_parquet(path)
    return path


def test_a_gallery_of_embed_job_min_rows_is_embedded_by_the_job_in_gallery_order(tmp_path,
                                                                                  ray_local):
    """The job's vectors are the in-process ones, row for row, though it writes them by index
    shard (not in gallery order); a smaller gallery stays in process; the job's files go."""
    import numpy as np

    from afmrl.config import load_config, replace
    from afmrl.data import load_catalog
    from afmrl.eval.protocol import build_eval_set
    from afmrl.eval.run import gallery_embeddings, untrained_embedder
    from afmrl.index.faiss_index import as_ids
    from afmrl.index.sharded import shard_of
    from afmrl.models.embedders import embed

    config = load_config(None, [f"data.catalog={_gallery_catalog(tmp_path / 'c.parquet')}",
                                f"run_dir={tmp_path / 'run'}", *TINY, "index.num_shards=3",
                                "eval.embed_job_min_rows=12"])
    eval_set = build_eval_set(load_catalog(config.data), "test", config.extract.attribute_keys,
                              with_attributes=False)
    shards = shard_of(as_ids(np.array(eval_set.gallery_item_ids)), 3)
    assert list(shards) != sorted(shards)  # read back shard by shard, the order would differ
    model = untrained_embedder(config, eval_set)
    by_job = gallery_embeddings(config, model, None, eval_set)
    np.testing.assert_allclose(by_job, embed(model, eval_set.gallery), atol=1e-5)
    assert not (tmp_path / "run" / "eval" / ".embedding-job").exists()
    fewer = replace(config, eval=replace(config.eval, embed_job_min_rows=13))
    assert gallery_embeddings(fewer, model, None, eval_set) is None


def test_eval_through_the_embedding_job_gives_the_same_table(tmp_path, ray_local, caplog):
    """`afmrl eval` with every gallery embedded by the job (zero-shot, the trained embedder, the
    val gallery the fusion is tuned on): the same numbers as in process."""
    from afmrl.config import load_config
    from afmrl.layout import RunLayout
    from afmrl.models.embedders import build_embedder, save_embedder

    catalog = _text_catalog(tmp_path / "catalog.parquet")
    frame = pd.read_parquet(catalog)
    frame.loc[frame["item_id"].str.endswith("_1"), "split"] = "val"  # a val split to tune on
    frame.to_parquet(catalog)
    overrides = [f"data.catalog={catalog}", f"run_dir={tmp_path / 'run'}", *TINY]
    layout = RunLayout.of(load_config(None, overrides))
    save_embedder(build_embedder(load_config(None, overrides).models, layout.models, 32),
                  layout.embedder("agcl"))
    caplog.set_level("INFO", logger="afmrl")
    tables = {}
    for min_rows in (0, 10):
        caplog.clear()
        out = tmp_path / f"job{min_rows}.json"
        assert main(["eval", *overrides, f"eval.embed_job_min_rows={min_rows}", "--baselines",
                     "--json", str(out)]) == 0
        tables[min_rows] = json.loads(out.read_text())["rows"]
        # zero-shot and agcl, on the test gallery and on the val gallery the fusion is tuned on
        assert sum("embed job: 3 rows" in m for m in caplog.messages) == (4 if min_rows == 0
                                                                         else 0)
    assert {row["system"] for row in tables[0]} >= {"zero_shot", "agcl", "agcl+lexical"}
    assert tables[0] == tables[10]

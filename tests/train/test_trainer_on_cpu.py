"""AGCL on a real Ray Train worker group with DeepSpeed (gloo, 2 CPU workers)."""
import json
import math
import os
import signal
import threading
import time

import mlflow
import pytest
import torch

from afmrl.config import load_config
from afmrl.models.embedders import load_embedder, takes_images
from afmrl.tracking import Tracker
from afmrl.train.data import training_pairs
from afmrl.train.stage import run_agcl
from afmrl.train.trainer import (CHECKPOINT_LOG, SELECTION_METRIC, batch_sampler, improves,
                                 latest_checkpoint, optimizer_steps)


def _config(tmp_path, *extra):
    return load_config(None, [
        f"run_dir={tmp_path}", "data.grocery_items_file=items_mini_packages.csv",
        "models.text_tower=tiny", "train.image_size=32", "train.per_device_batch_size=4",
        "train.pair_splits=[catalog]", "train.lr=1e-3",
        "train.cpus_per_worker=1", *extra])


def with_val_split(catalog, every=3):
    """The mini catalog with every ``every``-th shopper photo moved to a val split."""
    catalog = catalog.copy()
    photos = catalog.index[catalog["split"] == "test"]
    catalog.loc[photos[::every], "split"] = "val"
    return catalog


def run_steps(config, catalog) -> int:
    """What an uninterrupted run does: whole accumulation windows of every epoch's batches."""
    train = config.train
    pairs = training_pairs(catalog, config.extract.attribute_keys, False, train.pair_splits,
                           config.seed)
    return optimizer_steps(train, batch_sampler(train, pairs, train.num_workers))


def weights(path):
    return {k: v.clone() for k, v in load_embedder(path).state_dict().items()}


def checkpoint_log(out):
    return [json.loads(line) for line in (out / CHECKPOINT_LOG).read_text().splitlines()]


def test_the_best_val_epoch_wins_ties_keep_the_earlier():
    assert improves({SELECTION_METRIC: 0.2}, None)
    assert improves({SELECTION_METRIC: 0.3}, {SELECTION_METRIC: 0.2})
    assert not improves({SELECTION_METRIC: 0.2}, {SELECTION_METRIC: 0.2})
    assert not improves({SELECTION_METRIC: 0.1}, {SELECTION_METRIC: 0.2})
    assert not improves({"train_loss_epoch": 1.0}, None)  # no val benchmark: no selection


def test_resume_skips_a_checkpoint_a_killed_rank_left_truncated(tmp_path):
    """Seen in CI: rank 1 was killed mid-save, its shard cut at 1 MiB under its final name,
    while DeepSpeed's `latest` and our log already named that tag; loading it failed on every
    retry. The newest logged tag whose files are all complete archives is used instead."""
    checkpoints = tmp_path / "checkpoints"
    for step in (6, 7):
        tag = checkpoints / f"step_{step:07d}"
        tag.mkdir(parents=True)
        for rank in (0, 1):
            torch.save({"step": step, "rank": rank}, tag / f"zero_pp_rank_{rank}_optim_states.pt")
    (checkpoints / "latest").write_text("step_0000007")
    (checkpoints / "step_0000008").mkdir()  # being written: not logged yet
    (tmp_path / CHECKPOINT_LOG).write_text("".join(
        json.dumps({"tag": f"step_{s:07d}"}) + "\n" for s in (6, 7)))
    assert latest_checkpoint(checkpoints) == "step_0000007"
    shard = checkpoints / "step_0000007" / "zero_pp_rank_1_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    assert latest_checkpoint(checkpoints) == "step_0000006"
    assert latest_checkpoint(tmp_path / "elsewhere" / "checkpoints") is None


@pytest.mark.parametrize("embedder, zero_stage", [("dual", 2), ("dual", 3), ("vlm2vec", 2)])
def test_agcl_learns_keeps_the_best_val_epoch_and_logs(ray_local, mini_catalog, tmp_path,
                                                       embedder, zero_stage):
    from afmrl.eval.protocol import build_eval_set, evaluate_model

    catalog = with_val_split(mini_catalog)
    config = _config(tmp_path, f"train.zero_stage={zero_stage}", "train.epochs=3",
                     f"models.embedder={embedder}")
    tracker = Tracker(config)
    with tracker.run("train"):
        result = run_agcl(config, None, "agcl", tracker, catalog)
        run_id = mlflow.active_run().info.run_id
    model = load_embedder(result.embedder)
    assert model.kind == embedder
    client = mlflow.tracking.MlflowClient(tracker.uri)
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train_loss_epoch"),
                                      key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    init = weights(tmp_path / "train" / "agcl" / "init")
    trained = weights(result.embedder)
    assert init.keys() == trained.keys()
    assert any(not torch.equal(init[k], trained[k]) for k in init)
    # #12.7: the export is the epoch with the best val Recall@1, not the last one.
    history = [m.value for m in sorted(client.get_metric_history(run_id, SELECTION_METRIC),
                                       key=lambda m: m.step)]
    assert len(history) == 3
    best_epoch = history.index(max(history))
    assert result.metrics["exported_epoch"] == best_epoch
    assert result.metrics[SELECTION_METRIC] == max(history)
    val = build_eval_set(catalog, "val", config.extract.attribute_keys, False)
    assert evaluate_model(model, val, config.eval.ks)["recall_at_1"] == \
        pytest.approx(max(history), abs=1e-6)
    assert result.metrics["samples_per_s_per_worker"] > 0
    # A second call finds the export and does not retrain, and still knows its metrics.
    again = run_agcl(config, None, "agcl", None, catalog)
    assert again.seconds == 0.0 and again.metrics == result.metrics


def test_a_text_only_catalog_trains_without_an_image_tower(ray_local, tmp_path, capsys):
    import pandas as pd

    rows = []
    for product, name in enumerate(["arla milk red carton 1l", "arla milk blue carton 1l",
                                    "oatly oat drink 1l", "bravo apple juice 1l"]):
        rows.append((f"c{product}", product, name, "catalog"))
        rows += [(f"t{product}_{n}", product, f"{name} offer {n}", "train") for n in range(3)]
    catalog = tmp_path / "catalog.parquet"
    pd.DataFrame(rows, columns=["item_id", "group_id", "title", "split"]).to_parquet(catalog)
    config = load_config(None, [
        f"run_dir={tmp_path}", f"data.catalog={catalog}", "models.text_tower=tiny",
        "train.per_device_batch_size=4", "train.pair_splits=[train]", "train.epochs=1",
        "train.zero_stage=0", "train.cpus_per_worker=1"])
    result = run_agcl(config, None, "agcl", None)
    out = capsys.readouterr().out
    assert "dual embedder is built without its image tower" in out
    assert not takes_images(result.embedder) and not (result.embedder / "vision").exists()
    assert load_embedder(result.embedder).vision is None
    # 12 pairs in batches of 4 on 2 ranks: one optimizer step, at the warm-up's learning rate 0.
    # The driver says so, and the export is indeed the initial embedder.
    assert "AGCL agcl: 1 optimizer step(s) in 1 epoch(s)" in out
    assert "leave the exported embedder equal to its initial weights" in out
    initial = load_embedder(tmp_path / "train" / "agcl" / "init").state_dict()
    assert all(torch.equal(value, initial[key])
               for key, value in load_embedder(result.embedder).state_dict().items())


@pytest.mark.parametrize("zero", ["train.zero_stage=0", "train.zero_stage=1",
                                  "train.zero_stage=2 train.offload=true"])
def test_zero_stage_smoke(ray_local, mini_catalog, tmp_path, zero):
    config = _config(tmp_path, *zero.split(), "train.epochs=1")
    result = run_agcl(config, None, "agcl", None, mini_catalog)
    meta = json.loads((result.embedder / "embedder.json").read_text())
    assert meta["trained_steps"] == run_steps(config, mini_catalog)
    assert result.metrics["exported_epoch"] == 0
    assert math.isfinite(result.metrics["train_loss_epoch"])


def test_checkpoints_land_on_accumulation_boundaries(ray_local, mini_catalog, tmp_path):
    config = _config(tmp_path, "train.grad_accum_steps=2", "train.checkpoint_every_steps=1",
                     "train.epochs=2", "train.zero_stage=1")
    result = run_agcl(config, None, "agcl", None, mini_catalog)
    saved = checkpoint_log(tmp_path / "train" / "agcl")
    assert saved[0]["tag"] == "step_0000001"
    for entry in saved:  # a tag names the optimizer steps its weights have seen, all of them
        assert entry["tag"] == f"step_{entry['optimizer_steps']:07d}"
        assert entry["micro_steps"] == 2 * entry["optimizer_steps"], entry
        assert entry["position"] % 2 == 0, entry
    steps = json.loads((result.embedder / "embedder.json").read_text())["trained_steps"]
    assert steps == run_steps(config, mini_catalog) == saved[-1]["optimizer_steps"]


def test_killed_worker_resumes_from_the_last_checkpoint_and_finishes(ray_local, mini_catalog,
                                                                     tmp_path):
    config = _config(tmp_path, "train.epochs=4", "train.checkpoint_every_steps=1",
                     "train.zero_stage=2")
    out = tmp_path / "train" / "agcl"
    killed = []

    def kill_rank_1_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline and latest_checkpoint(out / "checkpoints") is None:
            time.sleep(0.2)
        pid_file = out / "workers" / "rank_1.pid"
        if pid_file.is_file():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            killed.append(latest_checkpoint(out / "checkpoints"))

    killer = threading.Thread(target=kill_rank_1_after_first_checkpoint)
    killer.start()
    result = run_agcl(config, None, "agcl", None, mini_catalog)
    killer.join()
    assert killed, "no worker was killed: the test proved nothing"
    resumed = (out / "resumes.log").read_text().splitlines()
    assert resumed[0].startswith(f"resumed from {killed[0]} ")
    # Neither a replayed nor a skipped step: as many optimizer steps as an uninterrupted run.
    steps = json.loads((result.embedder / "embedder.json").read_text())["trained_steps"]
    assert steps == run_steps(config, mini_catalog)

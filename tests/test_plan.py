"""`afmrl plan`: the plan is the placements the code creates things with, and --check stops a
plan the running cluster cannot hold."""
from __future__ import annotations

import re

import pytest

from afmrl.cli import main
from afmrl.config import REPO_ROOT, load_config
from afmrl.plan import check_plan, format_plan, resource_plan
from afmrl.serve.config_gen import deployment_options
from afmrl.utils import device
from afmrl.utils.ray_utils import ResourceShortfall

GPU = str(REPO_ROOT / "configs" / "gpu.yaml")


def test_plan_prints_every_step_with_its_totals(capsys):
    assert main(["plan", "--config", GPU]) == 0
    out = capsys.readouterr().out
    steps = re.findall(r"^stage (\S+)$", out, re.M)
    assert steps == ["extract/teacher", "extract/sft", "extract/extract", "train", "rar",
                     "cit/extract", "cit/train", "index", "serve"]
    # 8 AGCL workers of 4 CPUs + 1 GPU each: the train step's total is 32 CPU, 8 GPU.
    assert re.search(r"AGCL worker\s+Ray Train worker\s+8\s+4\s+1\s+-\s+cuda \(train.use_gpu",
                     out)
    assert re.search(r"^  total\s+8\s+32\s+8\s", out, re.M)
    assert "largest stage (stages run one after another): 32 CPU, 8 GPU" in out


def test_plan_is_what_the_serve_app_deploys():
    config = load_config(GPU)
    plan, = resource_plan(config, ["serve"])
    options = deployment_options(config, with_generator=True)
    for placement in plan.placements:
        if placement.kind == "Serve deployment":
            assert options[placement.component]["ray_actor_options"] == placement.ray_options()
            assert options[placement.component]["autoscaling_config"]["max_replicas"] == \
                placement.count


def test_distillation_step_is_planned_only_when_it_runs():
    with_sft = resource_plan(load_config(None, ["extract.sft_steps=5"]), ["extract"])
    without = resource_plan(load_config(None, ["extract.sft_steps=0"]), ["extract"])
    assert [p.stage for p in with_sft] == ["extract/sft", "extract/extract"]
    assert [p.stage for p in without] == ["extract"]
    assert with_sft[0].placements == (device.sft_workers(load_config(None)),)


def test_format_shows_memory_reserved_for_vllm_on_cpu():
    text = format_plan(resource_plan(load_config(None, ["extract.kv_cache_gib=2",
                                                        "extract.num_actors=2"]), ["extract"]))
    assert re.search(r"AttributeExtractor\s+Ray Data actor pool\s+2\s+1\s+0\s+2\.0\s+cpu", text)


def test_check_stops_a_plan_the_cluster_cannot_hold(ray_local, capsys):
    """The local test cluster (4 CPUs, no GPU) cannot hold gpu.yaml's 8 GPU workers."""
    with pytest.raises(ResourceShortfall, match=r"one AGCL worker needs 4 CPU, 1 GPU, no node "
                                                r"has that much \(set by train.use_gpu\)"):
        check_plan(resource_plan(load_config(GPU), ["train"]))
    check_plan(resource_plan(load_config(None, ["train.num_workers=2"]), ["train"]))
    assert main(["plan", "--config", GPU, "--stages", "rar", "--check"]) == 1
    assert "does not fit: stage rar cannot be scheduled" in capsys.readouterr().err


def test_a_job_whose_plan_does_not_fit_stops_before_any_work(tmp_path, capsys):
    """Every job joins the cluster through plan.join_checked: 64 AGCL workers on this machine's
    local cluster end the pipeline with exit 2 and the gap, before a stage runs."""
    import ray

    from afmrl.cli import main as cli

    try:
        code = cli(["pipeline", "--config", str(REPO_ROOT / "configs" / "mini.yaml"),
                    f"run_dir={tmp_path}", "train.num_workers=64", "ray.dashboard=false"])
    finally:
        ray.shutdown()
    assert code == 2
    assert "stage train cannot be scheduled on this Ray cluster (CPU: need 64" in capsys.readouterr().err
    assert not (tmp_path / "pipeline_state.json").exists()

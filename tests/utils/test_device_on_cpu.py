"""afmrl.utils.device: one helper decides device and Ray resources for every component.

The logical-GPU tests start a Ray cluster of their own that *advertises* 2 GPUs this machine
does not have: every GPU-configured component is scheduled by its real creating code, lands with
a GPU assigned (the helper's message reports ``ray.get_gpu_ids()``), and then stops with the
helper's "CUDA not available" message rather than a crash inside torch, NCCL or FAISS.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from afmrl.config import REPO_ROOT, IndexConfig, load_config
from afmrl.plan import resource_plan
from afmrl.utils import device
from afmrl.utils.device import DeviceUnavailable, Placement

GPU_CONFIG = "configs/gpu.yaml"
# The clear message, with the GPU Ray assigned to the process that raised it.
ASSIGNED = r"CUDA not available: {} is configured for GPU \({}=.*Ray GPU ids \[['\"]?\d"


def gpu_config(*overrides: str):
    """configs/gpu.yaml shrunk to 2 logical GPUs and a few CPUs (same keys, smaller counts)."""
    return load_config(REPO_ROOT / GPU_CONFIG, [
        "ray.address=null", "extract.num_actors=1", "extract.cpus_per_actor=0.5",
        "train.num_workers=1", "train.cpus_per_worker=0.5", "rl.num_workers=1",
        "rl.prompts_per_step=2", "rl.group_size=2", "index.num_shards=2", "index.kind=flat", "index.embed_max_actors=1",
        "serve.max_replicas=1", *overrides])


# -- no Ray ------------------------------------------------------------------------------------


def test_gpu_config_puts_every_model_and_index_on_cuda():
    config = load_config(REPO_ROOT / GPU_CONFIG)
    by_name = {(plan.stage, p.component): p for plan in resource_plan(config)
               for p in plan.placements}
    on_cpu = {name for name, p in by_name.items() if p.device == "cpu"}
    assert on_cpu == {("rar", "RecallEvaluator"), ("serve", "Retriever"),
                      ("serve", "SearchIngress")}, "only index-less, model-less processes on CPU"
    assert by_name["index", "IndexShard"].ray_options() == {"num_cpus": 0.5, "num_gpus": 0.25,
                                                            "scheduling_strategy": "SPREAD"}
    assert by_name["train", "AGCL worker"].scaling_config() == {
        "num_workers": 8, "use_gpu": True, "resources_per_worker": {"CPU": 4.0, "GPU": 1.0}}


def test_cpu_profile_requests_no_gpu_and_uses_the_cpu():
    config = load_config(None)
    for plan in resource_plan(config):
        for placement in plan.placements:
            assert "num_gpus" not in placement.ray_options(), placement
            assert device.torch_device(placement) == torch.device("cpu")


def test_vllm_on_cpu_reserves_its_kv_cache_as_ray_memory():
    config = load_config(None, ["extract.engine=vllm", "extract.kv_cache_gib=3"])
    assert device.extraction_actors(config.extract).ray_options()["memory"] == 3 * 2**30


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only node")
def test_gpu_placement_without_cuda_raises_the_clear_message():
    placement = device.agcl_workers(gpu_config())
    with pytest.raises(DeviceUnavailable) as error:
        device.torch_device(placement)
    message = str(error.value)
    assert message.startswith("CUDA not available: AGCL worker is configured for GPU "
                              "(train.use_gpu=True) but torch.cuda.is_available() is False on "
                              "node ")
    assert "set train.use_gpu=false or run on a GPU node" in message


# -- a Ray cluster with logical GPUs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def logical_gpus():
    """A local cluster this module owns: 2 logical GPUs, no real ones. The session's shared
    cluster (if running) is shut down first and restarted by the next test that needs it."""
    import ray

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the logical-GPU failure path does not apply")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, namespace="afmrl-logical-gpus",
             address="local")
    yield ray
    ray.shutdown()


def _fails_on_assigned_gpu(error: BaseException, placement: Placement) -> None:
    assert re.search(ASSIGNED.format(re.escape(placement.component),
                                     re.escape(placement.gpu_key)), str(error)), str(error)[:3000]


def test_ray_train_worker_groups_stop_before_nccl(logical_gpus):
    config = gpu_config()
    for placement in (device.agcl_workers(config), device.rar_workers(config),
                      device.sft_workers(config)):
        with pytest.raises(DeviceUnavailable) as error:
            device.check_workers(placement, timeout_s=60)
        _fails_on_assigned_gpu(error.value, placement)


def test_index_shards_request_and_get_a_gpu(logical_gpus):
    from afmrl.config import RayConfig
    from afmrl.index.sharded import ShardedIndex

    config = gpu_config()
    with pytest.raises(Exception) as error:
        ShardedIndex.build(np.eye(4, 8, dtype=np.float32), ["a", "b", "c", "d"],
                           IndexConfig(kind="flat", num_shards=2, use_gpu=True), "hash",
                           RayConfig(call_timeout_s=60, namespace="afmrl-logical-gpus"))
    _fails_on_assigned_gpu(error.value, device.index_shards(config))


def test_embedder_actors_request_and_get_a_gpu(logical_gpus, tmp_path):
    """The index stage's embedding job (a Ray Data pool of CatalogEmbedder actors) checks CUDA
    before it reads the model: the path need not exist for the check to fire."""
    import pandas as pd

    from afmrl.index.stage import build_catalog_index

    config = gpu_config()
    catalog = pd.DataFrame({"item_id": ["a"], "group_id": [0], "split": ["catalog"],
                            "title": ["milk"], "text": [""], "image_uri": [""], "error": [""],
                            "attributes": [""], "coarse_group": ["dairy"],
                            "content_hash": ["h"]})
    with pytest.raises(Exception) as error:
        build_catalog_index(config, tmp_path / "no-embedder", catalog, tmp_path / "index")
    _fails_on_assigned_gpu(error.value, device.catalog_embedders(config))


def test_serve_replicas_request_and_get_a_gpu(logical_gpus, tmp_path):
    """Serve replicas are actors started with the deployment's ray_actor_options."""
    import ray

    from afmrl.serve.config_gen import deployment_options
    from serve_apps.search_app import AttributeGenerator, Embedder

    config = gpu_config()
    options = deployment_options(config, with_generator=True)
    for name, cls, args in (("Embedder", Embedder, (None, config)),
                            ("AttributeGenerator", AttributeGenerator,
                             (str(tmp_path / "no-generator"), config))):
        actor = ray.remote(cls.func_or_class).options(
            **options[name]["ray_actor_options"]).remote(*args)
        with pytest.raises(ray.exceptions.RayActorError) as error:
            ray.get(actor.__ray_ready__.remote(), timeout=60)
        _fails_on_assigned_gpu(error.value, device.serve_deployment(config, name))


def test_extraction_actor_pool_requests_and_gets_a_gpu(logical_gpus, tmp_path):
    from afmrl.extract.runner import AttributeExtractor

    import ray

    config = gpu_config("extract.engine=transformers")
    placement = device.extraction_actors(config.extract)
    actor = ray.remote(AttributeExtractor).options(**placement.ray_options()).remote(
        str(tmp_path / "no-model"), "id", config.extract, 64, str(tmp_path), str(tmp_path),
        placement=placement)
    with pytest.raises(ray.exceptions.RayActorError) as error:
        ray.get(actor.__ray_ready__.remote(), timeout=60)
    _fails_on_assigned_gpu(error.value, placement)

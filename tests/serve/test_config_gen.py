"""The generated Serve config: in sync with the committed file, valid for Ray, fits the box."""
from __future__ import annotations

import inspect

import yaml
from ray.serve.schema import ServeDeploySchema

from afmrl.config import REPO_ROOT, load_config
from afmrl.serve.config_gen import (REPLICA_CPUS, SHARD_CPUS, SearchAppArgs, deployment_options,
                                    main)

COMMITTED = REPO_ROOT / "serve_apps" / "serve_config.yaml"
LOCAL_PROFILE = ["--config", "configs/local.yaml", "--generator",
                 "runs/local/models/generator-rar"]


def test_committed_serve_config_is_in_sync_with_the_generator(tmp_path):
    main([*LOCAL_PROFILE, "--out", str(tmp_path / "serve_config.yaml")])
    assert (tmp_path / "serve_config.yaml").read_text() == COMMITTED.read_text(), (
        "serve_apps/serve_config.yaml is stale: regenerate it with `python -m "
        f"afmrl.serve.config_gen {' '.join(LOCAL_PROFILE)} --out serve_apps/serve_config.yaml`")


def test_serve_config_validates_against_rays_schema_and_the_app_args():
    config = yaml.safe_load(COMMITTED.read_text())
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    args = SearchAppArgs.model_validate(app["args"])
    _, index_dir, generator = args.resolve()
    assert index_dir == REPO_ROOT / "runs" / "local" / "index"
    assert generator == str(REPO_ROOT / "runs" / "local" / "models" / "generator-rar")
    from serve_apps import search_app

    # Serve validates `args` against build_app's runtime annotation (not a string).
    assert inspect.signature(search_app.build_app).parameters["args"].annotation is SearchAppArgs
    deployments = (search_app.Embedder, search_app.AttributeGenerator, search_app.Retriever,
                   search_app.SearchIngress)
    assert [d["name"] for d in app["deployments"]] == [d.name for d in deployments]


def test_the_app_at_max_replicas_fits_the_local_cluster():
    config = load_config(None)
    cpus = 4  # init_ray's smallest local cluster: max(4, 2 x cores)
    options = deployment_options(config, with_generator=True)
    replicas = config.serve.max_replicas
    total = sum(o["ray_actor_options"]["num_cpus"] * replicas for o in options.values())
    total += replicas * config.index.num_shards * SHARD_CPUS
    assert set(options) == set(REPLICA_CPUS)
    assert total <= cpus, f"the app needs {total} CPUs at max replicas; the cluster has {cpus}"

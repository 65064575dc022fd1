"""The RayService's serveConfigV2 deploys: its CPU variant, written by the same generator
(afmrl.serve.config_gen) for the local profile, goes through `serve deploy` to a real
`ray start --head` cluster and answers POST /search with 200 and hits.

The GPU original cannot run here; test_manifests.py checks the manifest is that generator's
output for configs/gpu.yaml, and this test checks the variant has the same shape (application,
import path, deployments in order, option keys) so the builder creates what the manifest names.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

from afmrl.serve.config_gen import main as generate
from cluster_head import BIN, REPO, free_port, ray_head

MANIFEST = REPO / "cluster" / "k8s" / "rayservice.search.yaml"


def manifest_serve_config() -> dict:
    doc = yaml.safe_load(MANIFEST.read_text())
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def shape(serve_config: dict) -> list:
    app, = serve_config["applications"]
    return [app["name"], app["import_path"], app["route_prefix"], sorted(app["args"]),
            [(d["name"], sorted(d), sorted(d["ray_actor_options"]) != [])
             for d in app["deployments"]]]


@pytest.fixture(scope="module")
def head():
    # Serve replicas import serve_apps.search_app: the checkout is on the cluster's path, as
    # the image's WORKDIR is on a RayService's.
    with ray_head(num_cpus=4, PYTHONPATH=str(REPO)) as cluster:
        yield cluster


def _post_search(url: str, timeout_s: float) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps({"text": "apple juice", "k": 3})
                                     .encode(), headers={"Content-Type": "application/json"})
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            last = repr(error)
            time.sleep(3)
    pytest.fail(f"/search never answered within {timeout_s:g}s: {last}")


def test_cpu_variant_of_the_rayservice_deploys_and_searches(head, shared_data, tmp_path):
    port = free_port()
    overrides = [f"run_dir={tmp_path}", f"data.root={shared_data}", "models.text_tower=tiny",
                 "index.num_shards=2", "ray.call_timeout_s=120", f"serve.port={port}",
                 "serve.embed_replicas=1", "serve.max_replicas=1"]
    # The index (and its embedder) from a driver on that cluster, like the index stage.
    build = subprocess.run(
        [str(BIN / "python"), "-c",
         "import sys, ray; from afmrl.config import load_config; "
         "from afmrl.serve.sample import sample_index; "
         f"ray.init(address={head.gcs!r}); "
         f"print('INDEX', sample_index(load_config(None, {overrides!r}), {str(tmp_path)!r}))"],
        env=head.env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    index_dir = next(line for line in build.stdout.splitlines() if line.startswith("INDEX"))[6:]
    from afmrl.models.tiny import build_tiny_generator

    generator = build_tiny_generator(tmp_path / "generator", seed=0)
    out = tmp_path / "serve_config.yaml"
    (tmp_path / "index").symlink_to(index_dir)  # where the config's run_dir puts the index
    assert generate(["--config", "configs/local.yaml", "--generator", str(generator),
                     "--out", str(out), *overrides]) == 0
    variant = yaml.safe_load(out.read_text())
    assert shape(variant) == shape(manifest_serve_config())
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(out), "-a", head.dashboard],
                            env=head.env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    try:
        status, body = _post_search(f"http://127.0.0.1:{port}/search", timeout_s=420)
        assert status == 200 and len(body["hits"]) == 3, body
    finally:
        subprocess.run([str(BIN / "serve"), "shutdown", "-a", head.dashboard, "-y"],
                       env=head.env, capture_output=True, timeout=120)

"""Bounded load on 127.0.0.1 (8 clients x 10 s): no errors, also while a replica is killed."""
from __future__ import annotations

import threading
import time

import ray
from ray import serve

from afmrl.serve.config_gen import APP_NAME
from afmrl.serve.loadgen import LoadResult, run_load

QUERIES = [{"text": text, "k": 5} for text in
           ("apple juice", "oat milk", "vanilla yoghurt", "orange juice 1l", "sour cream",
            "red grapefruit", "ecological milk")]
CLIENTS, SECONDS = 8, 10.0


def running(deployment: str) -> int:
    status = serve.status().applications[APP_NAME].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def replica_actors(deployment: str) -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if f"#{deployment}#" in a["name"]]


def test_concurrent_clients_get_no_errors(live_app):
    result = run_load(f"{live_app.url}/search", QUERIES, CLIENTS, SECONDS)
    assert result.errors == [] and len(result.latencies_s) >= CLIENTS


def test_killing_an_embedder_replica_mid_load_loses_no_request(live_app):
    """Requests caught on the dying replica fail with RayActorError inside the app; the ingress
    retries them once (embedding is idempotent) on the surviving replica, so clients never see
    the failure and need no retries of their own."""
    assert running("Embedder") == 2
    victim = replica_actors("Embedder")[0]
    outcome: dict[str, LoadResult] = {}
    load = threading.Thread(target=lambda: outcome.update(
        result=run_load(f"{live_app.url}/search", QUERIES, CLIENTS, SECONDS)))
    load.start()
    time.sleep(SECONDS / 3)
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    load.join()
    result = outcome["result"]
    assert result.errors == []
    assert sum(t > killed_at for t in result.answered_at) >= CLIENTS  # still answering after
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
            running("Embedder") == 2 and victim not in replica_actors("Embedder")):
        time.sleep(1)
    assert running("Embedder") == 2, "Serve did not replace the killed replica"
    assert victim not in replica_actors("Embedder")

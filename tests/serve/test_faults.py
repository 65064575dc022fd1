"""Load at a fixed rate (searches + PUT/DELETE of items) while a replica of each deployment is
killed like a crash and Serve replaces it.

Pass: no failure before the kill or after the replacement runs (plus ``GRACE_S`` for the proxy
to learn its route); killed Retriever and Embedder replicas cost no request at all (the ingress
retries idempotent calls on the surviving replica); a killed ingress replica fails only the
requests it held, inside that window; and no acknowledged write is lost (every 2xx PUT is
readable afterwards, every 2xx DELETE stays deleted). ``bench/bench_faults.py`` runs longer
and prints the figures.
"""
from __future__ import annotations

import pytest
import requests

from afmrl.serve.config_gen import APP_NAME
from afmrl.serve.loadgen import measure_fault

QUERIES = [{"text": text, "k": 5} for text in ("apple juice", "oat milk", "vanilla yoghurt",
                                               "orange juice 1l", "sour cream")]
RATE, BEFORE_S, AFTER_S, GRACE_S = 6.0, 4.0, 6.0, 2.0


@pytest.mark.parametrize("deployment", ["Retriever", "Embedder", "SearchIngress"])
def test_a_killed_replica_loses_no_acknowledged_write(live_app, deployment):
    replicas = live_app.config.serve.embed_replicas  # every deployment's min_replicas
    run = measure_fault(live_app.url, APP_NAME, deployment, replicas, QUERIES, RATE, BEFORE_S,
                        AFTER_S, GRACE_S)
    failures = [o for o in run["outcomes"] if not o.ok]
    print(deployment, {k: run[k] for k in ("before", "during", "after", "recover_s")})
    assert run["before"]["failed"] == 0 and run["after"]["failed"] == 0, failures[:5]
    assert run["after"]["sent"] >= RATE * (AFTER_S - GRACE_S) / 2  # still answering
    if deployment != "SearchIngress":  # retried inside the ingress: invisible to clients
        assert failures == []
    workload = run["workload"]
    try:
        assert len(workload.acked_puts) >= 3 and workload.acked_deletes
        assert workload.lost_writes(live_app.url) == []
    finally:  # leave the shared catalog as the other serve tests expect it: a PUT whose
        # answer a kill cut off may still have been written, so every PUT sent is deleted
        for item in workload.sent_puts:
            answer = requests.delete(f"{live_app.url}/items/{item}", timeout=60)
            assert answer.status_code in (204, 404), (item, answer.status_code)

"""Bounded HTTP load generators for the load tests and benchmarks.

``run_load`` is closed-loop (N clients, each sending its next request as soon as the previous one
is answered: throughput); ``run_at_rate`` is open-loop (requests leave at a fixed rate whatever
the answers: what a fault does to latency and errors, as users would see it).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import requests


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)  # time.monotonic() per success
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def qps(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else \
            float("nan")


def run_load(url: str, payloads: Sequence[dict[str, Any]], clients: int, seconds: float,
             headers: dict[str, str] | None = None, timeout_s: float = 60.0) -> LoadResult:
    """POST ``payloads`` (cycled) to ``url`` from ``clients`` threads for ``seconds``."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        session = requests.Session()
        n = offset
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = session.post(url, json=payloads[n % len(payloads)], headers=headers,
                                        timeout=timeout_s)
                status, text = response.status_code, response.text
            except requests.RequestException as error:
                status, text = 0, f"{type(error).__name__}: {error}"
            ended = time.monotonic()
            with lock:
                if status == 200:
                    result.latencies_s.append(ended - started)
                    result.answered_at.append(ended)
                else:
                    result.errors.append(f"{status}: {text[:200]}")
            n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class Outcome:
    """One request of ``run_at_rate``: what was sent, when (time.monotonic()) and the answer."""
    kind: str
    path: str
    sent_at: float
    latency_s: float
    status: int  # 0: no HTTP answer (connection reset, timeout)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# (kind, method, path, requests kwargs) of request number n, or None to send nothing this tick.
RequestFactory = Callable[[int], "tuple[str, str, str, dict[str, Any]] | None"]


def run_at_rate(base_url: str, next_request: RequestFactory, rate: float, stop: threading.Event,
                on_answer: Callable[[Outcome], None] | None = None,
                headers: dict[str, str] | None = None, timeout_s: float = 60.0,
                max_in_flight: int = 64) -> list[Outcome]:
    """Send request n at ``n / rate`` seconds until ``stop`` is set; returns every outcome.

    Open loop: a slow or failing server does not slow the sender (up to ``max_in_flight``
    requests in flight); ``on_answer`` sees each outcome as it arrives (a client's state).
    """
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    local = threading.local()

    def send(kind: str, method: str, path: str, kwargs: dict[str, Any]) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.monotonic()
        try:
            response = session.request(method, base_url + path, headers=headers,
                                        timeout=timeout_s, **kwargs)
            status, detail = response.status_code, "" if response.ok else response.text[:200]
        except requests.RequestException as error:
            status, detail = 0, f"{type(error).__name__}: {error}"[:200]
        outcome = Outcome(kind, path, started, time.monotonic() - started, status, detail)
        with lock:
            outcomes.append(outcome)
        if on_answer is not None:
            on_answer(outcome)

    started = time.monotonic()
    with ThreadPoolExecutor(max_in_flight) as pool:
        n = 0
        while not stop.is_set():
            request = next_request(n)
            if request is not None:
                pool.submit(send, *request)
            n += 1
            stop.wait(max(0.0, started + n / rate - time.monotonic()))
    return sorted(outcomes, key=lambda o: o.sent_at)


def window_stats(window: Sequence[Outcome]) -> dict[str, Any]:
    """Count, failures and p50/p99 latency (ms) of the answered requests of one window."""
    latencies = [o.latency_s for o in window if o.ok]
    return {"sent": len(window), "failed": sum(not o.ok for o in window),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None}


class CatalogWorkload:
    """Searches mixed with live catalog writes, remembering which writes were acknowledged.

    Every ``write_every``-th request is a write: two PUTs of new items, then a DELETE of the
    oldest item whose PUT was already acknowledged (so each DELETE follows its PUT's answer, as
    a real client's would), and so on. ``lost_writes`` then asks the server whether every acknowledged write held.
    """

    def __init__(self, queries: Sequence[dict[str, Any]], prefix: str, write_every: int = 4):
        self.queries = queries
        self.prefix = prefix
        self.write_every = write_every
        self.lock = threading.Lock()
        self.sent_puts: set[str] = set()  # every item a PUT was sent for, answered or not
        self.acked_puts: dict[str, str] = {}  # item id -> title, PUT answered 2xx
        self.deletable: list[str] = []
        self.acked_deletes: set[str] = set()
        self.writes = 0

    def __call__(self, n: int) -> tuple[str, str, str, dict[str, Any]]:
        if n % self.write_every:
            return "search", "POST", "/search", {"json": self.queries[n % len(self.queries)]}
        with self.lock:
            self.writes += 1
            victim = self.deletable.pop(0) if self.writes % 3 == 0 and self.deletable else None
        if victim is not None:
            return "delete", "DELETE", f"/items/{victim}", {}
        item = f"{self.prefix}/{n}"
        with self.lock:
            self.sent_puts.add(item)
        return "put", "PUT", f"/items/{item}", {"json": {"title": f"load item {n}"}}

    def answered(self, outcome: Outcome) -> None:
        item = outcome.path.removeprefix("/items/")
        with self.lock:
            if outcome.kind == "put" and outcome.ok:
                self.acked_puts[item] = f"load item {item.rsplit('/', 1)[-1]}"
                self.deletable.append(item)
            elif outcome.kind == "delete" and outcome.ok:
                self.acked_deletes.add(item)

    def lost_writes(self, base_url: str, headers: dict[str, str] | None = None) -> list[str]:
        """Acknowledged writes the catalog does not show: a PUT not readable, a DELETE undone."""
        lost = []
        with requests.Session() as session:
            for item, title in sorted(self.acked_puts.items()):
                answer = session.get(f"{base_url}/items/{item}", headers=headers, timeout=60)
                deleted = item in self.acked_deletes
                if deleted and answer.status_code != 404:
                    lost.append(f"DELETE {item} acknowledged, GET answers {answer.status_code}")
                if not deleted and (answer.status_code != 200
                                    or answer.json()["title"] != title):
                    lost.append(f"PUT {item} acknowledged, GET answers {answer.status_code}")
        return lost


def running_replicas(app: str, deployment: str) -> list[str]:
    """Names of the deployment's live replica actors (what Ray's actor table holds)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if f"SERVE_REPLICA::{app}#{deployment}#" in a["name"])


def kill_replica(app: str, deployment: str) -> None:
    """Kill one replica of ``deployment`` like a crash (no restart: Serve must replace it)."""
    import ray

    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                  if f"SERVE_REPLICA::{app}#{deployment}#" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)


def wait_replaced(app: str, deployment: str, before: set[str], replicas: int,
                  timeout_s: float) -> float:
    """Seconds until Serve runs ``replicas`` replicas again, one of them new (not in
    ``before``, the replica names at the kill). The dead actor leaves Ray's actor table at
    once while Serve still counts it RUNNING until its health check fails, so only a new
    replica name proves the replacement."""
    from ray import serve

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        status = serve.status().applications[app].deployments[deployment]
        names = set(running_replicas(app, deployment))
        if status.replica_states.get("RUNNING", 0) == replicas and names - before:
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"Serve did not replace the killed {deployment} replica in {timeout_s}s")


def measure_fault(base_url: str, app: str, deployment: str, replicas: int,
                  queries: Sequence[dict[str, Any]], rate: float, before_s: float,
                  after_s: float, grace_s: float) -> dict[str, Any]:
    """Load at ``rate``; after ``before_s`` kill one ``deployment`` replica; wait until Serve
    replaced it, plus ``grace_s`` (the proxy learning the route); load ``after_s`` more.

    Returns the outcomes, the workload (its acknowledged writes) and the figures: requests
    sent/failed and p50/p99 before the kill, during recovery and after it, and ``recover_s``
    (kill -> a new replica running).
    """
    workload = CatalogWorkload(queries, prefix=f"fault-{deployment.lower()}")
    stop = threading.Event()
    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(outcomes=run_at_rate(
        base_url, workload, rate, stop, on_answer=workload.answered)))
    load.start()
    time.sleep(before_s)
    replicas_at_kill = set(running_replicas(app, deployment))
    killed_at = time.monotonic()
    kill_replica(app, deployment)
    recover_s = wait_replaced(app, deployment, replicas_at_kill, replicas, timeout_s=180)
    recovered_at = killed_at + recover_s + grace_s
    time.sleep(max(after_s, grace_s))
    stop.set()
    load.join()
    outcomes = result["outcomes"]
    # Before: answered before the kill; after: sent once the replacement serves; during: the
    # rest, including requests in flight at the kill.
    windows: dict[str, list[Outcome]] = {"before": [], "during": [], "after": []}
    for o in outcomes:
        window = "before" if o.sent_at + o.latency_s < killed_at else \
            "after" if o.sent_at >= recovered_at else "during"
        windows[window].append(o)
    return {"outcomes": outcomes, "workload": workload, "recover_s": round(recover_s, 1),
            **{name: window_stats(window) for name, window in windows.items()}}

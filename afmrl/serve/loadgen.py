"""A bounded closed-loop HTTP load generator: N clients, each sending its next request as soon as
the previous one is answered, for a fixed time (the load tests and bench/bench_serve.py)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

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

"""Shared fixtures: the shared data sets, a real local Ray cluster, a tiny-model cache.

Tests use the real data under ../shared/data (never copied into the repo) and skip with a clear
reason on a machine that does not have it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray's own metrics threads (OpenTelemetry export) crashed an actor with SIGSEGV in one CI proof
# (ray-project/ray #22981, #36885 are older ones); no test reads Ray's metrics, so test clusters
# and the jobs they start collect none.
os.environ.setdefault("RAY_enable_metrics_collection", "0")

from afmrl.config import DEFAULT_SHARED_DATA  # noqa: E402

SHARED_DATA = Path(os.environ.get("AFMRL_SHARED_DATA", DEFAULT_SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data sets; missing ones skip the test, or fail it where the data is required
    (CI sets AFMRL_REQUIRE_SHARED_DATA=1: a lost data set must not turn tests into skips)."""
    missing = [name for name in ("grocery_store", "pricerunner")
               if not (SHARED_DATA / name / "items.csv").is_file()]
    if missing:
        message = f"shared data {missing} not found at {SHARED_DATA} (set AFMRL_SHARED_DATA)"
        if os.environ.get("AFMRL_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def mini_catalog(shared_data):
    from afmrl.data import grocery_catalog

    return grocery_catalog(shared_data, "items_mini_packages.csv")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Tiny models built once per session (deterministic, offline)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_generator(model_cache) -> Path:
    from afmrl.models.tiny import build_tiny_generator

    return build_tiny_generator(model_cache / "tiny-qwen2-vl", seed=0)


def ensure_ray():
    """A real local Ray cluster (4 logical CPUs on 2 cores, see stack.md), started on first use.

    One cluster serves the whole session; a test that shuts it down (the end-to-end job owns
    its own cluster) gets it restarted for the next test. It is stopped at session end
    (``pytest_sessionfinish``), never with `ray stop`, which would kill every cluster here.
    """
    import ray

    from afmrl.config import RayConfig
    from afmrl.utils.ray_utils import init_ray

    # No dashboard: it adds processes and start-up time to every test cluster; the user-facing
    # default (dashboard on) is exercised by the end-to-end and job-submission tests.
    init_ray(RayConfig(num_cpus=4, namespace="afmrl-tests", dashboard=False))
    return ray


@pytest.fixture
def ray_local():
    return ensure_ray()


def pytest_sessionfinish(session, exitstatus):
    import ray

    if ray.is_initialized():
        ray.shutdown()

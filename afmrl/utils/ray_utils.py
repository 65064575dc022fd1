"""Ray bootstrap, resource pre-flight and timeouts on every remote call.

Silent hangs (a placement group that never fits, an actor that died) are the most common way
distributed ML jobs waste hours; every helper here turns them into an error that says what to do.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import ray

from afmrl.config import RayConfig


class ResourceShortfall(RuntimeError):
    """The cluster cannot satisfy what a stage asks for; the message lists the gap."""


class RemoteCallTimeout(TimeoutError):
    """A remote call did not answer in time (dead or stuck actor)."""


def init_ray(config: RayConfig) -> dict[str, float]:
    """Join ``config.address`` / $RAY_ADDRESS, or start a local cluster; return its resources."""
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"namespace": config.namespace, "log_to_driver": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            num_cpus = config.num_cpus or max(4, 2 * (os.cpu_count() or 1))
            ray.init(num_cpus=num_cpus, include_dashboard=config.dashboard,
                     dashboard_host="127.0.0.1", **kwargs)
    return dict(ray.cluster_resources())


def preflight(request: dict[str, float], what: str) -> None:
    """Fail fast when the cluster's *total* resources cannot hold ``request`` (e.g. {"CPU": 4}).

    Autoscaling clusters may add nodes later, so only the totals (not what is free now) are
    compared; set RAY_ADDRESS to a cluster with enough capacity or lower the request.
    """
    total = ray.cluster_resources()
    gaps = [f"{name}: need {amount:g}, cluster has {total.get(name, 0.0):g}"
            for name, amount in request.items() if amount > total.get(name, 0.0) + 1e-9]
    if gaps:
        raise ResourceShortfall(
            f"{what} cannot be scheduled on this Ray cluster ({'; '.join(gaps)}). Lower the "
            f"request in the config (workers/actors/cpus/gpus) or connect to a larger cluster "
            f"(ray.address / $RAY_ADDRESS).")


def get_with_timeout(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` with a timeout whose error names the call; never waits forever."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as error:
        raise RemoteCallTimeout(f"{what} did not answer within {timeout_s:g}s") from error


def kill_actors(actors: Sequence[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # already dead: nothing to release
            pass

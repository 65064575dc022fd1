"""Ray bootstrap, resource pre-flight and timeouts on every remote call.

Silent hangs (a placement group that never fits, an actor that died) are the most common way
distributed ML jobs waste hours; every helper here turns them into an error that says what to do.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import ray

from afmrl.config import RayConfig

log = logging.getLogger("afmrl")

if TYPE_CHECKING:
    from afmrl.utils.device import Placement


# For actors whose calls are pure functions of their arguments (the RL reward's embedder and
# evaluators): Ray restarts one that died (OOM, a lost node, kill -9) and retries its calls, so
# a crash costs a reload instead of failing the job, and the answers are the same.
RESTART_PURE_ACTOR = {"max_restarts": 2, "max_task_retries": 2}
# Ray Train worker groups (AGCL, RAR) restarted after a rank dies; each resumes from its newest
# checkpoint.
WORKER_GROUP_RESTARTS = 2


def fit_restarting(make_trainer: Callable[[], Any], restarts: int = WORKER_GROUP_RESTARTS) -> Any:
    """``make_trainer().fit()``, fitted afresh (resuming from the newest checkpoint) when a rank
    died while Ray Train was starting the worker group. Ray 2.60 launches the training function
    outside the handler that makes start-up failures retryable, so a rank killed between its
    set-up and that launch fails ``fit`` with a ``ControllerError`` that ``FailureConfig`` does
    not retry (found by bench/kill_anywhere.py on the CIT stage). Other errors are raised."""
    from ray.exceptions import RayActorError
    from ray.train import ControllerError

    for attempt in range(restarts + 1):
        try:
            return make_trainer().fit()
        except ControllerError as error:
            if attempt == restarts or not isinstance(error.controller_failure, RayActorError):
                raise
            log.warning("a Ray Train worker died while its group started (%s); starting the "
                        "group again (%d of %d)", type(error.controller_failure).__name__,
                        attempt + 1, restarts)


class ResourceShortfall(RuntimeError):
    """The cluster cannot satisfy what a stage asks for; the message lists the gap."""


class RemoteCallTimeout(TimeoutError):
    """A remote call did not answer in time (dead or stuck actor)."""


def init_ray(config: RayConfig) -> dict[str, float]:
    """Join ``config.address`` / $RAY_ADDRESS, or start a local cluster; return its resources."""
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        from afmrl.utils.console import (drop_streamed_noise, is_verbose, quiet_libraries,
                                         ray_runtime_env)

        quiet_libraries()  # before Ray logs its start-up lines
        # ray.init sets the "ray" logger to its logging_level (INFO by default) as it starts.
        kwargs: dict[str, Any] = {"namespace": config.namespace, "log_to_driver": True,
                                  "runtime_env": ray_runtime_env(),
                                  "logging_level": logging.INFO if is_verbose() else
                                  logging.ERROR}
        if address:
            ray.init(address=address, **kwargs)
        else:
            num_cpus = config.num_cpus or max(4, 2 * (os.cpu_count() or 1))
            ray.init(num_cpus=num_cpus, include_dashboard=config.dashboard,
                     dashboard_host="127.0.0.1", **kwargs)
        quiet_libraries()  # Ray configures its loggers when it starts: quiet them again
        drop_streamed_noise()
    return dict(ray.cluster_resources())


def preflight(request: "dict[str, float] | Sequence[Placement]", what: str) -> None:
    """Fail fast when the cluster's *total* resources cannot hold ``request``: a resource dict
    (e.g. {"CPU": 4}) or the ``Placement``s of ``afmrl.utils.device`` a stage will create (then
    each process must also fit on one node: an actor cannot span nodes).

    Autoscaling clusters may add nodes later, so only the totals and the largest node (not what
    is free now) are compared; set RAY_ADDRESS to a cluster with enough capacity or lower the
    request.
    """
    total = ray.cluster_resources()
    gaps = []
    if not isinstance(request, dict):
        placements, request = list(request), {}
        for placement in placements:
            for name, amount in placement.total().items():
                request[name] = request.get(name, 0.0) + amount
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        for placement in placements:
            bundle = {k: v for k, v in placement.bundle().items() if v}
            if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())
                       for node in nodes):
                gaps.append(f"one {placement.component} needs {_show(bundle)}, no node has that "
                            f"much (set by {placement.gpu_key or 'its CPU share'})")
    gaps += [f"{name}: need {_amount(name, amount)}, cluster has "
             f"{_amount(name, total.get(name, 0.0))}"
             for name, amount in request.items() if amount > total.get(name, 0.0) + 1e-9]
    if gaps:
        raise ResourceShortfall(
            f"{what} cannot be scheduled on this Ray cluster ({'; '.join(gaps)}). Lower the "
            f"request in the config (workers/actors/cpus/gpus) or connect to a larger cluster "
            f"(ray.address / $RAY_ADDRESS).")


def _amount(name: str, amount: float) -> str:
    return f"{amount / (1 << 30):.1f} GiB" if name == "memory" else f"{amount:g}"


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{_amount(name, amount)} {name}" for name, amount in resources.items())


def get_with_timeout(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` with a timeout whose error names the call; never waits forever."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as error:
        raise RemoteCallTimeout(f"{what} did not answer within {timeout_s:g}s") from error


@contextmanager
def stall_deadline(dataset: Any, timeout_s: float, what: str,
                   needs: dict[str, float] | None = None) -> Iterator[Any]:
    """Run the Ray Data execution triggered inside the block under ``timeout_s``: it fails with
    ``RemoteCallTimeout`` when no block moves for that long (a stuck actor or read, an actor pool
    the cluster cannot place). Ray Data's own no-progress guard does the watching; its default
    (30 min) would let a hung job sit far longer than any other remote call of afmrl.

    ``needs`` is what must be free for the job to move at all (its smallest actor pool and one
    task). ``preflight`` checks the cluster's totals; actors of other work can still hold what is
    free now, and then the job waits. Said at once as a warning, and in the error if it stops.
    """
    from ray.data.exceptions import ExecutionTimeoutError

    if needs and (short := _not_free(needs)):
        log.warning("%s may wait: %s", what, short)
    dataset.context.execution_no_progress_timeout_s = timeout_s
    try:
        yield dataset
    except ExecutionTimeoutError as error:
        short = _not_free(needs) if needs else ""
        raise RemoteCallTimeout(
            f"{what}: no block moved for {timeout_s:g}s (ray.call_timeout_s), so the job was "
            f"stopped. An actor or task is stuck, or the cluster cannot start the actor pool; "
            f"`ray status` shows pending resources. Raise ray.call_timeout_s only if one batch "
            f"legitimately takes longer."
            + (f" When it stopped, {short}" if short else "")) from error


def pool_needs(actors: "Placement", min_actors: int) -> dict[str, float]:
    """What must be free for a Ray Data job with an actor pool to move: its smallest pool, and
    one CPU for the read/repartition tasks (Ray Data's default task request), which wait for the
    pool's actors otherwise."""
    pool = dataclasses.replace(actors, count=min_actors).total()
    needs = {name: amount for name, amount in pool.items() if amount}
    needs["CPU"] = needs.get("CPU", 0.0) + 1.0
    return needs


def _not_free(needs: dict[str, float]) -> str:
    """Why ``needs`` does not fit in what the cluster has free now ("" when it does)."""
    free = ray.available_resources()
    if all(free.get(name, 0.0) + 1e-9 >= amount for name, amount in needs.items()):
        return ""
    total = ray.cluster_resources()
    shown = {name: free.get(name, 0.0) for name in needs}
    return (f"it needs {_show(needs)} free and the cluster has {_show(shown)} free (of "
            f"{_show({name: total.get(name, 0.0) for name in needs})}): other actors hold the "
            f"rest (`ray list actors --filter state=ALIVE`). Stop them, or give the cluster more "
            f"nodes.")


def kill_actors(actors: Sequence[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # already dead: nothing to release
            pass

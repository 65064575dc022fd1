"""Ray pre-flight and call timeouts on a real local cluster."""
import time

import pytest
import ray

from afmrl.utils.ray_utils import RemoteCallTimeout, ResourceShortfall, get_with_timeout, preflight


def test_preflight_reports_the_shortfall(ray_local):
    preflight({"CPU": 1}, "small job")
    with pytest.raises(ResourceShortfall, match=r"GPU: need 2, cluster has 0"):
        preflight({"CPU": 1, "GPU": 2}, "training")
    with pytest.raises(ResourceShortfall, match=r"CPU: need 64"):
        preflight({"CPU": 64}, "extraction")


def test_stuck_call_times_out_with_its_name(ray_local):
    @ray.remote(num_cpus=0)
    def stuck():
        time.sleep(60)

    ref = stuck.remote()
    with pytest.raises(RemoteCallTimeout, match="slow thing did not answer within 1s"):
        get_with_timeout(ref, 1, "slow thing")
    ray.cancel(ref, force=True)


class _Trainer:
    """Stands in for a TorchTrainer whose fit fails as Ray 2.60's controller fails it when a
    rank dies between its set-up and the training function's launch (a window too short to
    hit on purpose; bench/kill_anywhere.py hit it on the CIT stage): the controller wraps the
    rank's real ActorDiedError in a ControllerError its FailureConfig does not retry."""

    def __init__(self, failures: list[Exception], fits: list[int]):
        self.failures, self.fits = failures, fits

    def fit(self):
        self.fits.append(1)
        if self.failures:
            raise self.failures.pop(0)
        return "trained"


def _dead_actor_error() -> Exception:
    @ray.remote(num_cpus=0)
    class Rank:
        def ping(self):
            return 1

    rank = Rank.remote()
    ray.kill(rank)
    try:
        ray.get(rank.ping.remote(), timeout=30)
    except ray.exceptions.RayActorError as error:
        return error
    raise AssertionError("a killed actor answered")


def test_fit_restarting_starts_the_group_again_after_a_rank_died_at_start(ray_local):
    from ray.train import ControllerError

    from afmrl.utils.ray_utils import fit_restarting

    died = ControllerError(_dead_actor_error())
    fits: list[int] = []
    failures = [died, died]
    assert fit_restarting(lambda: _Trainer(failures, fits), restarts=2) == "trained"
    assert len(fits) == 3
    # Out of restarts, or a controller error that is not a dead rank: raised as it came.
    fits.clear()
    failures = [died, died, died]
    with pytest.raises(ControllerError):
        fit_restarting(lambda: _Trainer(failures, fits), restarts=2)
    assert len(fits) == 3
    fits.clear()
    failures = [ControllerError(ValueError("a bug in the controller"))]
    with pytest.raises(ControllerError, match="a bug in the controller"):
        fit_restarting(lambda: _Trainer(failures, fits), restarts=2)
    assert len(fits) == 1

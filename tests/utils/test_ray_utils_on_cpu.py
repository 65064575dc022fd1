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

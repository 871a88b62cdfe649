"""Session-scoped local Ray cluster for the ``@pytest.mark.ray`` integration tests (loopback only, small store)."""

from __future__ import annotations

import os

for _k, _v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray.init(num_cpus=4)`` once per session (logical oversubscription of the 2-CPU box), shut down at the end."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=4, object_store_memory=512 * 2**20, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()

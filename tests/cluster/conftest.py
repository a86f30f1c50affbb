"""`local_ray`: a Ray started in the test process (`num_cpus=3`: on two cores, one left to Ray
Data's read tasks beside two workers), shut down after the module. The module's own functions
travel to the workers by value (a test module is not importable there)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray(request):
    pytest.importorskip("ray")
    import ray
    import ray.cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(request.module)
    yield
    ray.shutdown()

"""Fixtures shared by every test layer."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance for the whole test session (2 CPUs, no dashboard).

    Tests that need Ray take this fixture; it is started on first use and shut
    down at the end of the session. ``$RAY_ADDRESS`` is ignored so that the
    tests never land on a real cluster.
    """
    pytest.importorskip("ray")
    from orchestrator.ray_runtime import init_ray, shutdown_ray

    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        yield init_ray(num_cpus=2)
    finally:
        shutdown_ray()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved

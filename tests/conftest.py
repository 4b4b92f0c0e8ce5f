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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny event dataset (3 points x 3000 events, generated without Ray), shared by the Tune tests."""
    from orchestrator.generate import generate

    root = tmp_path_factory.mktemp("tune-data") / "events"
    generate(root, [-1.0, 0.0, 1.0], 3000, 5, [(1.1, 6.0)], chunk_size=3000, workers=0)
    return root


@pytest.fixture
def own_mlflow_store(monkeypatch):
    """Each test's runs go to its own OUT/mlflow.db: ``mlflow.set_tracking_uri`` (called by the
    Tracker) also sets ``$MLFLOW_TRACKING_URI`` for the rest of the process, which a later
    Tracker would otherwise take as the user's choice."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def tiny_sweep_data():
    """The data settings of the tiny Deep Sets sweeps (``spec_overrides``): small sets, so that a trial
    trains in about a second."""
    return {"set_size": 200, "sets_per_point": 8}


@pytest.fixture
def interrupt_after_first_trial(tmp_path):
    """A Tune callback that sends this process SIGINT (as Ctrl+C would) when the first trial completes,
    once per test (a marker file says so)."""
    import signal
    from pathlib import Path

    from ray import tune

    marker = Path(tmp_path) / "interrupted"

    class InterruptOnce(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGINT)

    return InterruptOnce()

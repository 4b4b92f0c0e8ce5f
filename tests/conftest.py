"""Fixtures shared by every test layer."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance for the whole test session (2 CPUs, no dashboard).

    Tests that need Ray take this fixture; it is started on first use and shut
    down at the end of the session. Under ``make test`` (two pytest-xdist
    processes) each process has its own session, so its own instance. ``$RAY_ADDRESS`` is ignored so that the
    tests never land on a real cluster.
    """
    pytest.importorskip("ray")
    from orchestrator.runtime.ray import init_ray, shutdown_ray

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
    from orchestrator.generate.dataset import generate

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


#: A `wcscan run` config that runs every estimator in seconds (6^3 images: the small-image path of the ResNet).
TINY_RUN = """\
name: tiny
seed: 3
scan: {dc9: "-1:1:3", events_per_point: 12000}
images: {bins: 6, events_per_image: 400, images_per_point: 10, val_fraction: 0.2}
models:
  resnet3d: {depth: 10, width: 4, train: {epochs: 1, batch_size: 8}}
  deepsets: {hidden: 8, phi_layers: 1, rho_layers: 1, set_size: 400, sets_per_point: 6, train: {epochs: 1, batch_size: 4}}
  event_classifier: {hidden: 8, layers: 1, events_per_point: 3000, train: {epochs: 1, batch_size: 512}}
evaluation: {dc9: [-1.0, -0.5], sets: 3, events_per_set: 400}
"""


@pytest.fixture(scope="session")
def tiny_run_yaml():
    """The text of a tiny `wcscan run` config (every estimator, seconds on 2 cores)."""
    return TINY_RUN


@pytest.fixture(scope="session")
def free_port():
    """A function that returns a free TCP port on 127.0.0.1."""
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return port


@pytest.fixture(scope="session")
def ff_tables_cache(tmp_path_factory):
    """One cache folder for the small bi-quadratic tables (3 form factors) of every test file: each table
    (30 flavio calls) is built once per session (per pytest-xdist process under ``make test``), then loaded."""
    return tmp_path_factory.mktemp("ff-tables")

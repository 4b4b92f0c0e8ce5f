"""A tiny event dataset shared by the Tune tests (3 points x 3000 events, generated without Ray)."""

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from orchestrator.generate import generate

    root = tmp_path_factory.mktemp("tune-data") / "events"
    generate(root, [-1.0, 0.0, 1.0], 3000, 5, [(1.1, 6.0)], chunk_size=3000, workers=0)
    return root



@pytest.fixture(autouse=True)
def _own_mlflow_store(monkeypatch):
    """Each test's runs go to its own OUT/mlflow.db: ``mlflow.set_tracking_uri`` (called by the
    Tracker) also sets ``$MLFLOW_TRACKING_URI`` for the rest of the process, which a later
    Tracker would otherwise take as the user's choice."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

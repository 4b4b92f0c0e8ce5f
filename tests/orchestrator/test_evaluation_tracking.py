"""Evaluation of any estimator, and the MLflow parent/child layout."""

import numpy as np
import pytest

from orchestrator.evaluate.estimators import evaluate, summarise
from orchestrator.track.runs import Tracker, default_tracking_uri, flatten, resolve_tracking_uri


class Fixed:
    """Predicts truth + offset + a known spread, with unit uncertainties."""

    name = "fixed"

    def __init__(self, offset):
        self.offset = offset

    def predict(self, sets):
        truth = sets[:, 0, 0]
        spread = np.array([-0.1, 0.1] * (len(sets) // 2))
        return truth + self.offset + spread, np.full(len(sets), 0.1)


def _sets(d, m=4, n=3):
    s = np.zeros((m, n, 4))
    s[:, :, 0] = d  # the fake estimator reads the truth from here
    return s


def test_evaluate_computes_the_metrics_per_point():
    ev = evaluate(Fixed(0.05), {-1.0: _sets(-1.0), 0.5: _sets(0.5)}, {-1.0: 0.2, 0.5: 0.1}, on_grid=[-1.0])
    row = {r["dc9_true"]: r for r in ev.rows}
    assert row[-1.0]["bias"] == pytest.approx(0.05)
    assert row[-1.0]["sigma"] == pytest.approx(np.std([-0.1, 0.1, -0.1, 0.1], ddof=1))
    assert row[0.5]["sigma_over_crb"] == pytest.approx(row[0.5]["sigma"] / 0.1)
    assert row[-1.0]["on_grid"] and not row[0.5]["on_grid"]
    assert row[0.5]["n_events"] == 3 and row[0.5]["n_sets"] == 4


def test_summary_has_linearity_and_worst_ratios():
    rows = [
        {"dc9_true": d, "mean": 0.9 * d + 0.1, "sigma": 0.1, "sigma_over_crb": r, "bias": 0.1 - 0.1 * d,
         "sigma_crb": 0.1, "mse": 0.02, "pull_width": float("nan")}
        for d, r in ((-1.0, 1.2), (0.0, 1.1), (1.0, 1.3))
    ]
    s = summarise(rows)
    assert s["linearity_slope"] == pytest.approx(0.9)
    assert s["linearity_intercept"] == pytest.approx(0.1)
    assert s["sigma_over_crb_max"] == pytest.approx(1.3)
    assert s["abs_bias_over_crb_max"] == pytest.approx(2.0)
    assert "pull_width_mean" not in s


def test_default_store_is_sqlite_under_the_output(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri(tmp_path, "sqlite:////x.db") == "sqlite:////x.db"
    assert default_tracking_uri(tmp_path).startswith("sqlite:///")


def test_flatten_nests_keys():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]"}


def test_tracker_writes_a_parent_and_child_runs_with_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow
    from mlflow.tracking import MlflowClient

    with Tracker(tmp_path, run_name="job") as tr:
        tr.params({"seed": 1, "scan": {"events": 10}})
        for name in ("ml_fit", "deepsets"):
            with tr.child(name):
                tr.metrics({"sigma_over_crb_mean": 1.01, "nan_is_dropped": float("nan")})
                tr.text("dc9_true\n0.0\n", "evaluation/points.csv")
        parent_id = tr.run_id
    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("wcscan")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.info.run_name for r in children) == ["deepsets", "ml_fit"]
    assert all(r.info.status == "FINISHED" for r in runs)
    parent = client.get_run(parent_id)
    assert parent.data.params["scan.events"] == "10"
    assert "nan_is_dropped" not in children[0].data.metrics
    files = [f.path for f in client.list_artifacts(children[0].info.run_id, "evaluation")]
    assert files == ["evaluation/points.csv"]
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlartifacts").is_dir()
    mlflow.set_tracking_uri(None)


def test_a_second_job_in_the_same_process_uses_its_own_default_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with Tracker(tmp_path / "a"):
        pass
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ
    with Tracker(tmp_path / "b") as tr:
        assert tr.uri == default_tracking_uri(tmp_path / "b")
    assert (tmp_path / "b" / "mlflow.db").exists()

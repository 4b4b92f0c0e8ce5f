"""Tiny Ray Tune sweeps end to end: MLflow parent and children, retry after a crash, resume."""

import os
import signal
from pathlib import Path

import pytest
from ray import tune as ray_tune

from tune.tuner import CRASH_ENV, run_sweep

#: Small sets, so that a trial of a tiny Deep Sets trains in about a second.
TINY_DATA = {"set_size": 200, "sets_per_point": 8}


def _sweep(dataset, out, **kw):
    args = dict(num_samples=2, search="random", scheduler="fifo", epochs=1, tiny=True, spec_overrides=TINY_DATA,
                eval_sets=3, max_concurrent=2)
    args.update(kw)
    return run_sweep("deepsets", dataset, out, **args)


@pytest.fixture(scope="module")
def tiny_sweep(ray_local, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return _sweep(tiny_dataset, out), out


def test_tiny_sweep_runs_every_trial_and_evaluates_the_best(tiny_sweep):
    res, out = tiny_sweep
    assert len(res.trials) == 2 and res.errors == 0
    assert res.best["best_val_loss"] == min(t["best_val_loss"] for t in res.trials)
    assert [r["dc9_true"] for r in res.evaluation.rows] == [-1.0, 0.0, 1.0]
    assert all(r["sigma_crb"] > 0 for r in res.evaluation.rows)
    assert (out / "evaluation" / "tune-deepsets" / "points.csv").is_file()


def test_tiny_sweep_logs_a_parent_and_one_child_per_trial(tiny_sweep):
    from mlflow.tracking import MlflowClient

    res, out = tiny_sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("wcscan")
    runs = client.search_runs([exp.experiment_id])
    parent = client.get_run(res.run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.data.tags["kind"] == "tune" and "sigma_over_crb_mean" in parent.data.metrics
    assert parent.data.params["sweep.model"] == "deepsets"
    for child in children:
        assert {"hidden", "lr", "batch_size", "pool"} <= set(child.data.params)
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 1
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"evaluation", "figures"} <= arts


def test_a_crashed_trial_is_retried_from_its_checkpoint(ray_local, tiny_dataset, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(marker))
    res = _sweep(tiny_dataset, tmp_path / "out", num_samples=1, epochs=2)
    assert marker.exists()  # it did crash once
    assert res.errors == 0
    last = res.trials[0]["result"].metrics
    # resumed from the checkpoint of epoch 0: epoch 1 is the 2nd report (from scratch it would be the 3rd)
    assert last["epoch"] == 1 and last["training_iteration"] == 2


class InterruptOnce(ray_tune.Callback):
    """Sends this process SIGINT (as Ctrl+C would) when the first trial completes, once (a marker file says so)."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not Path(self.marker).exists():
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_finishes_an_interrupted_sweep_without_rerunning_finished_trials(ray_local, tiny_dataset, tmp_path):
    out = tmp_path / "out"
    first = _sweep(tiny_dataset, out, max_concurrent=1, callbacks=[InterruptOnce(str(tmp_path / "interrupted"))])
    finished = {t["trial_id"]: t["result"].metrics["timestamp"] for t in first.trials if t["epochs"]}
    assert len(finished) == 1
    with pytest.raises(Exception, match="--resume"):
        _sweep(tiny_dataset, out, max_concurrent=1)
    resumed = _sweep(tiny_dataset, out, max_concurrent=1, resume=True)
    assert len(resumed.trials) == 2 and all(t["epochs"] == 1 for t in resumed.trials)
    again = {t["trial_id"]: t["result"].metrics["timestamp"] for t in resumed.trials}
    for trial_id, stamp in finished.items():
        assert again[trial_id] == stamp

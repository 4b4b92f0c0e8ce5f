"""`wcscan tune` as a job: MLflow parent and children, the best trial against sigma_CRB, resume into the
same parent run, and a sweep that logs to a real `mlflow server` on loopback."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.jobs.tune import run_tune

pytestmark = pytest.mark.usefixtures("own_mlflow_store")

BIN = Path(sys.executable).parent


def _tune(data, dataset, out, **kw):
    args = dict(num_samples=2, search="random", scheduler="fifo", epochs=1, tiny=True, spec_overrides=data,
                eval_sets=3, max_concurrent=2)
    args.update(kw)
    return run_tune("deepsets", dataset, out, **args)


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("wcscan")
    return client, client.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def tiny_tune(ray_local, tiny_dataset, tiny_sweep_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return _tune(tiny_sweep_data, tiny_dataset, out), out


def test_the_best_trial_is_evaluated_against_the_bound(tiny_tune):
    res, out = tiny_tune
    assert len(res.trials) == 2 and res.errors == 0
    assert res.best["best_val_loss"] == min(t["best_val_loss"] for t in res.trials)
    assert [r["dc9_true"] for r in res.evaluation.rows] == [-1.0, 0.0, 1.0]
    assert all(r["sigma_crb"] > 0 for r in res.evaluation.rows)
    assert (out / "evaluation" / "tune-deepsets" / "points.csv").is_file()


def test_a_sweep_is_a_parent_run_with_one_child_per_trial(tiny_tune):
    res, out = tiny_tune
    client, runs = _runs(f"sqlite:///{out.resolve()}/mlflow.db")
    parent = client.get_run(res.run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert parent.data.tags["kind"] == "tune" and "sigma_over_crb_mean" in parent.data.metrics
    assert parent.data.params["sweep.model"] == "deepsets"
    assert parent.data.tags["best_trial_id"] in {c.data.tags["trial_id"] for c in children}
    assert parent.data.tags["best.hidden"] == str(res.best["config"]["hidden"])
    for child in children:
        assert {"hidden", "lr", "batch_size", "pool"} <= set(child.data.params)
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 1
    arts = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"evaluation", "figures"} <= arts


def test_resume_logs_into_the_same_parent_run_without_duplicates(
    ray_local, tiny_dataset, tiny_sweep_data, tmp_path, interrupt_after_first_trial
):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match="--resume"):  # the CLI exits 130 on it
        _tune(tiny_sweep_data, tiny_dataset, out, max_concurrent=1, callbacks=[interrupt_after_first_trial])
    client, runs = _runs(f"sqlite:///{out.resolve()}/mlflow.db")
    (killed,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert killed.info.status == "KILLED" and killed.data.tags["interrupted"] == "true"
    assert len(runs) == 2  # the parent and the one trial that finished before the interruption
    resumed = _tune(tiny_sweep_data, tiny_dataset, out, max_concurrent=1, resume=True)
    assert resumed.run_id == killed.info.run_id
    client, runs = _runs(f"sqlite:///{out.resolve()}/mlflow.db")
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == resumed.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(t["trial_id"] for t in resumed.trials)
    for child in children:  # one epoch each: the trial finished before the interruption is not logged twice
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 1
    assert client.get_run(resumed.run_id).data.tags["resumed"] == "true"


@pytest.fixture
def mlflow_server(tmp_path, free_port):
    """``mlflow server`` on loopback with a SQLite backend and a proxied artifact store."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
         "--artifacts-destination", (store / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with code {proc.returncode}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 60 s")
        yield url, store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_sweep_logs_to_an_mlflow_server(ray_local, tiny_dataset, tiny_sweep_data, tmp_path, mlflow_server):
    url, store = mlflow_server
    res = _tune(tiny_sweep_data, tiny_dataset, tmp_path / "out", tracking_uri=url)
    assert res.tracking_uri == url
    assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing went to the local default
    client, runs = _runs(url)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == res.run_id]
    assert len(children) == 2 and client.get_run(res.run_id).data.tags["kind"] == "tune"
    assert {a.path for a in client.list_artifacts(res.run_id)} >= {"evaluation", "figures"}
    # the server stored the artifacts (proxied), not the client
    assert list((store / "artifacts").rglob("points.csv"))


def test_a_best_trial_without_a_checkpoint_is_trained_again_and_evaluated(
    ray_local, tiny_dataset, tiny_sweep_data, tmp_path, monkeypatch
):
    import orchestrator.jobs.tune

    monkeypatch.setattr(orchestrator.jobs.tune, "best_checkpoint", lambda result: None)  # as if storage were cleaned
    res = _tune(tiny_sweep_data, tiny_dataset, tmp_path / "out", num_samples=1)
    assert [r["dc9_true"] for r in res.evaluation.rows] == [-1.0, 0.0, 1.0]
    client, _ = _runs(f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db")
    assert client.get_run(res.run_id).data.tags["best_retrained"] == "true"

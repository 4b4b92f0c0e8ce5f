"""An MLflow server that goes away mid-run costs no local output, and ``wcscan track`` logs the directory later.

A real ``mlflow server`` on 127.0.0.1 is stopped while the tiny run trains Deep Sets: the parent run, its
params and the first estimators reached the server; nothing after that could.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.cli import main

ESTIMATORS = ["deepsets", "event_posterior", "ml_fit", "resnet3d"]


def _wait_healthy(uri: str, proc, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"mlflow server at {uri} did not come up in {timeout:g} s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, free_port):
    """A real MLflow server on loopback; ``stop()`` kills it (and its workers) at once."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=root)

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    try:
        _wait_healthy(uri, proc)
        yield uri, stop
    finally:
        stop()


@pytest.fixture(scope="module")
def run_without_its_server(tmp_path_factory, tiny_run_yaml, mlflow_server):
    """The tiny run, its MLflow server killed when Deep Sets starts training; (out, uri, result)."""
    from orchestrator.jobs.run import run_config

    uri, stop = mlflow_server
    tmp = tmp_path_factory.mktemp("run-lost-server")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(tiny_run_yaml)
    out = tmp / "out"
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # refused at once: the test need not wait for back-off

    def stage(message: str) -> None:
        if message == "training deepsets":
            stop()

    try:
        _, result = run_config(str(cfg), out, tracking_uri=uri, workers=0, stage=stage)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved
    return out, uri, result


def test_a_server_that_goes_away_mid_run_costs_no_local_output(run_without_its_server):
    out, _, _ = run_without_its_server
    assert (out / "events" / "manifest.json").is_file()
    assert all((out / "evaluation" / name / "points.csv").is_file() for name in ESTIMATORS)
    assert "deepsets" in (out / "report.md").read_text()
    assert {p.stem for p in (out / "figures").glob("*.png")} >= {"linearity", "sensitivity", "sigma_over_crb"}


def test_the_run_ends_with_one_line_saying_what_was_not_logged_and_how_to_log_it(run_without_its_server):
    out, uri, result = run_without_its_server
    line = result.unlogged
    assert line is not None and "\n" not in line
    assert "deepsets" in line and f"wcscan track {out} --tracking-uri {uri}" in line


def test_wcscan_track_logs_the_finished_directory_as_the_job_would_have(run_without_its_server, tmp_path):
    from mlflow.tracking import MlflowClient

    out, _, _ = run_without_its_server
    store = f"sqlite:///{tmp_path / 'later.db'}"
    assert main(["track", str(out), "--tracking-uri", store]) == 0
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and parent[0].data.params["scan.events_per_point"] == "12000"
    assert sorted(r.info.run_name for r in children) == ESTIMATORS
    assert all("sigma_over_crb_mean" in r.data.metrics for r in children)
    deepsets = next(r for r in children if r.info.run_name == "deepsets")
    assert sorted(a.path for a in client.list_artifacts(deepsets.info.run_id)) == ["evaluation", "model"]


def test_track_refuses_a_directory_that_is_no_job_output_in_one_line(capsys, tmp_path):
    code = main(["track", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "holds no tracking journal" in err[0]


def test_track_refuses_a_job_that_did_not_finish(capsys, tmp_path):
    journal = tmp_path / "tracking" / "journal.jsonl"
    journal.parent.mkdir()
    journal.write_text('{"op": "start", "experiment": "wcscan", "run_name": "x"}\n{"op": "params", "run": [], '
                       '"values": {"a": "1"}}\n')
    code = main(["track", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and "did not finish" in err

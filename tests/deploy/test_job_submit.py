"""`ray job submit --working-dir .` against a real Ray head on loopback, with token authentication on, runs a
tiny `wcscan run`, then a tiny `wcscan globalfit` (the demo's observables) on the same head (deploy/README.md).

The head is started as users start one, ``ray start --head`` (with its dashboard, from ``ray[default]``, a
dependency of wcscan, as in deploy/Dockerfile: the job server lives there), on a machine that has a token:
``RAY_AUTH_MODE`` unset and the token made by ``ray get-auth-token --generate``. Ray then turns token
authentication on by itself. The token lives under ``tmp_path`` (``RAY_AUTH_TOKEN_PATH``), so the user's
``~/.ray`` is neither read nor written.

The test checks that a submit without the token, and one with a wrong token, are refused; that the submit
with ``RAY_AUTH_MODE=token`` and the token succeeds; that inside the job ``wcscan`` joined that head through
``$RAY_ADDRESS`` (its generation actors ran there, as part of the job); and what the job wrote to MLflow. The
global fit's job gets ``WCSCAN_CACHE`` (a temporary cache) through its runtime_env and ``--tracking-uri`` on its
command line; the test checks that it succeeded, its summary's method rows, the cache it filled and its MLflow
parent run with one child per method.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Variables through which a token or an auth mode could leak in from the user's shell.
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _clean_env(**extra):
    """This process's environment without Ray's auth variables, RAY_ADDRESS and MLFLOW_TRACKING_URI (the job
    must join the test's head and write OUT/mlflow.db), with this venv first on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES + ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env.update(extra)
    return env


@pytest.fixture
def auth_token(tmp_path):
    """A token made by ``ray get-auth-token --generate`` (in a throwaway HOME); returns (path, token)."""
    home = tmp_path / "token-home"
    home.mkdir()
    proc = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=_clean_env(HOME=str(home)),
                          capture_output=True, text=True, timeout=120)
    path = home / ".ray" / "auth_token"
    assert proc.returncode == 0 and path.is_file(), proc.stdout + proc.stderr
    token = path.read_text().strip()
    assert token and token == proc.stdout.strip()
    return path, token


def _stop_head(head, temp):
    """Stop the head this fixture started, and only it: SIGTERM to `ray start --block` (which stops the Ray
    processes it started), then SIGKILL to its process group, then any process still naming its temp dir.
    Not `ray stop`: that stops every Ray process on the machine, other people's heads included."""
    import psutil

    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if head.poll() is None:
        head.wait(timeout=30)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(str(temp) in arg for arg in proc.info["cmdline"] or ()):
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.fixture
def loopback_head(free_port, auth_token):
    """A Ray head with its dashboard on 127.0.0.1 (2 CPUs) and token authentication on; yields
    (dashboard URL, env for a `ray` CLI that has the token, token, temp dir)."""
    token_path, token = auth_token
    port, dash, agent = free_port(), free_port(), free_port()
    # `ray start --head` as users run it: RAY_AUTH_MODE unset, a token available.
    head_env = _clean_env(RAY_AUTH_TOKEN_PATH=str(token_path))
    temp = Path("/tmp") / f"wcscan-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent),
         "--temp-dir", str(temp), "--disable-usage-stats"],
        env=head_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        # The dashboard (the job server) and the head's dashboard agent (which runs the jobs) come up
        # separately; a job submitted before the agent is up fails with "No available agent".
        for check in (f"{url}/api/version", f"http://127.0.0.1:{agent}/api/local_raylet_healthz"):
            request = urllib.request.Request(check, headers={"Authorization": f"Bearer {token}"})
            for _ in range(120):
                if head.poll() is not None:
                    pytest.fail(f"`ray start --head` exited with status {head.returncode}")
                try:
                    urllib.request.urlopen(request, timeout=2)
                    break
                except urllib.error.HTTPError as e:  # the server answered: with the token, it must not refuse
                    pytest.fail(f"{check} answered {e.code} to a request carrying the token")
                except OSError:
                    time.sleep(1)
            else:
                pytest.fail(f"the Ray head did not answer {check} in 2 minutes")
        # What a user exports on a machine whose head has token authentication on.
        client_env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
        yield url, client_env, token, temp
    finally:
        _stop_head(head, temp)
        shutil.rmtree(temp, ignore_errors=True)


GLOBALFIT_TINY = """\
name: tiny
seed: 0
observables: observables-demo
grid: {c9: "-2:0:12", c10: "-1:1:12", chunk: 50}
theory_covariance: {draws: 8, seed: 0, chunks: 2}
surrogate: {enabled: true, n_design: 32, n_check: 4, tol: 1.0e-6}
nuisances: false
flavio_check: {enabled: true, n_exp: 1000, stencil: 1.0}
nn: {hidden: 16, layers: 2, epochs: 4, noise_draws: 2}
cgan: {hidden: 16, layers: 2, epochs: 4, noise_draws: 2}
cgan_samples: 200
coverage: {pseudo_experiments: 20, samples: 100, level: 0.68}
asimov: [[-1.0, 0.0]]
"""


def test_ray_job_submit_runs_wcscan_run_and_globalfit_on_a_head_with_token_auth(loopback_head, tmp_path, tiny_run_yaml):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    url, env, token, temp = loopback_head
    config, out = tmp_path / "tiny.yaml", tmp_path / "out"
    config.write_text(tiny_run_yaml)
    submit = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".", "--",
              "wcscan", "run", "--config", str(config), "--out", str(out), "--quiet"]

    # Without the token (no RAY_AUTH_*, and a HOME without ~/.ray/auth_token) the job server refuses the submit;
    # with a wrong token, too.
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    refusals = {
        "Missing authentication token": _clean_env(HOME=str(empty_home)),
        "Invalid authentication token": _clean_env(HOME=str(empty_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * len(token)),
    }
    for reason, bad_env in refusals.items():
        proc = subprocess.run(submit, cwd=REPO, env=bad_env, capture_output=True, text=True, timeout=120)
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0, log[-4000:]
        assert "AuthenticationError" in log and reason in log, log[-4000:]
        assert "Uploading package" not in log, "the working_dir went up before the job server refused the submit"

    # With RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN_PATH): the job runs, and succeeds.
    proc = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "succeeded" in log, log[-4000:]

    # The working directory went up without .git, .venv, out/ and the other ignored paths (Ray honours .gitignore).
    assert "Uploading package gcs://" in log, log[-4000:]
    packages = [p for p in temp.glob("session_latest/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert packages, "no unpacked working_dir on the head"
    for package in packages:
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        print(f"working_dir package {package.name}: {size / 2**20:.2f} MiB")
        assert size < 20 * 2**20, f"the working_dir package is {size / 2**20:.0f} MiB: ignored paths went up"
        assert (package / "pyproject.toml").is_file()
        assert not any((package / d).exists() for d in (".git", ".venv", "out", "demo-out"))

    # The job, as the job server knows it: the refused submits left no job behind. These clients pass the
    # token themselves, whatever RAY_AUTH_MODE this test process has.
    auth = {"Authorization": f"Bearer {token}"}
    jobs = JobSubmissionClient(url, headers=auth).list_jobs()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED], json.dumps([j.status for j in jobs])
    job_id = jobs[0].driver_info.id

    # wcscan joined this head through $RAY_ADDRESS (the token reached the driver through the head's
    # environment): its generation actors ran here, in this job.
    actors = StateApiClient(address=url, headers=auth).list(
        StateResource.ACTORS,
        options=ListApiOptions(filters=[("class_name", "=", "PoolActor")], limit=100),
        raise_on_missing_output=False,
    )
    assert actors and all(a.job_id == job_id for a in actors), actors

    # What it wrote.
    assert (out / "report.md").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("wcscan")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    assert sorted(r.info.run_name for r in children) == ["deepsets", "event_posterior", "ml_fit", "resnet3d"]

    # The global fit, submitted to the same head: its theory inputs and flavio check go to a fresh cache
    # ($WCSCAN_CACHE through the job's runtime_env, so the user's ~/.cache is not touched) and its runs to an
    # MLflow store named by --tracking-uri.
    gf_out, gf_cache = tmp_path / "gf-out", tmp_path / "gf-cache"
    gf_config = tmp_path / "gf-tiny.yaml"  # the demo's observables, with fewer draws, epochs and pseudo-experiments
    gf_config.write_text(GLOBALFIT_TINY)
    gf_uri = f"sqlite:///{(tmp_path / 'gf-mlflow.db').resolve()}"
    submit_gf = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".",
                 "--runtime-env-json", json.dumps({"env_vars": {"WCSCAN_CACHE": str(gf_cache)}}), "--",
                 "wcscan", "globalfit", "--config", str(gf_config), "--out", str(gf_out), "--tracking-uri", gf_uri, "--quiet"]
    proc = subprocess.run(submit_gf, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    jobs = JobSubmissionClient(url, headers=auth).list_jobs()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 2, json.dumps([j.status for j in jobs])

    with open(gf_out / "summary.csv", newline="") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == ["chi2_min", "flavio", "nn", "cgan", "grid_min"]
    cached = {f.name.split("-")[0] for f in (gf_cache / "globalfit").iterdir()}
    assert cached == {"smcov", "surrogate", "grid", "flavio"}, cached  # the driver saw the job's WCSCAN_CACHE
    client = MlflowClient(tracking_uri=gf_uri)
    runs = client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["kind"] == "globalfit" and parents[0].info.run_name == "globalfit-tiny"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["cgan", "chi2_min", "flavio", "grid_min", "nn"]

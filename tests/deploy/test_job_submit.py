"""`ray job submit --working-dir .` against a real Ray head on loopback runs a tiny `wcscan run` (deploy/README.md).

The head is started with ``ray start --head`` and its dashboard (``ray[default]``,
a dependency of wcscan, as in deploy/Dockerfile): the job server lives there.
Inside the job, ``wcscan`` joins that head through ``$RAY_ADDRESS``; the test
checks that its generation actors ran on the head as part of the job, that the
job succeeded, and what it wrote to MLflow.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def loopback_head(free_port):
    """A Ray head with its dashboard on 127.0.0.1 (2 CPUs); yields (dashboard URL, env for the `ray` CLI, temp dir)."""
    port, dash, agent = free_port(), free_port(), free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # the job must join this head and write OUT/mlflow.db
        env.pop(name, None)
    temp = Path("/tmp") / f"wcscan-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent),
         "--temp-dir", str(temp), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        # The dashboard (the job server) and the head's dashboard agent (which runs the jobs) come up
        # separately; a job submitted before the agent is up fails with "No available agent".
        for check in (f"{url}/api/version", f"http://127.0.0.1:{agent}/api/local_raylet_healthz"):
            for _ in range(120):
                if head.poll() is not None:
                    pytest.fail(f"`ray start --head` exited with status {head.returncode}")
                try:
                    urllib.request.urlopen(check, timeout=2)
                    break
                except OSError:
                    time.sleep(1)
            else:
                pytest.fail(f"the Ray head did not answer {check} in 2 minutes")
        yield url, env, temp
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # this head's process group only
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_wcscan_on_the_cluster(loopback_head, tmp_path, tiny_run_yaml):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    url, env, temp = loopback_head
    config, out = tmp_path / "tiny.yaml", tmp_path / "out"
    config.write_text(tiny_run_yaml)
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".", "--",
         "wcscan", "run", "--config", str(config), "--out", str(out), "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
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

    # The job, as the job server knows it.
    jobs = JobSubmissionClient(url).list_jobs()
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED]
    job_id = jobs[0].driver_info.id

    # wcscan joined this head through $RAY_ADDRESS: its generation actors ran here, in this job.
    actors = list_actors(address=url, filters=[("class_name", "=", "GenerationWorker")], limit=100, raise_on_missing_output=False)
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

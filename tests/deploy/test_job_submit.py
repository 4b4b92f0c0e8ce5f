"""`ray job submit --working-dir .` against a real Ray head on loopback runs wcscan (deploy/README.md).

Needs Ray's dashboard (``ray[default]``, as in deploy/Dockerfile); skipped where only ``ray[tune]`` is installed.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_head(tmp_path):
    pytest.importorskip("ray.dashboard.optional_deps", reason="ray[default] (the dashboard) is not installed")
    port, dash = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"wcscan-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(temp),
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the Ray head's job server did not come up in 2 minutes")
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # this head's process group only
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_wcscan_on_the_cluster(loopback_head):
    url, env = loopback_head
    entry = ("wcscan tune --help > /dev/null && python -c \"import ray; ray.init(); "
             "print('cluster CPUs', ray.cluster_resources()['CPU'])\"")
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".", "--", "bash", "-c", entry],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "cluster CPUs 1.0" in proc.stdout and "succeeded" in proc.stdout + proc.stderr

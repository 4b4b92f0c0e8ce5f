"""Ray set-up in one place: start or join a cluster, and size worker thread pools.

:func:`init_ray` is the only place wcscan calls ``ray.init``. It is
idempotent: if Ray is already initialised in this process (a test fixture, a
notebook, an embedding program), that instance is used as it is. Otherwise it
connects to ``address`` or ``$RAY_ADDRESS`` when one is given, and starts a
local instance (no dashboard) when none is.

:func:`limit_threads` is what each worker calls with the CPUs Ray gave it, so
that numpy/BLAS, Polars and torch never start more threads than the worker's
share of the node; :func:`thread_env` gives the same settings as environment
variables, for a ``runtime_env`` that applies them before the worker process
imports anything.

Ray is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import logging
import os
import sys

from kernels.errors import ConfigError

__all__ = ["init_ray", "shutdown_ray", "cluster_cpus", "thread_env", "limit_threads"]

log = logging.getLogger(__name__)

#: Environment variables that size the thread pools of the numerical libraries.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Make sure this process is connected to Ray; return a short description of the cluster.

    ``address`` (or ``$RAY_ADDRESS`` when ``address`` is None) joins an
    existing cluster, e.g. ``ray://head:10001`` or ``auto``; ``num_cpus`` is
    then ignored, since the cluster has its own. With neither, a local
    instance is started with ``num_cpus`` CPUs (default: all of this machine)
    and no dashboard. If Ray is already initialised, nothing is started.

    Returns ``{"address": ..., "cpus": <CPUs in the cluster>, "nodes": <alive nodes>}``.
    """
    if not (address or os.environ.get("RAY_ADDRESS")):
        quiet_token_notice()
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            log.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            log.info("starting a local Ray instance (num_cpus=%s)", num_cpus or "all")
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        gcs_address = ray.get_runtime_context().gcs_address
    except Exception:  # not available through every kind of connection (e.g. Ray Client)
        gcs_address = None
    return {
        "address": gcs_address,
        "cpus": cluster_cpus(),
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
    }


def _token_available() -> bool:
    """Whether Ray will find an auth token, by its sources in its order: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(path).expanduser() if path else Path.home() / ".ray" / "auth_token"
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def quiet_token_notice() -> bool:
    """Say ``RAY_AUTH_MODE=token`` out loud when a token exists, so Ray's notice is shown once per machine.

    A local Ray turns token authentication on by itself and, while ``RAY_AUTH_MODE`` is unset, warns
    "Token authentication is enabled for this Ray cluster" at every start. Setting the mode to what
    Ray chooses anyway silences the repeat; authentication stays on. The first start on a machine
    (no token yet) is left alone: Ray prints the notice once and writes ``~/.ray/auth_token``. An
    explicit ``RAY_AUTH_MODE`` is never changed. Returns whether this call set the variable.
    """
    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules or not _token_available():
        return False  # (Ray reads the mode once, at import: setting it later would split driver and GCS)
    os.environ["RAY_AUTH_MODE"] = "token"
    return True


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local instance if this process started one)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cluster_cpus() -> int:
    """CPUs the connected Ray cluster reports in total (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def thread_env(cpus: float | int) -> dict[str, str]:
    """Environment variables that limit the numerical thread pools to ``cpus`` threads.

    >>> thread_env(2)["POLARS_MAX_THREADS"]
    '2'
    >>> thread_env(0.5)["OMP_NUM_THREADS"]  # a fractional CPU still gets one thread
    '1'
    """
    n = str(max(1, int(cpus)))
    return {name: n for name in THREAD_VARIABLES}


def limit_threads(cpus: float | int) -> int:
    """Limit this process's numerical thread pools to ``cpus`` threads; return the thread count.

    Sets the variables of :func:`thread_env` (read by libraries imported
    after this call, Polars and torch among them), narrows BLAS/OpenMP pools
    already loaded (threadpoolctl, when installed) and Arrow's CPU pool, and calls
    ``torch.set_num_threads`` if torch is already imported. torch is never
    imported here: if it is imported later, it reads ``OMP_NUM_THREADS``.
    """
    env = thread_env(cpus)
    os.environ.update(env)
    n = int(env["OMP_NUM_THREADS"])
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - ships with scipy's stack
        pass
    else:
        threadpool_limits(limits=n)
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - a core dependency
        pass
    else:
        pyarrow.set_cpu_count(n)  # Parquet encoding and compression
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


def _autoscaler_running() -> bool:
    """Whether the cluster has an autoscaler that can add nodes.

    A Ray instance this process started itself (``ray.init()`` without an
    address) is one machine and can never gain a node. On a cluster it joined,
    Ray's monitor publishes a status in the GCS key-value store; only a cluster
    with an autoscaler adds an ``autoscaler_report`` to it.
    """
    import json

    import ray

    try:
        if ray._private.worker.global_worker.node.is_head():  # we started it: a local Ray
            return False
    except AttributeError:  # a Ray Client connection has no local node: ask the cluster
        pass
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return bool(raw) and bool(json.loads(raw).get("autoscaler_report"))
    except Exception:  # another Ray version without these internals: assume none
        return False


def require_gpus(gpus: float, option: str = "--gpus-per-trial", wait_s: float = 600.0, poll_s: float = 5.0) -> None:
    """Refuse, in seconds, GPUs that the connected cluster does not have and cannot get.

    A cluster without GPUs and without an autoscaler (a local Ray, a fixed
    cluster) is refused at once, naming what it has. On an autoscaling cluster
    this logs that it waits for GPU nodes and gives up after ``wait_s`` seconds.
    """
    import time

    import ray

    if not gpus or gpus <= 0:
        return
    have = ray.cluster_resources()
    if have.get("GPU", 0) >= gpus:
        return
    what = ", ".join(f"{k} {have.get(k, 0):g}" for k in ("CPU", "GPU"))
    if not _autoscaler_running():
        raise ConfigError(f"{option} {gpus:g}: the Ray cluster has {have.get('GPU', 0):g} GPU(s) ({what}) and no "
                          "autoscaler to add any; use --gpus-per-trial 0, or join a cluster with GPUs (--address)")
    log.warning("%s %g: waiting up to %g s for the autoscaler to add GPU nodes", option, gpus, wait_s)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        if ray.cluster_resources().get("GPU", 0) >= gpus:
            return
    raise ConfigError(f"{option} {gpus:g}: no GPU node joined the Ray cluster within {wait_s:g} s ({what})")

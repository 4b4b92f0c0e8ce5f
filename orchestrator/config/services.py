"""The outside services a job depends on, checked in seconds before any work: MLflow, Ray and the disk.

A job that runs for minutes and then finds that its MLflow server, its Ray
cluster or its disk is unusable has wasted those minutes and left a
half-written output. Every command that takes ``--tracking-uri``,
``--address`` or ``--out`` calls :func:`check_services` first; each failure is
one :class:`~kernels.errors.ServiceError` line (exit status 2), and nothing
is written, not even the probe files (:func:`orchestrator.config.checks.output_dir`
removes its own).

- **Tracking URI**: a scheme MLflow knows (its own stores and any installed
  ``mlflow.tracking_store`` plugin). An ``http(s)`` server must answer
  ``GET <uri>/health`` within :data:`TIMEOUT_S`; a database server
  (``postgresql``, ``mysql``, ``mssql``) must accept a TCP connection; a
  ``sqlite`` or ``file`` store must be writable where it would be created.
- **Ray address** (``--address``, else ``$RAY_ADDRESS``): the GCS port
  (``host:port``) must accept a TCP connection and answer a GCS call, and the
  Ray Client port (``ray://host:port``) a TCP connection, within
  :data:`TIMEOUT_S`, so that ``ray.init`` is not left waiting for a cluster
  that is not there. ``auto`` needs a cluster started
  on this machine (``ray start --head``).
- **Storage**: ``--out`` writable, and the free space there at least the
  bytes the job will write (:func:`event_bytes`, :func:`image_bytes`); the
  error names both numbers.

Nothing heavy is imported here: no mlflow, no ray (grpc, for the GCS call, only when an address is given).

>>> event_bytes(points=2, events=1000)  # 4 float32 + the dc9 shift (float64) per event
48000
>>> human_bytes(16 * 10**15)
'16 PB'
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from kernels.errors import ServiceError
from orchestrator.config.checks import output_dir

__all__ = ["TIMEOUT_S", "check_services", "check_tracking_uri", "check_ray_address", "check_storage",
           "event_bytes", "image_bytes", "human_bytes"]

#: Seconds each service is given to answer.
TIMEOUT_S = 3.0

#: MLflow's own tracking-store schemes (``mlflow.tracking._tracking_service.utils``'s registry).
MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_RAY_GCS_PORT, _RAY_CLIENT_PORT = 6379, 10001


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, 3 significant digits.

    >>> human_bytes(999), human_bytes(1_234_567)
    ('999 B', '1.23 MB')
    """
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def event_bytes(points: int, events: int, level: str = "gen", shifts: int = 1) -> int:
    """Bytes of an event dataset, as stored columns: 4 float32 kinematics and ``shifts`` float64 per event,
    and the ``is_signal`` flag at ``det_bkg``. Parquet's compression only shrinks this (an upper bound)."""
    per_event = 4 * 4 + 8 * shifts + (1 if level == "det_bkg" else 0)
    return int(points) * int(events) * per_event


def image_bytes(images: int, bins: int) -> int:
    """Bytes of ``images`` voxel images of ``bins``^3 voxels, two float32 channels each (as ``.npy``)."""
    return int(images) * 2 * int(bins) ** 3 * 4


# --- MLflow ---------------------------------------------------------------------


def _plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    try:
        return {ep.name for ep in entry_points(group="mlflow.tracking_store")}
    except Exception:  # pragma: no cover - a broken distribution's metadata
        return set()


def _tcp(host: str, port: int, timeout: float) -> str | None:
    """None if ``host:port`` accepts a TCP connection within ``timeout`` s, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return (err.strerror or str(err)).lower()


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client would send (``MLFLOW_TRACKING_TOKEN``, or a user and password)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def _check_server(uri: str, name: str, timeout: float) -> None:
    health = uri.rstrip("/") + "/health"
    request = urllib.request.Request(health, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_ssl_context()) as reply:
            if reply.status == 200:
                return
            why = f"answers HTTP {reply.status} at /health: is it an MLflow tracking server?"
    except urllib.error.HTTPError as err:
        why = (f"refuses access (HTTP {err.code}); set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
               "MLFLOW_TRACKING_PASSWORD" if err.code in (401, 403)
               else f"answers HTTP {err.code} at /health: is it an MLflow tracking server?")
    except urllib.error.URLError as err:
        reason = err.reason
        why = (f"does not answer within {timeout:g} s" if isinstance(reason, TimeoutError)
               else f"is unreachable ({str(getattr(reason, 'strerror', None) or reason).lower()})")
    except TimeoutError:
        why = f"does not answer within {timeout:g} s"
    except OSError as err:
        why = f"is unreachable ({str(err.strerror or err).lower()})"
    raise ServiceError(f"{name} {uri}: the MLflow server {why}; start it (mlflow server --host ... --port ...), "
                       "or leave the option out for a store under --out")


def check_tracking_uri(uri: str, name: str = "--tracking-uri", timeout: float = TIMEOUT_S) -> str:
    """``uri`` if MLflow can use it now (see the module docstring); else one-line :class:`ServiceError`."""
    if "://" not in uri and ":" not in uri.split("/")[0]:  # a plain path: MLflow's file store
        scheme = ""
    else:
        scheme = urlsplit(uri).scheme.lower()
    base = scheme.split("+")[0]  # postgresql+psycopg2, mysql+pymysql
    if scheme and base not in MLFLOW_SCHEMES and scheme not in _plugin_schemes():
        raise ServiceError(f"{name} {uri}: unknown scheme {scheme!r}; MLflow takes "
                           f"{', '.join(s for s in MLFLOW_SCHEMES if not s.endswith('uc'))} "
                           "(e.g. http://127.0.0.1:5000, sqlite:////abs/mlflow.db)")
    if base in ("http", "https"):
        if not urlsplit(uri).hostname:
            raise ServiceError(f"{name} {uri}: no host in the URI (e.g. http://127.0.0.1:5000)")
        _check_server(uri, name, timeout)
    elif base in _DB_PORTS:
        parts = urlsplit(uri)
        why = _tcp(parts.hostname or "localhost", parts.port or _DB_PORTS[base], timeout)
        if why:
            raise ServiceError(f"{name} {uri}: the {base} database server is unreachable ({why})")
    elif base == "sqlite":
        path = urlsplit(uri).path
        if path and path not in ("/:memory:", "/"):
            db = Path(path[1:])  # sqlite:////abs/x.db -> /abs/x.db; sqlite:///x.db -> x.db (relative), as SQLAlchemy reads them
            output_dir(db.parent if str(db.parent) not in ("", ".") else Path("."), name)
    elif base in ("", "file"):
        output_dir(Path(urlsplit(uri).path if base == "file" else uri), name)
    return uri


# --- Ray ------------------------------------------------------------------------


def _ray_current_cluster() -> str | None:
    """The GCS address of a cluster started on this machine (``ray start --head`` records it), or None."""
    tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        return tmp.read_text().strip() or None
    except OSError:
        return None


def check_ray_address(address: str | None, name: str = "--address", timeout: float = TIMEOUT_S) -> str | None:
    """``address`` (else ``$RAY_ADDRESS``) if a Ray cluster answers there; None: a local Ray will be started."""
    if not address:
        address, name = os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS"
    if not address or address == "local":
        return address
    target = address
    if address == "auto":
        target = _ray_current_cluster()
        if target is None:
            raise ServiceError(f"{name} auto: no Ray cluster was started on this machine (ray start --head); "
                               "give its address, or leave the option out for a local Ray")
    parts = urlsplit(target if "://" in target else f"gcs://{target}")
    if parts.scheme not in ("gcs", "ray"):
        raise ServiceError(f"{name} {address}: expected HOST:PORT (the GCS), ray://HOST:PORT (Ray Client) or auto")
    try:
        port = parts.port or (_RAY_CLIENT_PORT if parts.scheme == "ray" else _RAY_GCS_PORT)
    except ValueError:
        raise ServiceError(f"{name} {address}: the port is not a number") from None
    if not parts.hostname:
        raise ServiceError(f"{name} {address}: no host (expected HOST:PORT or ray://HOST:PORT)")
    why = _tcp(parts.hostname, port, timeout)
    if why is None and parts.scheme == "gcs":
        why = _gcs(f"{parts.hostname}:{port}", timeout)
    if why:
        raise ServiceError(f"{name} {address}: no Ray cluster at {parts.hostname}:{port} ({why}); start one "
                           "(ray start --head), or leave the option out for a local Ray")
    return address


def _gcs(target: str, timeout: float) -> str | None:
    """None if a Ray GCS answers at ``target`` (one gRPC call, ``GetClusterId``), else why not.

    An open port is not enough: ``ray.init`` waits a long time on a port where something else listens
    (a proxy, another service). A GCS with token authentication answers UNAUTHENTICATED without the
    token, which is an answer all the same; ``ray.init`` sends the token.
    """
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio comes with ray
        return None
    channel = grpc.insecure_channel(target)
    try:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                   request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        call(None, timeout=timeout)
        return None
    except grpc.RpcError as err:
        code = err.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {timeout:g} s"
        if code == grpc.StatusCode.UNAVAILABLE:
            return "unavailable"
        return f"something answers there, but not as a Ray GCS: {code.name}"
    finally:
        channel.close()


# --- storage --------------------------------------------------------------------


def _existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_storage(out, need_bytes: int = 0, name: str = "--out") -> Path:
    """``out`` if it is writable and its file system has room for the ``need_bytes`` it does not hold yet
    (nothing is left behind)."""
    out = output_dir(out, name)
    if need_bytes > 0 and Path(out).is_dir():  # a resume: what is there already counts
        need_bytes -= sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    if need_bytes > 0:
        base = _existing(Path(out).absolute())
        free = shutil.disk_usage(base).free
        if need_bytes > free:
            raise ServiceError(f"{name} {out}: the job writes about {human_bytes(need_bytes)}, but {base} has "
                               f"{human_bytes(free)} free; free some space, or write elsewhere")
    return out


def check_services(out=None, need_bytes: int = 0, *, tracking_uri: str | None = None, address: str | None = None,
                   uses_ray: bool = True, tracking_name: str = "--tracking-uri") -> None:
    """Every check a job needs, cheapest first: the storage of ``out``, the tracking URI, the Ray address.

    ``tracking_uri``: the URI the job will use (already resolved, e.g. to the store under ``out``); None: the
    job tracks nothing; ``tracking_name`` where it came from (for the message). ``uses_ray``: whether the job will join ``address`` (or ``$RAY_ADDRESS``).
    """
    if out is not None:
        check_storage(out, need_bytes)
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri, tracking_name)
    if uses_ray:
        check_ray_address(address)

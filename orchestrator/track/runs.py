"""MLflow tracking: a parent run per job, a child run per estimator or trial; a server that goes away costs nothing.

The embedded default is a SQLite store under the job's output directory, with
artifacts beside it (``OUT/mlflow.db``, ``OUT/mlartifacts/``); ``--tracking-uri``
or ``MLFLOW_TRACKING_URI`` point anywhere else, an ``mlflow server`` included.
Open the UI with ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``.

The :class:`Tracker` talks to MLflow through ``MlflowClient`` with explicit run
ids (no process-wide active run), and keeps every call in the job's tracking
journal too (:mod:`orchestrator.track.journal`). If the tracking store stops
answering mid-job, the first failed call is logged as a warning, nothing more
is sent, and the job goes on: its local outputs are written as always, and
:meth:`Tracker.unlogged` is the one line that says what MLflow did not get and
how to log it later (``wcscan track OUT --tracking-uri URI``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from orchestrator.track.journal import Journal

log = logging.getLogger(__name__)

EXPERIMENT = "wcscan"

#: While a job tracks, an HTTP store gets these retry settings unless the user set them: a server that went
#: away is given up on in seconds, not MLflow's default of minutes per call.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def default_tracking_uri(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(out: Path, override: str | None = None) -> str:
    """``override``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store under ``out``."""
    return override or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(out)


def tracking_source(out: Path, flag: str | None = None, configured: str | None = None) -> tuple[str, str]:
    """``(uri, where it comes from)`` for messages: the flag, the config, the environment or the default.

    >>> tracking_source(Path("/o"), "http://h:5000")
    ('http://h:5000', '--tracking-uri')
    """
    if flag:
        return flag, "--tracking-uri"
    if configured:
        return configured, "config mlflow.tracking_uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI"
    return default_tracking_uri(out), "the MLflow store under --out"


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` for MLflow params (values as strings, capped)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """A job's MLflow parent run and its children. Use as a context manager.

    Every call is journaled under ``OUT/tracking/`` and sent to MLflow; once a call fails, the tracker is
    offline for the rest of the job (:attr:`lost` says when, :meth:`unlogged` what to do).
    """

    def __init__(self, out: Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT, run_name: str = "job",
                 resume: str | None = None):
        """``resume``: an MLflow filter string (``"tags.kind = 'tune'"``); the newest parent run that matches it
        is reopened instead of starting a new one (``self.resumed`` says whether one was found)."""
        self.out = Path(out)
        self.uri = resolve_tracking_uri(self.out, tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.resume = resume
        self.resumed = False
        self.status = None
        self.journal = Journal(self.out)
        #: What was being logged when MLflow stopped answering, and its error (None: all was logged).
        self.lost: str | None = None
        self.lost_error: str | None = None
        self.client = None
        self.experiment_id = None
        self._parent_id: str | None = None
        self._stack: list[tuple[str, str | None]] = []  # (child name, its run id or None when offline)

    # -- the connection --------------------------------------------------------------

    def _send(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` unless offline; a failure takes the tracker offline (returns None)."""
        if self.lost is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # any failure of the store: the job's results must not depend on it
            self.lost, self.lost_error = what, f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            log.warning("MLflow at %s failed while logging %s (%s); the job goes on without it",
                        self.uri, what, self.lost_error)
            return None

    def unlogged(self) -> str | None:
        """One line: what MLflow did not get and how to log it later (None when everything was logged)."""
        if self.lost is None:
            return None
        return (f"MLflow at {self.uri} stopped answering while logging {self.lost} ({self.lost_error}); "
                f"that and everything after it was not logged, the files in {self.out} are complete; log them "
                f"later with: wcscan track {self.out} --tracking-uri {self.uri}")

    def __enter__(self) -> Tracker:
        self._saved_env = {k: os.environ.get(k) for k in HTTP_SETTINGS}
        for k, v in HTTP_SETTINGS.items():
            os.environ.setdefault(k, v)
        loc = None
        if self.uri == default_tracking_uri(self.out):  # our own store: artifacts beside it
            loc = (self.out.resolve() / "mlartifacts").as_uri()
        self.journal.open().write({"op": "start", "experiment": self.experiment, "run_name": self.run_name,
                                   "artifact_location": loc, "uri": self.uri})
        self._send("the experiment", self._connect, loc)
        return self

    def _connect(self, loc) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = (exp.experiment_id if exp is not None
                              else self.client.create_experiment(self.experiment, artifact_location=loc))
        previous = self._find(self.resume) if self.resume else []
        if previous:
            self._parent_id = previous[0].info.run_id
            self.client.update_run(self._parent_id, status="RUNNING")
            self.resumed = True
        else:
            self._parent_id = self._create_run(self.run_name)

    def _create_run(self, name: str, parent: str | None = None) -> str:
        from mlflow.tracking.context.registry import resolve_tags

        tags = resolve_tags({"mlflow.parentRunId": parent} if parent else {})
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def _find(self, filter_string: str) -> list:
        """Runs of this experiment that match ``filter_string``, newest first."""
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=["attributes.start_time DESC"])

    def children(self) -> list:
        """The child runs of the parent run (MLflow ``Run`` objects; none when offline)."""
        if self._parent_id is None:
            return []
        return self._send("the child runs", self._find, f"tags.mlflow.parentRunId = '{self._parent_id}'") or []

    def logged_steps(self, run_id: str, key: str) -> int:
        """How many values of metric ``key`` run ``run_id`` holds (0 when offline)."""
        history = self._send(f"the history of {key}", lambda: self.client.get_metric_history(run_id, key))
        return len(history or [])

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            else:
                status = self.status or "FINISHED"
            self.journal.write({"op": "end", "status": status})
            if self._parent_id is not None:
                self._send("the end of the parent run", self.client.set_terminated, self._parent_id, status)
        finally:
            self.journal.close()
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return False

    @property
    def run_id(self) -> str | None:
        """The parent run's id (None if MLflow never created it)."""
        return self._parent_id

    def _active(self) -> str | None:
        if self._stack:
            return self._stack[-1][1]
        return self._parent_id

    def _path(self) -> list[str]:
        return [name for name, _ in self._stack]

    @contextlib.contextmanager
    def child(self, name: str, run_id: str | None = None) -> Iterator[Tracker]:
        """A new child run named ``name``, or the existing child ``run_id`` reopened."""
        parent = self._active()
        self._stack.append((name, None))
        self.journal.write({"op": "child", "run": self._path()})
        if run_id is not None and parent is not None:
            self._send(f"child run {name}", self.client.update_run, run_id, "RUNNING")
            child = run_id if self.lost is None else None
        elif parent is not None:
            child = self._send(f"child run {name}", self._create_run, name, parent)
        else:
            child = None
        self._stack[-1] = (name, child)
        status = "FINISHED"
        try:
            yield self
        except BaseException as err:
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            self._stack.pop()
            if child is not None:
                self._send(f"the end of child run {name}", self.client.set_terminated, child, status)

    # -- logging into the active run -------------------------------------------------

    def _log(self, what: str, record: dict, **batch) -> None:
        self.journal.write({**record, "run": self._path()})
        run = self._active()
        if run is not None:
            self._send(f"{what} of {'/'.join(self._path()) or 'the parent run'}", self.client.log_batch, run, **batch)

    def params(self, config: Mapping) -> None:
        from mlflow.entities import Param

        items = flatten(config)
        keys = list(items)
        for i in range(0, len(keys), 90):  # MLflow's batch limit is 100 params
            chunk = {k: items[k] for k in keys[i : i + 90]}
            self._log("params", {"op": "params", "values": chunk}, params=[Param(k, v) for k, v in chunk.items()])

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        clean = {k: float(v) for k, v in values.items() if v is not None and v == v}  # drop NaN
        if clean:
            now = int(time.time() * 1000)
            self._log("metrics", {"op": "metrics", "values": clean, "step": step},
                      metrics=[Metric(k, v, now, step or 0) for k, v in clean.items()])

    def tags(self, values: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        clean = {k: str(v) for k, v in values.items()}
        self._log("tags", {"op": "tags", "values": clean}, tags=[RunTag(k, v) for k, v in clean.items()])

    def text(self, text: str, artifact_file: str) -> None:
        self.journal.write({"op": "text", "run": self._path(), "text": text, "artifact_file": artifact_file})
        run = self._active()
        if run is not None:
            self._send(f"{artifact_file}", self.client.log_text, run, text, artifact_file)

    def artifact(self, path: Path, artifact_path: str | None = None, op: str = "artifact") -> None:
        self.journal.write({"op": op, "run": self._path(), "path": self.journal.relative(path),
                            "artifact_path": artifact_path})
        run = self._active()
        if run is not None:
            self._send(f"{Path(path).name}", self.client.log_artifact, run, str(path), artifact_path)

    def model(self, module, name: str = "model") -> None:
        """Log a torch module's weights (a plain state_dict artifact: loadable without MLflow's torch flavour),
        kept as ``OUT/tracking/models/<run>/<name>.pt`` too."""
        import torch

        from kernels.files import atomic_path

        path = self.out / "tracking" / "models" / "/".join(self._path() or ["parent"]) / f"{name}.pt"
        with atomic_path(path) as tmp:
            torch.save(module.state_dict(), tmp)
        self.artifact(path, "model", op="model")

"""MLflow tracking: a parent run per job, a child run per estimator or trial.

The embedded default is a SQLite store under the job's output directory, with
artifacts beside it (``OUT/mlflow.db``, ``OUT/mlartifacts/``); ``--tracking-uri``
or ``MLFLOW_TRACKING_URI`` point anywhere else, an ``mlflow server`` included.
Open the UI with ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

EXPERIMENT = "wcscan"


def default_tracking_uri(out: Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(out: Path, override: str | None = None) -> str:
    """``override``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store under ``out``."""
    return override or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(out)


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
    """A job's MLflow parent run and its children. Use as a context manager."""

    def __init__(self, out: Path, tracking_uri: str | None = None, experiment: str = EXPERIMENT, run_name: str = "job",
                 resume: str | None = None):
        """``resume``: an MLflow filter string (``"tags.kind = 'tune'"``); the newest parent run that matches it
        is reopened instead of starting a new one (``self.resumed`` says whether one was found)."""
        import mlflow

        self.mlflow = mlflow
        self.out = Path(out)
        self.uri = resolve_tracking_uri(self.out, tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.resume = resume
        self.resumed = False
        self.parent = None

    def __enter__(self) -> Tracker:
        mlflow = self.mlflow
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: restore it on exit, so that the
        # next job in this process does not take this job's store for the user's choice.
        self._saved_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            loc = None
            if self.uri == default_tracking_uri(self.out):  # our own store: artifacts beside it
                loc = (self.out.resolve() / "mlartifacts").as_uri()
            self.experiment_id = mlflow.create_experiment(self.experiment, artifact_location=loc)
        else:
            self.experiment_id = exp.experiment_id
        previous = self._find(self.resume) if self.resume else []
        if previous:
            self.parent = mlflow.start_run(run_id=previous[0].info.run_id)
            self.resumed = True
        else:
            self.parent = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.run_name)
        self.status = None
        return self

    def _find(self, filter_string: str) -> list:
        """Runs of this experiment that match ``filter_string``, newest first."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri).search_runs([self.experiment_id], filter_string=filter_string,
                                                  order_by=["attributes.start_time DESC"])

    def children(self) -> list:
        """The child runs of the parent run (MLflow ``Run`` objects)."""
        return self._find(f"tags.mlflow.parentRunId = '{self.run_id}'")

    def logged_steps(self, run_id: str, key: str) -> int:
        """How many values of metric ``key`` run ``run_id`` holds."""
        from mlflow.tracking import MlflowClient

        return len(MlflowClient(self.uri).get_metric_history(run_id, key))

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            else:
                status = self.status or "FINISHED"
            self.mlflow.end_run(status=status)
        finally:
            if self._saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = self._saved_env
        return False

    @property
    def run_id(self) -> str:
        return self.parent.info.run_id

    @contextlib.contextmanager
    def child(self, name: str, run_id: str | None = None) -> Iterator[Tracker]:
        """A new child run named ``name``, or the existing child ``run_id`` reopened."""
        if run_id is not None:
            with self.mlflow.start_run(run_id=run_id, nested=True):
                yield self
            return
        with self.mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=True):
            yield self

    # -- logging into the active run -------------------------------------------------

    def params(self, config: Mapping) -> None:
        items = flatten(config)
        keys = list(items)
        for i in range(0, len(keys), 90):  # MLflow's batch limit is 100 params
            self.mlflow.log_params({k: items[k] for k in keys[i : i + 90]})

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None and v == v}  # drop NaN
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def tags(self, values: Mapping[str, str]) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in values.items()})

    def text(self, text: str, artifact_file: str) -> None:
        self.mlflow.log_text(text, artifact_file)

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def model(self, module, name: str = "model") -> None:
        """Log a torch module's weights (a plain state_dict artifact: loadable without MLflow's torch flavour)."""
        import tempfile

        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.pt"
            torch.save(module.state_dict(), path)
            self.artifact(path, "model")

"""The tracking journal: everything a job logs to MLflow, also kept in its output directory.

A job's :class:`~orchestrator.track.runs.Tracker` appends one JSON line per
call to ``OUT/tracking/journal.jsonl``, whether or not MLflow took it::

    {"op": "start", "experiment": "wcscan", "run_name": "demo", "artifact_location": null}
    {"op": "params", "run": [], "values": {"seed": "1", ...}}
    {"op": "child", "run": ["ml_fit"]}
    {"op": "metrics", "run": ["ml_fit"], "values": {"sigma_over_crb_mean": 1.02}, "step": null}
    {"op": "artifact", "run": [], "path": "report.md", "artifact_path": null}
    {"op": "end", "status": "FINISHED"}

``run`` is the path of child names from the parent (``[]``: the parent);
``path`` is relative to ``OUT`` (model weights are kept under
``OUT/tracking/models/``). So a server that went away mid-job loses nothing:
``wcscan track OUT --tracking-uri URI`` (:func:`replay`) logs the finished
directory as the job would have, as a new parent run with its children.

Each line is appended and flushed as it is made; a line cut short by a crash
is skipped on reading.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from kernels.errors import WcscanError

__all__ = ["JOURNAL", "Journal", "read", "replay"]

log = logging.getLogger(__name__)

#: The journal's path under the output directory.
JOURNAL = Path("tracking") / "journal.jsonl"


class Journal:
    """Appends records to ``OUT/tracking/journal.jsonl`` (started afresh by each job)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / JOURNAL
        self._fh = None

    def open(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        return self

    def write(self, record: Mapping) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._fh.flush()

    def relative(self, path: Path) -> str:
        """``path`` relative to ``OUT`` when it lies inside it, else absolute."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.out.resolve()).as_posix()
        except ValueError:
            return str(path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read(out: Path) -> Iterator[dict]:
    """The records of ``OUT``'s journal, in order (a cut-off last line is skipped)."""
    path = Path(out) / JOURNAL
    if not path.is_file():
        raise WcscanError(f"{out}: no tracking journal ({JOURNAL}); is it the output of a wcscan job?")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "op" in record:
                yield record


def replay(out: Path, tracking_uri: str, experiment: str | None = None) -> tuple[str, int]:
    """Log the finished job in ``out`` to ``tracking_uri`` as it would have been; return (parent run id, runs).

    ``experiment``: the experiment (default: the job's). A journal without its ``end`` record (a job
    that did not finish) is refused.
    """
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    out = Path(out)
    records = list(read(out))
    if not records or records[0]["op"] != "start":
        raise WcscanError(f"{out / JOURNAL}: does not start with a job's start record")
    end = [r for r in records if r["op"] == "end"]
    if not end:
        raise WcscanError(f"{out}: the job did not finish (its tracking journal has no end record); "
                          "run it again to finish it")
    missing = sorted({r["path"] for r in records if r["op"] in ("artifact", "model")
                      if not _local(out, r["path"]).exists()})
    if missing:
        raise WcscanError(f"{out}: {len(missing)} logged file(s) are gone, e.g. {missing[0]}")
    start = records[0]
    client = MlflowClient(tracking_uri)
    name = experiment or start["experiment"]
    exp = client.get_experiment_by_name(name)
    if exp is None:
        loc = None
        if tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, as a job's own store has them
            loc = (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(name, artifact_location=loc)
    else:
        experiment_id = exp.experiment_id
    runs: dict[tuple, str] = {}

    def run_of(path) -> str:
        key = tuple(path)
        if key not in runs:
            parent = run_of(key[:-1]) if key else None
            tags = {"mlflow.parentRunId": parent} if parent else {}
            tags["wcscan.logged_from"] = str(out.resolve())
            run = client.create_run(experiment_id, run_name=key[-1] if key else start["run_name"],
                                    tags=resolve_tags(tags))
            runs[key] = run.info.run_id
        return runs[key]

    run_of([])
    for r in records[1:]:
        op = r["op"]
        if op == "child":
            run_of(r["run"])
        elif op == "params":
            items = list(r["values"].items())
            for i in range(0, len(items), 90):
                client.log_batch(run_of(r["run"]), params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 90]])
        elif op == "metrics":
            for k, v in r["values"].items():
                client.log_metric(run_of(r["run"]), k, v, step=r.get("step") or 0)
        elif op == "tags":
            for k, v in r["values"].items():
                client.set_tag(run_of(r["run"]), k, v)
        elif op == "text":
            client.log_text(run_of(r["run"]), r["text"], r["artifact_file"])
        elif op in ("artifact", "model"):
            client.log_artifact(run_of(r["run"]), str(_local(out, r["path"])), artifact_path=r.get("artifact_path"))
    status = end[-1].get("status", "FINISHED")
    for run_id in runs.values():
        client.set_terminated(run_id, status=status)
    return runs[()], len(runs)


def _local(out: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else out / p


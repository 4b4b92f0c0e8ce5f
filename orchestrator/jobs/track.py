"""``wcscan track``: log a finished output directory to MLflow, as its job would have.

For a job whose MLflow server went away mid-run (its last line says so), or
to copy a job's runs to another server: the tracking URI is checked first
(:mod:`orchestrator.config.services`), then the journal the job kept
(:mod:`orchestrator.track.journal`) is replayed into a new parent run with
its children.
"""

from __future__ import annotations

import os
from pathlib import Path

from kernels.errors import ConfigError
from orchestrator.config.services import check_tracking_uri
from orchestrator.track.journal import JOURNAL, replay

__all__ = ["track_job"]


def track_job(out: Path, tracking_uri: str | None = None, experiment: str | None = None) -> tuple[str, str, int]:
    """Log ``out`` to ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``); return (uri, parent run id, runs)."""
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"OUT {out}: " + ("is a file, not a job's output directory" if out.exists()
                                            else "does not exist"))
    if not (out / JOURNAL).is_file():
        raise ConfigError(f"OUT {out}: holds no tracking journal ({JOURNAL}); is it the output of a wcscan job?")
    name = "--tracking-uri"
    if not tracking_uri:
        tracking_uri, name = os.environ.get("MLFLOW_TRACKING_URI"), "$MLFLOW_TRACKING_URI"
    if not tracking_uri:
        raise ConfigError("give --tracking-uri URI (or set $MLFLOW_TRACKING_URI): where to log the job")
    check_tracking_uri(tracking_uri, name)
    run_id, n = replay(out, tracking_uri, experiment)
    return tracking_uri, run_id, n

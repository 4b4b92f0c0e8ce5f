"""``wcscan track``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, stdout

EPILOG = """\b
Examples:
  # the MLflow server went away during 'wcscan run'; the job's last line said so
  wcscan track out/demo --tracking-uri http://127.0.0.1:5000
\b
  # a copy of a finished job's runs in another store
  wcscan track out/demo --tracking-uri sqlite:////data/mlflow.db --experiment demo-runs

Every job keeps what it logs in OUT/tracking/journal.jsonl (model weights under OUT/tracking/models/);
this logs it as a new parent run with one child per estimator or trial, the params, metrics, tags and
artifacts the job logged. A job that did not finish is refused.
"""


@click.command(epilog=EPILOG, short_help="Log a finished output directory to MLflow, as its job would have.")
@click.argument("out", type=PATH, metavar="OUT")
@click.option("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")
@click.option("--experiment", default=None, metavar="NAME", help="Experiment (default: the job's).")
@common_options
def track(out, tracking_uri, experiment, quiet, verbose):
    """Log the runs of a finished wcscan job (run, tune, globalfit) from its output directory to MLflow."""
    from orchestrator.jobs.track import track_job

    uri, run_id, n = track_job(out, tracking_uri, experiment)
    stdout().print(f"logged {out} to {uri}: parent run {run_id} and {n - 1} child run(s)", soft_wrap=True)

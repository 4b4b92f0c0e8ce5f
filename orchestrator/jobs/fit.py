"""``wcscan fit``: ML fits on the sets of a dataset or of a user's events, the CSV and its figure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kernels.errors import ConfigError
from kernels.event_store import read_event_manifest
from orchestrator.config.checks import output_file, positive_int
from orchestrator.evaluate.fit import fit_dataset, fit_events_points, read_events_file, write_points_csv
from orchestrator.runtime.progress import no_progress


@dataclass
class FitOutcome:
    rows: list[dict]
    csv: Path | None = None
    figure: Path | None = None


def fit_job(events_per_set: int, sets: int, dataset: Path | None = None, events_file: str | None = None,
            level: str | None = None, column_map: dict | None = None, dc9_column: str | None = None,
            dc9_true: float | None = None, windows=None, out: Path | None = None, progress=no_progress) -> FitOutcome:
    """Fit every point; with ``out``, write the per-point CSV and its figure (``.png`` beside it).

    Every option is checked, and ``out`` proved writable, before the first fit.
    """
    if (dataset is None) == (events_file is None):
        raise ConfigError("give exactly one of --dataset, --events-file")
    if events_file is None:
        file_only = [o for o, v in (("--column-map", column_map), ("--dc9-column", dc9_column),
                                    ("--dc9-true", dc9_true), ("--q2-window", windows)) if v is not None]
        if file_only:
            raise ConfigError(f"{', '.join(file_only)} only go with --events-file")
    positive_int(events_per_set, "--events-per-set")
    positive_int(sets, "--sets")
    if out is not None:
        output_file(out)
    if events_file is not None:
        points = read_events_file(events_file, column_map, windows, dc9_column=dc9_column, dc9_true=dc9_true)
        with progress("fit", sets * len(points), "sets") as advance:
            rows = fit_events_points(points, events_per_set, sets, windows, level=level or "gen",
                                     progress=advance, source=events_file)
    else:
        n_points = len(read_event_manifest(dataset).points)
        with progress("fit", sets * n_points, "sets") as advance:
            rows = fit_dataset(dataset, events_per_set, sets, level=level, progress=advance)
    outcome = FitOutcome(rows)
    if out is not None:
        from orchestrator.report.plots import plot_fit_summary

        outcome.csv = write_points_csv(rows, out)
        known = [r for r in rows if math.isfinite(r["dc9_true"])]  # the figure plots against the truth
        if known:
            outcome.figure = plot_fit_summary(known, out.with_suffix(".png"),
                                              title=f"ML fit, {sets} sets x {events_per_set} events")
    return outcome

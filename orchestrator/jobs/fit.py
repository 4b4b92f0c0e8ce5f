"""``wcscan fit``: ML fits on the sets of a dataset or of a user's events, the CSV and its figure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kernels.design import shift_column
from kernels.errors import ConfigError
from kernels.event_store import read_event_manifest
from kernels.theory import coefficient_for
from orchestrator.config.checks import output_file, positive_int
from orchestrator.evaluate.events_file import fit_events_points, read_events_file, refuse_short_events
from orchestrator.evaluate.fit import (check_nuisances, fit_dataset, profiled_theory, refuse_short_points,
                                       write_points_csv)
from orchestrator.evaluate.joint import fitted_coefficients
from orchestrator.runtime.progress import no_progress


@dataclass
class FitOutcome:
    rows: list[dict]
    csv: Path | None = None
    figure: Path | None = None


def fit_job(events_per_set: int, sets: int, dataset: Path | None = None, events_file: str | None = None,
            level: str | None = None, column_map: dict | None = None, dc9_column: str | None = None,
            dc9_true: float | None = None, windows=None, out: Path | None = None, progress=no_progress,
            nuisances: str = "none", prior_scale: float | None = None,
            coefficients: list[str] | None = None, truth: dict[str, float] | None = None) -> FitOutcome:
    """Fit every point; with ``out``, write the per-point CSV and its figure (``.png`` beside it).

    ``nuisances="bsz"``: the profiled fit (delta C9 and flavio's 19 BSZ form factors, their prior
    scaled by ``prior_scale``), with ``sigma_crb_eff`` beside ``sigma_crb``. A user's events must then
    say their ``level``: the profiled pdf, and the bound, depend on it.
    ``coefficients``: fit these jointly (default: the dataset's; a dataset's scanned coefficients must be among
    them, and one it does not scan has truth 0; a user's events: delta C9, or these with the file's truth
    columns ``dc9``, ``dc10``, ..., or ``truth``, one value per coefficient). With several, the rows are the joint fit's
    (:func:`kernels.metrics.joint_columns`) and the figure shows each pair's 68% regions beside the bound's.
    Every option is checked, and ``out`` proved writable, before the first fit (and before any table is built).
    """
    if (dataset is None) == (events_file is None):
        raise ConfigError("give exactly one of --dataset, --events-file")
    if events_file is None:
        file_only = [o for o, v in (("--column-map", column_map), ("--dc9-column", dc9_column),
                                    ("--dc9-true", dc9_true), ("--truth", truth), ("--q2-window", windows))
                     if v is not None]
        if file_only:
            raise ConfigError(f"{', '.join(file_only)} only go with --events-file")
    positive_int(events_per_set, "--events-per-set")
    positive_int(sets, "--sets")
    scale = check_nuisances(nuisances, prior_scale)
    if events_file is not None:
        shifts = [shift_column(c) for c in (coefficients or ["dc9"])]
        if len(shifts) == 1 and shifts != ["dc9"]:
            raise ConfigError(f"--coefficients {shifts[0]} alone on --events-file: fit delta C9 with it "
                              f"(--coefficients dc9,{shifts[0]}); a single coefficient's fit is delta C9's")
        coefficients = [coefficient_for(s) for s in shifts]
    if nuisances != "none" and events_file is not None and level is None:
        raise ConfigError("--nuisances on --events-file needs --level (gen, det or det_bkg): the profiled fit's "
                          "pdf and its bound depend on the events' level")
    if out is not None:
        output_file(out)
    points = m = None
    if events_file is not None:  # read and checked before any theory table is built
        points = read_events_file(events_file, column_map, windows, dc9_column=dc9_column, dc9_true=dc9_true,
                                  shifts=shifts, truth=truth)
    else:
        m = read_event_manifest(dataset)
        coefficients = fitted_coefficients(m, coefficients)
    theory = None
    if nuisances != "none":
        from kernels import nuisances as nuis
        from kernels import theory as th

        if events_file is not None:
            refuse_short_events(points, events_per_set, sets, events_file)
            tables_windows = th.validate_windows(windows or th.DEFAULT_WINDOWS)
        else:
            refuse_short_points(dataset, m.points, events_per_set, sets)
            tables_windows = th.validate_windows(m.windows)
        if nuisances == "bsz+pc":  # the power corrections too: tables from the helicity amplitudes
            from kernels import amplitudes as amp

            n = amp.n_amplitude_evaluations(len(coefficients), 19, len(amp.power_corrections(tables_windows)))
            with progress("amplitude tables", n, "flavio calls") as adv:
                ntable = amp.amplitude_table(coefficients, tables_windows, "bsz", workers=2, progress=adv or None)
        else:
            with progress("theory tables", nuis.n_evaluations(len(coefficients), 19) + 1, "flavio calls") as adv:
                ntable = nuis.nuisance_table(coefficients, tables_windows, nuisances, workers=2, progress=adv or None)
        theory = profiled_theory(ntable, scale)
    if points is not None:
        with progress("fit", sets * len(points), "sets") as advance:
            rows = fit_events_points(points, events_per_set, sets, windows, level=level or "gen",
                                     progress=advance, source=events_file, profiled=theory, coefficients=coefficients)
    else:
        with progress("fit", sets * len(m.points), "sets") as advance:
            rows = fit_dataset(dataset, events_per_set, sets, level=level, progress=advance, profiled=theory,
                               coefficients=coefficients)
    outcome = FitOutcome(rows)
    if out is not None and rows and "mean" not in rows[0]:  # a joint fit of several coefficients
        from orchestrator.report.plots import plot_joint_fit

        outcome.csv = write_points_csv(rows, out)
        shifts = [shift_column(c) for c in coefficients]
        what = "Joint ML fit" if nuisances == "none" else f"Joint profiled ML fit ({nuisances})"
        outcome.figure = plot_joint_fit(rows, shifts, out.with_suffix(".png"),
                                        title=f"{what} of {', '.join(shifts)}: {sets} sets x {events_per_set} events")
    elif out is not None:
        from orchestrator.report.plots import plot_fit_summary

        outcome.csv = write_points_csv(rows, out)
        known = [r for r in rows if math.isfinite(r["dc9_true"])]  # the figure plots against the truth
        if known:
            what = {"none": "ML fit", "bsz": "Profiled ML fit (BSZ form factors)",
                    "bsz+pc": "Profiled ML fit (BSZ form factors and power corrections)"}[nuisances]
            outcome.figure = plot_fit_summary(known, out.with_suffix(".png"),
                                              title=f"{what}, {sets} sets x {events_per_set} events")
    return outcome

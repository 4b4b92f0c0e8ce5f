"""Unbinned maximum-likelihood fits of delta C9 (or of several coefficients jointly) on sets drawn from a dataset.

For each scan point, the first ``sets * events_per_set`` events are cut into
``sets`` disjoint, consecutive sets of ``events_per_set`` events; each set is
fitted, and the ensemble of estimates is summarised beside the Cramer-Rao
bound ``sigma_crb`` into one row per point (:data:`POINT_COLUMNS`).
:func:`fit_point` does this for one point; :func:`fit_dataset` applies it to
each point of an event dataset. A user's own file of events is read and
grouped into points by :mod:`orchestrator.evaluate.events_file`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DatasetError
from kernels.event_store import COLUMNS, LEVELS, read_event_manifest, read_point, validate_events
from kernels.files import atomic_write_text
from kernels.metrics import NUISANCE_COLUMNS, POINT_COLUMNS
from orchestrator.config.checks import positive_int
from orchestrator.evaluate.joint import fitted_coefficients

__all__ = [
    "POINT_COLUMNS",
    "fit_point",
    "fit_dataset",
    "write_points_csv",
    "Profiled",
    "check_nuisances",
    "refuse_short_points",
    "csv_cell",
    "profiled_theory",
]

log = logging.getLogger(__name__)

#: Coefficient fitted in a user's events (the shift column ``dc9``).

def _scalar(x) -> float:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"expected one sigma_crb value, got shape {np.shape(x)}")
    return float(arr[0])


def fit_dataset(
    dataset: Path,
    events_per_set: int,
    sets: int,
    level: str | None = None,
    progress: Callable[[int], None] | None = None,
    profiled: Callable[[list, Any, Any], Profiled] | None = None,
    coefficients: Sequence[str] | None = None,
) -> list[dict]:
    """Fit ``sets`` sets of ``events_per_set`` events at each point of ``dataset``.

    ``coefficients``: those fitted (default: the dataset's). They must include every coefficient the dataset
    scans; one it does not scan was 0 in its events, and that is its truth. With one coefficient the rows
    have the keys :data:`POINT_COLUMNS`; with several, :func:`kernels.metrics.joint_columns` (the joint fit,
    each coefficient's marginal bound, the correlations and the joint coverage).

    ``profiled(coefficients, windows, model)``: returns the :class:`Profiled` theory (after every
    check has passed) for fits with the form factors profiled.

    Returns one dict per scan point with the keys :data:`POINT_COLUMNS`.
    ``level`` defaults to the dataset's own; at ``det`` and ``det_bkg`` the pdf
    includes the acceptance and the background recorded in the manifest, so the
    fit and its Cramér–Rao bound stay fair.
    ``progress(n)`` is called with the number of sets fitted, as they finish.
    A point with fewer than ``sets * events_per_set`` events is refused before
    any fit runs.
    """
    dataset = Path(dataset)
    positive_int(events_per_set, "--events-per-set")
    positive_int(sets, "--sets")
    m = read_event_manifest(dataset)
    level = m.level if level is None else level
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    manifest, windows, points = m.raw, list(m.windows), m.points
    coefficients = fitted_coefficients(m, coefficients)
    refuse_short_points(dataset, points, events_per_set, sets)

    from kernels import detector, theory

    table = theory.jtable(coefficients, windows)
    model = detector.DetectorConfig.from_dict(m.detector).pdf_model(level, table.windows)
    prof = None if profiled is None else profiled(coefficients, table.windows, model)
    rows = []
    for p in points:
        index = p["index"]
        truth = [float(p["shifts"].get(c, 0.0)) for c in table.shift_columns]
        source = f"{dataset}/level={level}/point={index:03d}"
        events = read_point(dataset, manifest, level, index)
        validate_events(events, source, q2_windows=windows)
        rows.append(
            fit_point(table, model, events, truth[0] if len(truth) == 1 else truth, events_per_set, sets,
                      label=f"point {index}", source=source, progress=progress, profiled=prof)
        )
    return rows


def refuse_short_points(dataset: Path, points: Sequence[Mapping], events_per_set: int, sets: int) -> None:
    """A DatasetError naming the first point of a dataset's manifest with fewer than ``sets * events_per_set`` events."""
    need = events_per_set * sets
    for p in points:  # refuse before any fitting
        if p["events"] < need:
            where = ", ".join(f"{c}={v:g}" for c, v in sorted(p["shifts"].items()))
            raise DatasetError(
                f"{dataset}: point {p['index']} ({where}) has {p['events']} events, "
                f"needs {need} ({sets} sets x {events_per_set} events)"
            )


def fit_point(
    table: Any,
    model: Any,
    events: pa.Table,
    dc9_true: float | Sequence[float],
    events_per_set: int,
    sets: int,
    *,
    label: str = "point",
    source: str = "events",
    progress: Callable[[int], None] | None = None,
    profiled: "Profiled | None" = None,
) -> dict:
    """Fit the first ``sets * events_per_set`` of ``events`` (validated) as consecutive disjoint sets.

    ``table`` is the theory table, ``model`` the likelihood's PdfModel at the
    events' level. Returns the point's row with the keys :data:`POINT_COLUMNS`.
    ``sigma_crb`` is evaluated at ``dc9_true``, or at the mean estimate when
    the truth is unknown (NaN); the bias, MSE and pulls are then NaN.

    ``profiled``: fit delta C9 and the form factors together (:func:`kernels.profile.fit_sets_profiled`,
    prior-constrained); the errors, pulls and coverage are then the profiled ones, and the row adds
    :data:`NUISANCE_COLUMNS` (``sigma_crb_eff`` at the prior's centre, the same point as ``sigma_crb``).

    Several coefficients (``table`` over them, ``dc9_true`` the truth vector): the joint fit's row,
    :func:`kernels.metrics.joint_columns`, with each coefficient's efficient bound when ``profiled``.
    """
    from kernels import likelihood, metrics

    need = events_per_set * sets
    if events.num_rows < need:
        raise DatasetError(
            f"{source}: {label} has {events.num_rows} events, needs {need} "
            f"({sets} sets x {events_per_set} events)"
        )
    used = events.slice(0, need)
    arr = np.stack(
        [used.column(c).to_numpy().astype(np.float64, copy=False) for c in COLUMNS], axis=-1
    ).reshape(sets, events_per_set, len(COLUMNS))

    truth = np.atleast_1d(np.asarray(dc9_true, dtype=np.float64))  # one value per fitted coefficient
    log.info("%s (truth %s): fitting %d sets x %d events%s", label, ", ".join(f"{v:g}" for v in truth), sets,
             events_per_set, "" if profiled is None else f", {profiled.table.n_nuisances} nuisances profiled")
    if profiled is None:
        result = likelihood.fit_sets(table, arr, model, progress=progress)
    else:
        from kernels import profile

        result = profile.fit_sets_profiled(profiled.table, arr, model, profiled.prior_scale, progress, profiled.norm)
    values = np.asarray(result.values)
    n_invalid = int(np.count_nonzero(~np.asarray(result.valid, dtype=bool)))
    if n_invalid:
        log.warning("%s: %d of %d fits did not converge", label, n_invalid, sets)
    if truth.size > 1:
        from orchestrator.evaluate.joint import joint_row

        return joint_row(table, model, result, truth, events_per_set, label, profiled)
    at = dc9_true
    if not math.isfinite(at):
        finite = values[np.isfinite(values)]
        at = float(finite.mean()) if finite.size else math.nan
        log.info("%s: truth unknown; sigma_crb at the mean estimate dc9=%g", label, at)
    crb = _scalar(likelihood.sigma_crb(table, [at], events_per_set, model)) if math.isfinite(at) else math.nan
    row = metrics.point_metrics(
        values,
        np.asarray(result.errors),
        truth=dc9_true,
        sigma_crb=crb,
        n_events=events_per_set,
    )
    out = {k: row[k] for k in POINT_COLUMNS}
    if profiled is not None:
        eff = profiled.sigma_crb_eff(at, events_per_set, model) if math.isfinite(at) else math.nan
        out.update(sigma_crb_eff=eff, sigma_over_crb_eff=float(row["sigma"]) / eff if math.isfinite(eff) else math.nan)
    return out


@dataclass
class Profiled:
    """The profiled fit's theory: the bi-quadratic tables, the prior's scale and the normalisation at the events' level."""

    table: Any
    prior_scale: float
    norm: np.ndarray

    def bound(self, shifts, n_events: int, model: Any) -> tuple[np.ndarray, np.ndarray]:
        """The efficient bound at ``shifts`` (one value per coefficient) for sets of ``n_events``: each
        coefficient's sigma_CRB,eff and their covariance (:func:`kernels.likelihood.efficient_bound`)."""
        from kernels import likelihood

        shifts = np.atleast_1d(np.asarray(shifts, dtype=np.float64))
        I = likelihood.fisher_information_nuisances(self.table, shifts, model=model)
        prec = np.eye(self.table.n_nuisances) / self.prior_scale**2
        return likelihood.efficient_bound(I, shifts.size, n_events, prec)

    def sigma_crb_eff(self, dc9: float, n_events: int, model: Any) -> float:
        return float(self.bound([dc9], n_events, model)[0][0])


FIT_NUISANCES = ("none", "bsz", "bsz+pc")
"""``wcscan fit --nuisances``: none, flavio's 19 BSZ form factors, or those and its power corrections."""


def check_nuisances(nuisances: str, prior_scale: float | None) -> float:
    """The fit's nuisance options: ``nuisances`` is one of :data:`FIT_NUISANCES`; ``prior_scale`` (None: 1)
    only with nuisances."""
    from kernels.nuisances import check_prior_scale

    if nuisances not in FIT_NUISANCES:
        raise ConfigError(f"unknown --nuisances {nuisances!r}; expected one of {', '.join(FIT_NUISANCES)}")
    if nuisances == "none":
        if prior_scale is not None:
            raise ConfigError("--prior-scale goes with --nuisances bsz or bsz+pc (the hadronic inputs' prior)")
        return 1.0
    return check_prior_scale(1.0 if prior_scale is None else prior_scale, "--prior-scale")


def profiled_theory(ntable: Any, prior_scale: float) -> Callable[[list, Any, Any], Profiled]:
    """The ``profiled`` argument of :func:`fit_dataset` and :func:`fit_events_points` for the bi-quadratic
    tables ``ntable`` (:func:`kernels.nuisances.nuisance_table`): it checks that they are the events' theory
    and adds the normalisation under the events' pdf."""

    def theory(coefficients, windows, model) -> Profiled:
        from kernels.profile import profile_normalisation

        if tuple(coefficients) != tuple(ntable.coefficients) or tuple(map(tuple, windows)) != tuple(ntable.windows):
            raise ConfigError(f"the form-factor tables are over {list(ntable.coefficients)} in {list(ntable.windows)}, "
                              f"the events over {list(coefficients)} in {[tuple(w) for w in windows]}")
        return Profiled(ntable, prior_scale, profile_normalisation(ntable, model))

    return theory


def csv_cell(value) -> str:
    """One CSV cell: bools and ints as such, floats by repr (round-trip exact), nan and inf by name."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return repr(v) if math.isfinite(v) else str(v)  # 'nan', 'inf'
    return str(value)


def write_points_csv(rows: Iterable[Mapping], path: Path) -> Path:
    """Write the per-point rows as CSV with exactly :data:`POINT_COLUMNS` (then the nuisance columns, when every row has them), atomically."""
    path = Path(path)
    rows = list(rows)
    columns = POINT_COLUMNS + (NUISANCE_COLUMNS if rows and all(NUISANCE_COLUMNS[0] in r for r in rows) else ())
    if rows and "mean" not in rows[0]:  # a joint fit of several coefficients: its rows' own columns, in order
        columns = tuple(rows[0])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"point row lacks column(s) {missing}")
        writer.writerow([csv_cell(row[c]) for c in columns])
    atomic_write_text(path, buf.getvalue())
    log.info("wrote %s", path)
    return path

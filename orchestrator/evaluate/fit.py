"""Unbinned maximum-likelihood fits of delta C9 on sets drawn from a dataset or a user's events.

For each scan point, the first ``sets * events_per_set`` events are cut into
``sets`` disjoint, consecutive sets of ``events_per_set`` events; each set is
fitted, and the ensemble of estimates is summarised beside the Cramer-Rao
bound ``sigma_crb`` into one row per point (:data:`POINT_COLUMNS`).
:func:`fit_point` does this for one point; :func:`fit_dataset` applies it to
each point of an event dataset, :func:`fit_events_file` to the points of a
user's Parquet (or ROOT) file of events:

- with a ``dc9`` column (or ``dc9_column=NAME``), rows are grouped by its
  value, one point per distinct value, in ascending order; within a point the
  rows keep the file's order;
- with ``dc9_true=VALUE``, all rows are one point with that truth (any ``dc9``
  column is ignored);
- otherwise all rows are one point whose truth is unknown (NaN): ``dc9_true``,
  ``bias``, ``mse`` and the pulls are NaN, and ``sigma_crb`` is evaluated at
  the mean estimate instead of the truth.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DatasetError
from kernels.event_store import COLUMNS, LEVELS, load_events, read_event_manifest, read_point, validate_events
from kernels.files import atomic_write_text
from kernels.metrics import NUISANCE_COLUMNS, POINT_COLUMNS
from kernels.theory import SCAN_COEFFICIENTS
from orchestrator.config.checks import positive_int
from orchestrator.evaluate.joint import fitted_coefficients

__all__ = [
    "POINT_COLUMNS",
    "EventsPoint",
    "fit_point",
    "fit_dataset",
    "read_events_file",
    "fit_events_points",
    "fit_events_file",
    "write_points_csv",
    "Profiled",
    "check_nuisances",
    "refuse_short_points",
    "refuse_short_events",
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


# --- a user's events ------------------------------------------------------------


class EventsPoint(NamedTuple):
    """The events of one point of a user's file and their truth (NaN when unknown)."""

    dc9_true: float
    events: pa.Table


def _column_map(column_map: Mapping[str, str] | None, dc9_column: str | None) -> dict[str, str]:
    """The file -> wcscan column map, with ``dc9_column`` mapped to ``dc9``."""
    cm = dict(column_map or {})
    if dc9_column is None:
        return cm
    if cm.get(dc9_column, "dc9") != "dc9":
        raise ConfigError(f"--dc9-column {dc9_column!r} is also mapped to {cm[dc9_column]!r} by --column-map")
    other = [k for k, v in cm.items() if v == "dc9" and k != dc9_column]
    if other:
        raise ConfigError(f"--dc9-column {dc9_column!r} and --column-map dc9={other[0]} name two truth columns")
    cm[dc9_column] = "dc9"
    return cm


def read_events_file(
    path: str | os.PathLike,
    column_map: Mapping[str, str] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
    *,
    dc9_column: str | None = None,
    dc9_true: float | None = None,
) -> list[EventsPoint]:
    """Load, validate and group a user's events into points (see the module docstring).

    ``column_map`` maps the file's column names to wcscan's; ``dc9_column``
    names the file's truth column (default: a ``dc9`` column if there is one).
    The events are validated against ``windows`` (default 1.1 to 6.0 GeV^2);
    every problem is a one-line DatasetError naming the file, the column and
    the number of rows.
    """
    from kernels import theory

    if dc9_column is not None and dc9_true is not None:
        raise ConfigError("give --dc9-column or --dc9-true, not both")
    if dc9_true is not None:
        try:
            dc9_true = float(dc9_true)
        except (TypeError, ValueError):
            raise ConfigError(f"--dc9-true must be a number, got {dc9_true!r}") from None
        if not math.isfinite(dc9_true):
            raise ConfigError(f"--dc9-true must be finite, got {dc9_true!r}")
    windows = [tuple(map(float, w)) for w in theory.validate_windows(windows or theory.DEFAULT_WINDOWS)]
    source = os.fspath(path)
    table = load_events(path, _column_map(column_map, dc9_column))
    names = table.column_names
    twice = sorted({c for c in names if names.count(c) > 1 and c in (*COLUMNS, "dc9")})
    if twice:
        raise DatasetError(
            f"{source}: two columns are named {twice[0]!r} after the column map ({table.num_rows} rows); "
            "map only one of them"
        )
    validate_events(table, source, q2_windows=windows)
    if dc9_true is not None:
        return [EventsPoint(dc9_true, table)]
    if "dc9" not in names:
        if dc9_column is not None:  # load_events refuses an absent mapped column; kept for safety
            raise DatasetError(f"{source}: no column {dc9_column!r} ({table.num_rows} rows)")
        log.info("%s: no dc9 column: one point, truth unknown", source)
        return [EventsPoint(math.nan, table)]

    col = f"column {dc9_column!r} (dc9)" if dc9_column not in (None, "dc9") else "column 'dc9'"
    typ = table.schema.field("dc9").type
    if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
        raise DatasetError(
            f"{source}: {col} has type {typ}, expected a number ({table.num_rows} rows affected)"
        )
    dc9 = table.column("dc9").to_numpy(zero_copy_only=False).astype(np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(dc9)))
    if n_bad:
        raise DatasetError(f"{source}: {col} has {n_bad} non-finite or null value(s) of {table.num_rows} rows")
    if dc9.size == 0:
        return [EventsPoint(math.nan, table)]
    order = np.argsort(dc9, kind="stable")  # one pass; rows keep the file's order within a point
    values, starts = np.unique(dc9[order], return_index=True)
    bounds = [*starts.tolist(), dc9.size]
    return [
        EventsPoint(float(v), table.take(order[bounds[i] : bounds[i + 1]]))
        for i, v in enumerate(values)
    ]


def refuse_short_events(points: Sequence[EventsPoint], events_per_set: int, sets: int, source: str = "events") -> None:
    """A DatasetError when there are no points, or naming the first with fewer than ``sets * events_per_set`` events."""
    if not points:
        raise DatasetError(f"{source}: no events")
    need = events_per_set * sets
    short = [(i, p) for i, p in enumerate(points) if p.events.num_rows < need]
    if short:
        i, p = short[0]
        at = f"point {i} (dc9={p.dc9_true:g}) has" if math.isfinite(p.dc9_true) else "has"
        more = f"; {len(short) - 1} more point(s) are short too" if len(short) > 1 else ""
        raise DatasetError(
            f"{source}: {at} {p.events.num_rows} events, needs {need} "
            f"({sets} sets x {events_per_set} events){more}"
        )


def fit_events_points(
    points: Sequence[EventsPoint],
    events_per_set: int,
    sets: int,
    windows: Sequence[tuple[float, float]] | None = None,
    level: str = "gen",
    detector: Any = None,
    progress: Callable[[int], None] | None = None,
    *,
    source: str = "events",
    profiled: Callable[[list, Any, Any], Profiled] | None = None,
) -> list[dict]:
    """Fit the points of :func:`read_events_file`; one row per point (:data:`POINT_COLUMNS`).

    ``level`` picks the pdf: at ``det`` and ``det_bkg`` it includes the
    acceptance and background of ``detector`` (a DetectorConfig or a dict of
    its settings; default: the toy's defaults). Every point's event count is
    checked before any fit runs.
    """
    positive_int(events_per_set, "--events-per-set")
    positive_int(sets, "--sets")
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    refuse_short_events(points, events_per_set, sets, source)

    from kernels import detector as detector_module
    from kernels import theory

    windows = theory.validate_windows(windows or theory.DEFAULT_WINDOWS)
    table = theory.jtable(list(SCAN_COEFFICIENTS), windows)
    det = detector if isinstance(detector, detector_module.DetectorConfig) else (
        detector_module.DetectorConfig.from_dict(detector)
    )
    model = det.pdf_model(level, table.windows)
    prof = None if profiled is None else profiled(list(SCAN_COEFFICIENTS), table.windows, model)
    return [
        fit_point(table, model, p.events, p.dc9_true, events_per_set, sets,
                  label=f"point {i}", source=source, progress=progress, profiled=prof)
        for i, p in enumerate(points)
    ]


def fit_events_file(path: str | os.PathLike, column_map: Mapping[str, str] | None, events_per_set: int, sets: int,
                    *, dc9_column: str | None = None, dc9_true: float | None = None, **options) -> list[dict]:
    """Fit a user's events file: :func:`read_events_file`, then :func:`fit_events_points` (``options``).

    ``path`` is a Parquet file, or a ROOT file ``F.root`` / ``F.root:TREE``
    (needs uproot: ``pip install 'wcscan[root]'``). Returns one row per point.
    """
    points = read_events_file(path, column_map, options.get("windows"), dc9_column=dc9_column, dc9_true=dc9_true)
    return fit_events_points(points, events_per_set, sets, source=os.fspath(path), **options)


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

"""A user's own file of events (Parquet, or ROOT with uproot), grouped into points by their truth and fitted
like a dataset's (:func:`orchestrator.evaluate.fit.fit_point`).

The truth of each fitted coefficient is the file's shift column (``dc9``, ``dc10``, ...; another name with
``column_map`` or, for delta C9, ``dc9_column=NAME``):

- with the truth columns, rows are grouped by the truth vector, one point per
  distinct value, in ascending (lexicographic) order; within a point the
  rows keep the file's order;
- with ``truth={"dc9": V, ...}`` (``dc9_true=V`` for delta C9 alone), all rows
  are one point with that truth (any truth column is ignored);
- otherwise all rows are one point whose truth is unknown (NaN): the truth,
  ``bias``, ``mse`` and the pulls are NaN, and ``sigma_crb`` is evaluated at
  the mean estimate instead of the truth.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DatasetError
from kernels.event_store import COLUMNS, LEVELS, load_events, validate_events
from kernels.theory import SCAN_COEFFICIENTS
from orchestrator.config.checks import positive_int
from orchestrator.evaluate.fit import Profiled, fit_point

__all__ = ["EventsPoint", "read_events_file", "refuse_short_events", "fit_events_points", "fit_events_file"]

log = logging.getLogger(__name__)


class EventsPoint(NamedTuple):
    """The events of one point of a user's file and their truth: the true shift of each fitted coefficient,
    keyed by shift column (NaN when unknown)."""

    truth: dict[str, float]
    events: pa.Table

    @property
    def dc9_true(self) -> float:
        return self.truth.get("dc9", math.nan)

    def where(self) -> str:
        """``dc9=-1, dc10=0.5``; empty when the truth is unknown."""
        if not all(math.isfinite(v) for v in self.truth.values()):
            return ""
        return ", ".join(f"{s}={v:g}" for s, v in self.truth.items())


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


def _finite(value, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return value


def read_events_file(
    path: str | os.PathLike,
    column_map: Mapping[str, str] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
    *,
    dc9_column: str | None = None,
    dc9_true: float | None = None,
    shifts: Sequence[str] = ("dc9",),
    truth: Mapping[str, float] | None = None,
) -> list[EventsPoint]:
    """Load, validate and group a user's events into points (see the module docstring).

    ``column_map`` maps the file's column names to wcscan's; ``dc9_column``
    names the file's truth column (default: a ``dc9`` column if there is one).
    ``shifts``: the fitted coefficients' shift columns. With several, the truth columns are the file's
    ``dc9``, ``dc10``, ... (or those ``column_map`` maps to them), and the rows are grouped by the truth
    vector in ascending order; the file must have every fitted coefficient's truth column or none.
    ``truth`` (every fitted shift's value) or, for delta C9 alone, ``dc9_true``: all rows are one point.
    The events are validated against ``windows`` (default 1.1 to 6.0 GeV^2);
    every problem is a one-line DatasetError naming the file, the column and
    the number of rows.
    """
    from kernels import theory

    shifts = tuple(shifts)
    if dc9_column is not None and dc9_true is not None:
        raise ConfigError("give --dc9-column or --dc9-true, not both")
    if dc9_true is not None and truth is not None:
        raise ConfigError("give --dc9-true or --truth, not both")
    if dc9_true is not None:
        if shifts != ("dc9",):
            raise ConfigError(f"--dc9-true sets delta C9 alone; fitting {', '.join(shifts)}, give each one's "
                              f"truth: --truth {','.join(f'{c}=VALUE' for c in shifts)}")
        truth = {"dc9": _finite(dc9_true, "--dc9-true")}
    if truth is not None:
        truth = {str(k): _finite(v, f"--truth {k}") for k, v in truth.items()}
        if sorted(truth) != sorted(shifts):
            raise ConfigError(f"--truth gives {', '.join(truth) or 'nothing'}; the fit needs exactly "
                              f"{', '.join(shifts)}")
    windows = [tuple(map(float, w)) for w in theory.validate_windows(windows or theory.DEFAULT_WINDOWS)]
    source = os.fspath(path)
    cm = _column_map(column_map, dc9_column)
    table = load_events(path, cm)
    names = table.column_names
    twice = sorted({c for c in names if names.count(c) > 1 and c in (*COLUMNS, *shifts)})
    if twice:
        raise DatasetError(
            f"{source}: two columns are named {twice[0]!r} after the column map ({table.num_rows} rows); "
            "map only one of them"
        )
    validate_events(table, source, q2_windows=windows)
    if truth is not None:
        return [EventsPoint({s: truth[s] for s in shifts}, table)]
    unknown = EventsPoint({s: math.nan for s in shifts}, table)
    present = [s for s in shifts if s in names]
    if not present:
        log.info("%s: no truth column (%s): one point, truth unknown", source, ", ".join(shifts))
        return [unknown]
    if len(present) < len(shifts):
        missing = [s for s in shifts if s not in names]
        raise DatasetError(
            f"{source}: has a truth column for {', '.join(present)} but not for {', '.join(missing)} "
            f"({table.num_rows} rows); name it (--column-map {missing[0]}=COL) or give --truth"
        )
    file_name = {v: k for k, v in cm.items()}
    cols = []
    for s in shifts:
        col = f"column {file_name[s]!r} ({s})" if file_name.get(s, s) != s else f"column {s!r}"
        typ = table.schema.field(s).type
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
            raise DatasetError(
                f"{source}: {col} has type {typ}, expected a number ({table.num_rows} rows affected)"
            )
        v = table.column(s).to_numpy(zero_copy_only=False).astype(np.float64)
        n_bad = int(np.count_nonzero(~np.isfinite(v)))
        if n_bad:
            raise DatasetError(f"{source}: {col} has {n_bad} non-finite or null value(s) of {table.num_rows} rows")
        cols.append(v)
    if table.num_rows == 0:
        return [unknown]
    values, inverse = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)  # ascending, lexicographic
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")  # one pass; rows keep the file's order within a point
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(values)))]).tolist()
    return [
        EventsPoint(dict(zip(shifts, map(float, v))), table.take(order[bounds[i] : bounds[i + 1]]))
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
        at = f"point {i} ({p.where()}) has" if p.where() else "has"
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
    coefficients: Sequence[str] | None = None,
) -> list[dict]:
    """Fit the points of :func:`read_events_file`; one row per point (:data:`POINT_COLUMNS`; with several
    ``coefficients``, the flavio names of those the points' truth is over, the joint fit's row).

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

    from kernels.design import shift_columns

    coefficients = list(SCAN_COEFFICIENTS if coefficients is None else coefficients)
    shifts = shift_columns(coefficients)
    windows = theory.validate_windows(windows or theory.DEFAULT_WINDOWS)
    table = theory.jtable(coefficients, windows)
    det = detector if isinstance(detector, detector_module.DetectorConfig) else (
        detector_module.DetectorConfig.from_dict(detector)
    )
    model = det.pdf_model(level, table.windows)
    prof = None if profiled is None else profiled(coefficients, table.windows, model)
    rows = []
    for i, p in enumerate(points):
        truth = [p.truth.get(s, math.nan) for s in shifts]
        rows.append(fit_point(table, model, p.events, truth[0] if len(truth) == 1 else truth, events_per_set, sets,
                              label=f"point {i}", source=source, progress=progress, profiled=prof))
    return rows


def fit_events_file(path: str | os.PathLike, column_map: Mapping[str, str] | None, events_per_set: int, sets: int,
                    *, dc9_column: str | None = None, dc9_true: float | None = None, **options) -> list[dict]:
    """Fit a user's events file: :func:`read_events_file`, then :func:`fit_events_points` (``options``).

    ``path`` is a Parquet file, or a ROOT file ``F.root`` / ``F.root:TREE``
    (needs uproot: ``pip install 'wcscan[root]'``). Returns one row per point.
    """
    from kernels.design import shift_columns

    shifts = shift_columns(options.get("coefficients") or SCAN_COEFFICIENTS)
    points = read_events_file(path, column_map, options.get("windows"), dc9_column=dc9_column, dc9_true=dc9_true,
                              shifts=shifts, truth=options.pop("truth", None))
    return fit_events_points(points, events_per_set, sets, source=os.fspath(path), **options)

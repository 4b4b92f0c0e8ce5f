"""Unbinned maximum-likelihood fits of delta C9 on sets drawn from a dataset.

For each scan point of a dataset, the first ``sets * events_per_set`` events
are cut into ``sets`` disjoint, consecutive sets of ``events_per_set`` events;
each set is fitted, and the ensemble of estimates is summarised beside the
Cramer-Rao bound ``sigma_crb`` into one row per point (:data:`POINT_COLUMNS`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from kernels.dataset import COLUMNS, LEVELS, read_manifest, read_point, validate_events
from kernels.errors import ConfigError, DatasetError
from kernels.metrics import POINT_COLUMNS

__all__ = ["POINT_COLUMNS", "fit_dataset", "write_points_csv"]

log = logging.getLogger(__name__)



def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


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
) -> list[dict]:
    """Fit ``sets`` sets of ``events_per_set`` events at each point of ``dataset``.

    Returns one dict per scan point with the keys :data:`POINT_COLUMNS`.
    ``level`` defaults to the dataset's own; at ``det`` and ``det_bkg`` the pdf
    includes the acceptance and the background recorded in the manifest, so the
    fit and its Cramér–Rao bound stay fair.
    ``progress(n)`` is called with the number of sets fitted, as they finish.
    A point with fewer than ``sets * events_per_set`` events is refused before
    any fit runs.
    """
    dataset = Path(dataset)
    _positive("--events-per-set", events_per_set)
    _positive("--sets", sets)
    manifest = read_manifest(dataset)
    if level is None:
        level = str(manifest.get("config", {}).get("level", "gen"))
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if not str(manifest.get("format", "")).startswith("wcscan-events/"):
        raise DatasetError(
            f"{dataset}/manifest.json: not a wcscan event dataset (format {manifest.get('format')!r})"
        )
    try:
        config = manifest["config"]
        coefficients = list(config["coefficients"])
        windows = [tuple(w) for w in config["windows"]]
        points = sorted(manifest["points"], key=lambda p: p["index"])
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{dataset}/manifest.json: missing or malformed entry {err}") from None

    need = events_per_set * sets
    for p in points:  # refuse before any fitting
        if p["events"] < need:
            raise DatasetError(
                f"{dataset}: point {p['index']} (dc9={p['shifts']['dc9']:g}) has {p['events']} events, "
                f"needs {need} ({sets} sets x {events_per_set} events)"
            )

    from kernels import detector, likelihood, metrics, theory

    table = theory.jtable(coefficients, windows)
    model = detector.DetectorConfig.from_dict(config.get("detector")).pdf_model(level, table.windows)
    rows = []
    for p in points:
        index, dc9_true = p["index"], float(p["shifts"]["dc9"])
        source = f"{dataset}/level={level}/point={index:03d}"
        events = read_point(dataset, manifest, level, index)
        validate_events(events, source, q2_windows=windows)
        if events.num_rows < need:
            raise DatasetError(
                f"{source}: point {index} has {events.num_rows} events, needs {need} "
                f"({sets} sets x {events_per_set} events)"
            )
        used = events.slice(0, need)
        arr = np.stack(
            [used.column(c).to_numpy().astype(np.float64, copy=False) for c in COLUMNS], axis=-1
        ).reshape(sets, events_per_set, len(COLUMNS))

        log.info("point %d (dc9=%g): fitting %d sets x %d events", index, dc9_true, sets, events_per_set)
        result = likelihood.fit_sets(table, arr, model, progress=progress)
        n_invalid = int(np.count_nonzero(~np.asarray(result.valid, dtype=bool)))
        if n_invalid:
            log.warning("point %d: %d of %d fits did not converge", index, n_invalid, sets)
        crb = _scalar(likelihood.sigma_crb(table, [dc9_true], events_per_set, model))
        row = metrics.point_metrics(
            np.asarray(result.values),
            np.asarray(result.errors),
            truth=dc9_true,
            sigma_crb=crb,
            n_events=events_per_set,
        )
        rows.append({k: row[k] for k in POINT_COLUMNS})
    return rows


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return repr(v) if math.isfinite(v) else str(v)  # 'nan', 'inf'
    return str(value)


def write_points_csv(rows: Iterable[Mapping], path: Path) -> Path:
    """Write the per-point rows as CSV with exactly :data:`POINT_COLUMNS`, atomically."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(POINT_COLUMNS)
    for row in rows:
        missing = [c for c in POINT_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"point row lacks column(s) {missing}")
        writer.writerow([_format(row[c]) for c in POINT_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)
    return path

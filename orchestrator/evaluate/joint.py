"""The joint fit of several Wilson coefficients: which coefficients a dataset's fit takes, and a point's row.

A dataset scans one or more coefficients (its manifest's shift vectors); ``wcscan fit`` fits those, or more
(:func:`fitted_coefficients`: a coefficient the dataset does not scan was 0 in its events). With several,
:func:`joint_row` summarises a point's fits (:func:`kernels.metrics.joint_point_metrics`): each coefficient's
metrics beside its marginal bound, the correlations beside the bound's and the joint coverage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.errors import ConfigError

__all__ = ["fitted_coefficients", "joint_row", "add_efficient_bound", "joint_summary"]

log = logging.getLogger(__name__)


def fitted_coefficients(manifest: Any, coefficients: Sequence[str] | None = None) -> list[str]:
    """The flavio names of the coefficients to fit on a dataset: ``coefficients`` (any spelling
    :func:`kernels.design.shift_column` reads; default the dataset's), which must include every coefficient
    the dataset scans."""
    from kernels.design import shift_columns
    from kernels.theory import coefficient_for

    scanned = list(manifest.shift_columns)
    cols = scanned if coefficients is None else list(shift_columns(coefficients))
    missing = [c for c in scanned if c not in cols]
    if missing:
        raise ConfigError(f"--coefficients {','.join(cols)}: the dataset {manifest.root} scans "
                          f"{', '.join(missing)} too; fit every scanned coefficient (add {', '.join(missing)})")
    return [coefficient_for(c) for c in cols]


def joint_row(table: Any, model: Any, result: Any, truth: np.ndarray, n_events: int, label: str,
              profiled: Any) -> dict:
    """The row of a joint fit of several coefficients (:func:`kernels.metrics.joint_columns`): the bound's
    covariance is the inverse Fisher matrix at the truth (at the mean estimate when it is unknown)."""
    from kernels import likelihood, metrics

    values = np.asarray(result.values, dtype=np.float64)
    at = truth
    if not np.isfinite(truth).all():
        ok = np.isfinite(values).all(axis=1)
        at = values[ok].mean(axis=0) if ok.any() else truth
        log.info("%s: truth unknown; the bound at the mean estimate %s", label, np.round(at, 4).tolist())
    shifts = table.shift_columns
    n = len(shifts)
    bound = (np.linalg.inv(likelihood.fisher_information(table, at, model)) / n_events if np.isfinite(at).all()
             else np.full((n, n), np.nan))
    row = metrics.joint_point_metrics(values, result.covariances, truth=truth, crb_covariance=bound,
                                      n_events=n_events, shifts=shifts)
    if profiled is not None:
        add_efficient_bound(row, shifts, *(profiled.bound(at, n_events, model) if np.isfinite(at).all()
                                           else (np.full(n, np.nan), np.full((n, n), np.nan))))
    return {k: row[k] for k in metrics.joint_columns(shifts, nuisances=profiled is not None)}


def add_efficient_bound(row: dict, shifts: Sequence[str], sigma_eff, cov_eff) -> dict:
    """Add to a joint row each coefficient's efficient bound (``sigma_crb_eff_<s>``, the form factors profiled),
    sigma over it, and the bound's correlations (``corr_crb_eff_<a>_<b>``); return the row."""
    shifts = list(shifts)
    for i, s in enumerate(shifts):
        row[f"sigma_crb_eff_{s}"] = float(sigma_eff[i])
        row[f"sigma_over_crb_eff_{s}"] = float(row[f"sigma_{s}"]) / float(sigma_eff[i])
        for j in range(i + 1, len(shifts)):
            row[f"corr_crb_eff_{s}_{shifts[j]}"] = float(cov_eff[i][j] / (sigma_eff[i] * sigma_eff[j]))
    return row


def add_image_bound(row: dict, shifts: Sequence[str], image_information, n: int) -> tuple[str, ...]:
    """Add each coefficient's bound from what a voxel image keeps (``sigma_crb_image_<shift>``, the others free:
    :mod:`kernels.image_information`, its mean-q2 channel a conservative lower bound on the information) and
    ``sigma_over_crb_image_<shift>`` to ``row``; returns their names.

    >>> row = {"sigma_dc9": 0.2}
    >>> add_image_bound(row, ["dc9"], np.array([[25.0]]), 4), row["sigma_over_crb_image_dc9"]
    (('sigma_crb_image_dc9', 'sigma_over_crb_image_dc9'), 2.0)
    """
    sig = np.sqrt(np.diag(np.linalg.inv(np.atleast_2d(image_information))) / n)
    names: list[str] = []
    for s, b in zip(shifts, sig):
        row[f"sigma_crb_image_{s}"] = float(b)
        row[f"sigma_over_crb_image_{s}"] = float(row[f"sigma_{s}"] / b)
        names += [f"sigma_crb_image_{s}", f"sigma_over_crb_image_{s}"]
    return tuple(names)


def joint_summary(rows: Sequence[dict], shifts: Sequence[str]) -> dict:
    """The summary of an estimator's joint rows, per set size N (``_N<n>`` suffixes): each coefficient's mean
    and largest sigma / sigma_CRB and largest |bias| / sigma_CRB over the points, the largest gap between the
    estimates' correlation and the bound's, and the joint coverage (mean over the points, and its range).

    >>> r = {"n_events": 100, "sigma_over_crb_dc9": 1.0, "bias_dc9": 0.1, "sigma_crb_dc9": 0.5, "corr_dc9_dc9p": 0.2,
    ...      "corr_crb_dc9_dc9p": 0.1, "joint_coverage_68": 0.7, "joint_coverage_95": 0.9,
    ...      "sigma_over_crb_dc9p": 1.2, "bias_dc9p": 0.0, "sigma_crb_dc9p": 1.0}
    >>> s = joint_summary([r], ["dc9", "dc9p"])
    >>> s["sigma_over_crb_mean_dc9p_N100"], s["abs_bias_over_crb_max_dc9_N100"], round(s["corr_gap_max_N100"], 3)
    (1.2, 0.2, 0.1)
    """
    out: dict = {}
    shifts = list(shifts)
    pairs = [(a, b) for i, a in enumerate(shifts) for b in shifts[i + 1:]]
    for n in sorted({int(r["n_events"]) for r in rows}):
        sel = [r for r in rows if int(r["n_events"]) == n]
        for s in shifts:
            so = np.array([r[f"sigma_over_crb_{s}"] for r in sel], dtype=float)
            b = np.array([abs(r[f"bias_{s}"]) / r[f"sigma_crb_{s}"] for r in sel], dtype=float)
            out[f"sigma_over_crb_mean_{s}_N{n}"] = float(np.nanmean(so))
            out[f"sigma_over_crb_max_{s}_N{n}"] = float(np.nanmax(so))
            out[f"abs_bias_over_crb_max_{s}_N{n}"] = float(np.nanmax(b))
            if f"sigma_crb_eff_{s}" in sel[0]:  # against the efficient bound too (the form factors profiled)
                eff = np.array([r[f"sigma_crb_eff_{s}"] for r in sel], dtype=float)
                sig = np.array([r[f"sigma_{s}"] for r in sel], dtype=float)
                be = np.array([abs(r[f"bias_{s}"]) for r in sel], dtype=float) / eff
                out[f"sigma_over_crb_eff_mean_{s}_N{n}"] = float(np.nanmean(sig / eff))
                out[f"sigma_over_crb_eff_max_{s}_N{n}"] = float(np.nanmax(sig / eff))
                out[f"abs_bias_over_crb_eff_max_{s}_N{n}"] = float(np.nanmax(be))
            if f"sigma_over_crb_image_{s}" in sel[0]:  # a ResNet's: against what its images keep
                img = np.array([r[f"sigma_over_crb_image_{s}"] for r in sel], dtype=float)
                out[f"sigma_over_crb_image_mean_{s}_N{n}"] = float(np.nanmean(img))
                out[f"sigma_over_crb_image_max_{s}_N{n}"] = float(np.nanmax(img))
        if pairs:
            out[f"corr_gap_max_N{n}"] = float(max(abs(r[f"corr_{a}_{b}"] - r[f"corr_crb_{a}_{b}"])
                                                  for r in sel for a, b in pairs))
            if f"corr_crb_eff_{pairs[0][0]}_{pairs[0][1]}" in sel[0]:
                out[f"corr_gap_eff_max_N{n}"] = float(max(abs(r[f"corr_{a}_{b}"] - r[f"corr_crb_eff_{a}_{b}"])
                                                          for r in sel for a, b in pairs))
        for level in (68, 95):
            cov = np.array([r[f"joint_coverage_{level}"] for r in sel], dtype=float)
            out[f"joint_coverage_{level}_mean_N{n}"] = float(np.nanmean(cov))
            out[f"joint_coverage_{level}_min_N{n}"] = float(np.nanmin(cov))
            out[f"joint_coverage_{level}_max_N{n}"] = float(np.nanmax(cov))
    return out

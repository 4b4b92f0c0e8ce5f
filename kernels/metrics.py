r"""Estimator metrics per true point (``physics.md``, "Metrics").

For the predictions x of M independent sets at truth d:

- mean mu, bias mu - d;
- sigma = std(x) with ``ddof=1`` (the unbiased variance); sigma_L and sigma_R are
  the RMS of x - mu over x < mu and over x >= mu;
- MSE = mean((x - d)^2);
- sigma / sigma_CRB;
- pulls (x - d) / sigma_x where the estimator gives an uncertainty: their mean and
  width (``ddof=1``);
- the coverage of the 68% and 95% intervals ``x +- z sigma_x``
  (:func:`kernels.coverage.point_coverage`), NaN without uncertainties or truth;
- sigma_CRB,image, the bound of the voxel image (:mod:`kernels.image_information`),
  for an estimator that sees images; NaN for the others.

>>> row = point_metrics(np.array([0.9, 1.1, 1.0, 1.2]), truth=1.0, sigma_crb=0.1, n_events=100)
>>> round(row["mean"], 3), round(row["bias"], 3), round(row["sigma"], 4), round(row["mse"], 4)
(1.05, 0.05, 0.1291, 0.015)
"""

from __future__ import annotations

import math

import numpy as np

from kernels.coverage import joint_point_coverage, point_coverage
from kernels.errors import ConfigError

POINT_COLUMNS = (
    "dc9_true",
    "n_sets",
    "n_events",
    "mean",
    "bias",
    "sigma",
    "sigma_left",
    "sigma_right",
    "sigma_crb",
    "sigma_over_crb",
    "mse",
    "pull_mean",
    "pull_width",
    "coverage_68",
    "coverage_95",
    "sigma_crb_image",
)
"""The per-point table's columns (the contract of ``design.md``, plus the pulls, the coverage and the image bound)."""

NUISANCE_COLUMNS = ("sigma_crb_eff", "sigma_over_crb_eff")
"""Added after :data:`POINT_COLUMNS` when the test sets come from worlds drawn from the nuisances' prior:
the efficient bound (:func:`kernels.likelihood.efficient_bound`) and sigma over it."""


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) if x.size else float("nan")


def point_metrics(
    values,
    errors=None,
    *,
    truth: float,
    sigma_crb: float,
    n_events: int,
    sigma_crb_image: float = math.nan,
    sigma_crb_eff: float | None = None,
) -> dict:
    """One row of the per-point table from the estimates (and optional uncertainties) of M sets.

    >>> x = np.array([0.95, 1.05, 1.0, 1.15])     # within 0.5, 0.5, 0 and 1.5 widths of the truth
    >>> row = point_metrics(x, np.full(4, 0.1), truth=1.0, sigma_crb=0.1, n_events=100)
    >>> row["coverage_68"], row["coverage_95"], row["sigma_crb_image"]
    (0.75, 1.0, nan)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("no estimates to summarise")
    mu = float(x.mean())
    sigma = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    dev = x - mu
    row = {
        "dc9_true": float(truth),
        "n_sets": int(x.size),
        "n_events": int(n_events),
        "mean": mu,
        "bias": mu - float(truth),
        "sigma": sigma,
        "sigma_left": _rms(dev[x < mu]),
        "sigma_right": _rms(dev[x >= mu]),
        "sigma_crb": float(sigma_crb),
        "sigma_over_crb": sigma / float(sigma_crb) if sigma_crb > 0 else float("nan"),
        "mse": float(np.mean((x - truth) ** 2)),
        "pull_mean": float("nan"),
        "pull_width": float("nan"),
        "coverage_68": float("nan"),
        "coverage_95": float("nan"),
        "sigma_crb_image": float(sigma_crb_image),
    }
    if sigma_crb_eff is not None:
        row["sigma_crb_eff"] = float(sigma_crb_eff)
        row["sigma_over_crb_eff"] = sigma / float(sigma_crb_eff) if sigma_crb_eff > 0 else float("nan")
    if errors is not None:
        e = np.asarray(errors, dtype=np.float64).ravel()
        ok = np.isfinite(e) & (e > 0)
        if ok.sum() > 1:
            pulls = (x[ok] - truth) / e[ok]
            row["pull_mean"] = float(pulls.mean())
            row["pull_width"] = float(pulls.std(ddof=1))
        if math.isfinite(truth) and (ok & np.isfinite(x)).any():
            cov = point_coverage(x, e, truth)
            row["coverage_68"], row["coverage_95"] = cov["coverage_68"], cov["coverage_95"]
    return row


PER_COEFFICIENT = ("mean", "bias", "sigma", "sigma_left", "sigma_right", "sigma_crb", "sigma_over_crb", "mse",
                   "pull_mean", "pull_width", "coverage_68", "coverage_95")
"""The columns of :func:`point_metrics` that :func:`joint_point_metrics` reports per coefficient, as ``<column>_<shift>``."""


JOINT_NUISANCE = ("sigma_crb_eff", "sigma_over_crb_eff")
"""Per coefficient, as ``<column>_<shift>``, when the hadronic inputs are profiled: the efficient bound (the other
coefficients and the nuisances free) and sigma over it."""


def joint_columns(shifts, nuisances: bool = False) -> tuple[str, ...]:
    """The per-point table's columns for several coefficients (the rows of :func:`joint_point_metrics`): the
    truths, ``n_sets, n_events``, each coefficient's metrics, the pairs' correlations beside the bound's, and
    the joint coverage; with ``nuisances``, each coefficient's efficient bound and the pairs' correlations in
    it (``corr_crb_eff_<a>_<b>``) too.

    >>> joint_columns(("dc9", "dc10"))[:4], joint_columns(("dc9", "dc10"))[-5:]
    (('dc9_true', 'dc10_true', 'n_sets', 'n_events'), ('corr_dc9_dc10', 'corr_crb_dc9_dc10', 'joint_coverage_68', 'joint_coverage_95', 'joint_ks_pvalue'))
    """
    shifts = tuple(shifts)
    cols = [f"{s}_true" for s in shifts] + ["n_sets", "n_events"]
    for s in shifts:
        cols += [f"{k}_{s}" for k in PER_COEFFICIENT + (JOINT_NUISANCE if nuisances else ())]
    for i, a in enumerate(shifts):
        for b in shifts[i + 1:]:
            cols += [f"corr_{a}_{b}", f"corr_crb_{a}_{b}"] + ([f"corr_crb_eff_{a}_{b}"] if nuisances else [])
    return tuple(cols + ["joint_coverage_68", "joint_coverage_95", "joint_ks_pvalue"])


def joint_point_metrics(values, covariances, *, truth, crb_covariance, n_events: int, shifts) -> dict:
    """One row for an estimator of several coefficients at one point: each coefficient's :func:`point_metrics`
    (``mean_dc10``, ``sigma_over_crb_dc10``, ...; its marginal bound ``sqrt(diag)`` of ``crb_covariance``,
    the other coefficients free), the truth per coefficient (``dc9_true``, ``dc10_true``), for each pair the
    estimates' correlation beside the bound's (``corr_dc9_dc10``, ``corr_crb_dc9_dc10``), and the joint
    coverage of the estimator's own 68% and 95% ellipsoids with the KS p-value of their chi-square PIT
    (:func:`kernels.coverage.joint_point_coverage`; NaN without covariances).

    ``values`` ``(M, n)``, ``covariances`` ``(M, n, n)`` or None, ``truth`` ``(n,)``, ``crb_covariance``
    ``(n, n)`` (the bound's covariance for sets of ``n_events``), ``shifts``: the n column names.

    >>> rng = np.random.default_rng(0)
    >>> C = np.array([[0.04, -0.03], [-0.03, 0.09]])
    >>> x = rng.multivariate_normal([-1.0, 0.5], C, size=2000)
    >>> row = joint_point_metrics(x, np.broadcast_to(C, (2000, 2, 2)), truth=[-1.0, 0.5], crb_covariance=C,
    ...                           n_events=100, shifts=("dc9", "dc10"))
    >>> round(row["sigma_over_crb_dc10"], 2), round(row["corr_dc9_dc10"], 2), row["corr_crb_dc9_dc10"]
    (0.99, -0.52, -0.5)
    >>> round(row["joint_coverage_95"], 2)
    0.95
    """
    x = np.asarray(values, dtype=np.float64)
    d = np.asarray(truth, dtype=np.float64).ravel()
    B = np.asarray(crb_covariance, dtype=np.float64)
    shifts = tuple(shifts)
    n = len(shifts)
    if x.ndim != 2 or x.shape[1] != n or d.shape != (n,) or B.shape != (n, n):
        raise ValueError(f"expected values (M, {n}), truth ({n},) and crb_covariance ({n}, {n}) for {shifts}, got "
                         f"{x.shape}, {d.shape} and {B.shape}")
    C = None if covariances is None else np.asarray(covariances, dtype=np.float64)
    errors = None if C is None else np.sqrt(np.clip(np.diagonal(C, axis1=1, axis2=2), 0, None))
    row: dict = {f"{s}_true": float(d[i]) for i, s in enumerate(shifts)}
    row.update(n_sets=int(x.shape[0]), n_events=int(n_events))
    crb = np.sqrt(np.diag(B))
    for i, s in enumerate(shifts):
        one = point_metrics(x[:, i], None if errors is None else errors[:, i], truth=d[i], sigma_crb=crb[i],
                            n_events=n_events)
        row.update({f"{k}_{s}": one[k] for k in PER_COEFFICIENT})
    ok = np.isfinite(x).all(axis=1)
    corr = np.corrcoef(x[ok].T) if ok.sum() > 2 else np.full((n, n), np.nan)
    corr_crb = B / np.outer(crb, crb)
    for i in range(n):
        for j in range(i + 1, n):
            row[f"corr_{shifts[i]}_{shifts[j]}"] = float(corr[i, j])
            row[f"corr_crb_{shifts[i]}_{shifts[j]}"] = float(corr_crb[i, j])
    row.update(joint_coverage_68=math.nan, joint_coverage_95=math.nan, joint_ks_pvalue=math.nan)
    if C is not None and np.isfinite(d).all():
        try:
            cov = joint_point_coverage(x, C, d)
        except ConfigError:  # no set with a usable covariance: the coverage stays NaN
            cov = None
        if cov is not None:
            row.update({k: cov[k] for k in ("joint_coverage_68", "joint_coverage_95", "joint_ks_pvalue")})
    return row


def linearity(truth, mean, sigma=None) -> dict:
    """Straight-line fit mean = slope * truth + intercept (weighted by 1/sigma^2 when given).

    >>> fit = linearity([-1, 0, 1], [-0.9, 0.1, 1.1])
    >>> round(fit["slope"], 6), round(fit["intercept"], 6)
    (1.0, 0.1)
    """
    d = np.asarray(truth, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    w = np.ones_like(d) if sigma is None else 1.0 / np.asarray(sigma, dtype=np.float64) ** 2
    A = np.stack([d, np.ones_like(d)], axis=1) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(A, m * np.sqrt(w), rcond=None)
    cov = np.linalg.inv(A.T @ A)
    return {
        "slope": float(coef[0]),
        "intercept": float(coef[1]),
        "slope_err": float(np.sqrt(cov[0, 0])),
        "intercept_err": float(np.sqrt(cov[1, 1])),
    }

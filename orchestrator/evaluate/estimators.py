"""Evaluation of estimators on independent test MC, beside the Cramér–Rao bound.

One function evaluates every estimator (ML fit, ResNet, Deep Sets, event-by-event
posterior): anything with ``predict(sets) -> (estimates, uncertainties or None)``.
The test sets are drawn from MC seeded independently of every training input.

Where an estimator gives a width per set, its honesty is measured on the same
test sets (``physics.md``, "Coverage"): per point, the coverage of the 68% and
95% intervals (columns ``coverage_68``, ``coverage_95``); pooled over the points,
the PIT values ``u = Phi((d - x) / s)`` (kept in :attr:`Evaluation.pit` for the
expected-coverage figure) and their uniformity verdict
(:attr:`Evaluation.calibration`). An estimator without widths gets NaN there, and
starts to report them as soon as its ``predict`` returns widths. For an image
estimator (one with ``images`` and ``bins``, the ResNet) the bound of its
representation, sigma_CRB,image (:func:`image_bounds`), goes beside sigma_CRB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kernels.coverage import expected_coverage, pit, uniformity
from kernels.metrics import NUISANCE_COLUMNS, POINT_COLUMNS, linearity, point_metrics

if TYPE_CHECKING:  # the one Estimator protocol; torch is not imported to evaluate
    from models.estimators import Estimator

#: Test MC of the i-th evaluation point is seed stream ``(seed, EVAL_POINT_OFFSET + i, ...)``: never a
#: stream that generation (points 0, 1, ... of the scan) uses, so test sets are independent of training.
EVAL_POINT_OFFSET = 10_000

#: Fewest pooled PIT values for which :func:`kernels.coverage.uniformity` is asked for a verdict.
MIN_SETS_UNIFORMITY = 10


@dataclass
class Evaluation:
    """One estimator's evaluation.

    ``rows``: per point, ``POINT_COLUMNS`` plus ``on_grid``; ``summary``: metrics over the points;
    ``pit``: per point (its true dC9), the PIT values of its sets (empty without widths);
    ``calibration``: the uniformity of the pooled PIT values (:func:`calibration`), None without widths.
    """

    name: str
    rows: list[dict]
    summary: dict = field(default_factory=dict)
    pit: dict[float, np.ndarray] = field(default_factory=dict)
    calibration: dict | None = None

    def pooled_pit(self) -> np.ndarray | None:
        """The PIT values of every set of every point, or None when the estimator gives no widths."""
        return np.concatenate(list(self.pit.values())) if self.pit else None


def calibration(u) -> dict:
    """Pooled PIT values ``u`` -> ``n_sets``, the coverage of the central 68% and 95% intervals
    (``coverage_68``, ``coverage_95``), and, from :data:`MIN_SETS_UNIFORMITY` sets on, the KS and
    chi-square p-values of uniformity and its ``verdict`` (``"calibrated"`` / ``"miscalibrated"``;
    ``"untested"`` below that)."""
    u = np.asarray(u, dtype=np.float64).ravel()
    _, cov = expected_coverage(u, levels=[0.68, 0.95])
    out = {"n_sets": int(u.size), "coverage_68": float(cov[0]), "coverage_95": float(cov[1]), "verdict": "untested"}
    if u.size >= MIN_SETS_UNIFORMITY:
        test = uniformity(u)
        out.update(ks_pvalue=test["ks_pvalue"], chi2_pvalue=test["chi2_pvalue"], verdict=test["verdict"])
    return out


def _finite_mean(values) -> float | None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def summarise(rows: Sequence[Mapping]) -> dict:
    """Summary metrics over the points: mean and worst sigma/sigma_CRB, bias, MSE, linearity; where
    defined, the mean coverage (``coverage_68``, ``coverage_95``), the mean ``sigma_crb_image`` and
    ``sigma_over_crb_image_mean``, the mean of sigma / sigma_CRB,image."""
    d = np.array([r["dc9_true"] for r in rows], dtype=float)
    mean = np.array([r["mean"] for r in rows], dtype=float)
    sigma = np.array([r["sigma"] for r in rows], dtype=float)
    ratio = np.array([r["sigma_over_crb"] for r in rows], dtype=float)
    bias_over_crb = np.array([abs(r["bias"]) / r["sigma_crb"] for r in rows], dtype=float)
    out = {
        "sigma_over_crb_mean": float(np.mean(ratio)),
        "sigma_over_crb_max": float(np.max(ratio)),
        "abs_bias_over_crb_max": float(np.max(bias_over_crb)),
        "abs_bias_max": float(np.max(np.abs(mean - d))),
        "mse_mean": float(np.mean([r["mse"] for r in rows])),
    }
    if len(rows) >= 2:
        lin = linearity(d, mean, np.where(sigma > 0, sigma, np.nan) if np.all(sigma > 0) else None)
        out.update(linearity_slope=lin["slope"], linearity_intercept=lin["intercept"])
    pw = [r["pull_width"] for r in rows if np.isfinite(r["pull_width"])]
    if pw:
        out["pull_width_mean"] = float(np.mean(pw))
    img = [r.get("sigma_crb_image") for r in rows]
    means = {
        "coverage_68": _finite_mean(r.get("coverage_68") for r in rows),
        "coverage_95": _finite_mean(r.get("coverage_95") for r in rows),
        "sigma_crb_image": _finite_mean(img),
        "sigma_over_crb_image_mean": _finite_mean(
            r["sigma"] / b for r, b in zip(rows, img) if b is not None and b > 0
        ),
    }
    out.update({k: v for k, v in means.items() if v is not None})
    eff = [r["sigma_over_crb_eff"] for r in rows if "sigma_over_crb_eff" in r]
    if eff:  # prior-drawn worlds: against the efficient bound
        out["sigma_over_crb_eff_mean"] = float(np.mean(eff))
        out["sigma_over_crb_eff_max"] = float(np.max(eff))
        out["abs_bias_over_crb_eff_max"] = float(max(abs(r["bias"]) / r["sigma_crb_eff"] for r in rows))
    return out


def evaluate(
    estimator: Estimator,
    test_sets: Mapping[float, np.ndarray],
    sigma_crb: Mapping[float, float],
    on_grid: Sequence[float] = (),
    progress=None,
    sigma_crb_image: Mapping[float, float] | None = None,
    sigma_crb_eff: Mapping[float, float] | None = None,
) -> Evaluation:
    """Predict every point's test sets (M, N, 4) and compute the metrics of ``physics.md``.

    ``sigma_crb_image``: per point, the bound of the estimator's image (:func:`image_bounds`), for an
    image estimator; NaN in the table otherwise. Widths, when ``predict`` gives them, yield the
    coverage columns, the PIT values per point and the pooled calibration (:class:`Evaluation`).
    """
    grid = {round(float(g), 9) for g in on_grid}
    rows, pits = [], {}
    for d, sets in test_sets.items():
        est, unc = estimator.predict(sets)
        bound = float("nan") if sigma_crb_image is None else float(sigma_crb_image[d])
        row = point_metrics(est, unc, truth=float(d), sigma_crb=float(sigma_crb[d]), n_events=sets.shape[1],
                            sigma_crb_image=bound, sigma_crb_eff=None if sigma_crb_eff is None else sigma_crb_eff[d])
        row = {k: row[k] for k in POINT_COLUMNS + (NUISANCE_COLUMNS if sigma_crb_eff is not None else ())}
        row["on_grid"] = round(float(d), 9) in grid
        rows.append(row)
        if unc is not None and np.isfinite(row["coverage_68"]):
            pits[float(d)] = pit(est, unc, float(d))
        if progress is not None:
            progress(1)
    ev = Evaluation(estimator.name, rows, summarise(rows), pits)
    if pits:
        ev.calibration = calibration(ev.pooled_pit())
        for key in ("ks_pvalue", "chi2_pvalue"):
            if key in ev.calibration:
                ev.summary[f"pit_{key}"] = ev.calibration[key]
    return ev


def image_bins(estimator) -> int | None:
    """The bins per axis of an image estimator (one that voxelises its sets: ``images`` and ``bins``), else None."""
    bins = getattr(estimator, "bins", None)
    return int(bins) if callable(getattr(estimator, "images", None)) and bins else None


def image_bounds(table, pdf, dc9: Sequence[float], bins: int, n_events: int) -> dict[float, float]:
    """``{dc9: sigma_CRB,image}``: the Cramér–Rao bound of a ``bins``^3 image of ``n_events`` under ``pdf``
    (counts and the mean-q2 channel, :func:`kernels.image_information.sigma_crb_image`); >= sigma_CRB."""
    from kernels.image_information import sigma_crb_image

    return {d: float(sigma_crb_image(table, [d], bins, n_events, pdf)) for d in dc9}


def evaluation_sets(table, pdf, dc9: Sequence[float], n_events: int, n_sets: int, seed: int, level: str = "gen",
            detector=None, progress=None) -> tuple[dict[float, np.ndarray], dict[float, float]]:
    """Independent test sets ``{dc9: (n_sets, n_events, 4)}`` and ``{dc9: sigma_CRB}`` at each point.

    ``table``: the theory table (:func:`kernels.theory.jtable`); ``pdf``: the
    model the bound is computed for (``DetectorConfig.pdf_model``); sets are drawn
    at ``level`` with ``detector`` (:class:`kernels.detector.DetectorConfig`).
    ``wcscan run`` and the best trial of ``wcscan tune`` are evaluated on these.
    """
    from kernels import likelihood
    from kernels.bootstrap import test_sets

    sets, crb = {}, {}
    for i, d in enumerate(dc9):
        sets[d] = test_sets(table, [d], n_events, n_sets, seed, level, detector, point=EVAL_POINT_OFFSET + i).events
        crb[d] = likelihood.sigma_crb(table, [d], n_events, pdf)
        if progress is not None:
            progress(1)
    return sets, crb


def evaluation_worlds(ntable, pdf, dc9: Sequence[float], n_events: int, n_sets: int, seed: int, level: str = "gen",
                      detector=None, prior_scale: float = 1.0, worlds: str = "per_set", progress=None):
    """Test sets drawn in worlds from the nuisances' prior (:mod:`kernels.nuisances`), with both bounds.

    ``worlds="per_set"``: each set its own world, ``(seed, EVAL_POINT_OFFSET + i, 5 * 10**6 + k)``;
    ``"per_point"``: world 0 of the point for all its sets (a fixed "true world"). Returns
    ``(sets, sigma_crb (form factors fixed), sigma_crb_eff, worlds {dc9: (n_sets, n_u)})``; the bounds are at
    the prior's centre.
    """
    from kernels import likelihood
    from kernels.bootstrap import test_sets
    from kernels.nuisances import draw_worlds

    central = ntable.at(np.zeros(ntable.n_nuisances))
    precision = np.eye(ntable.n_nuisances) / prior_scale**2
    sets, crb, eff, drawn = {}, {}, {}, {}
    for i, d in enumerate(dc9):
        point = EVAL_POINT_OFFSET + i
        u = draw_worlds(n_sets if worlds == "per_set" else 1, ntable.n_nuisances, prior_scale, seed, point)
        u = u if worlds == "per_set" else np.repeat(u, n_sets, axis=0)
        tables = [ntable.at(v) for v in u]
        sets[d] = test_sets(central, [d], n_events, n_sets, seed, level, detector, point=point, worlds=tables).events
        crb[d] = likelihood.sigma_crb(central, [d], n_events, pdf)
        I = likelihood.fisher_information_nuisances(ntable, [d], model=pdf)
        eff[d] = float(likelihood.efficient_bound(I, 1, n_events, precision)[0][0])
        drawn[d] = u
        if progress is not None:
            progress(1)
    return sets, crb, eff, drawn

"""Evaluation of estimators on independent test MC, beside the Cramér–Rao bound.

One function evaluates every estimator (ML fit, ResNet, Deep Sets, event-by-event
posterior): anything with ``predict(sets) -> (estimates, uncertainties or None)``.
The test sets are drawn from MC seeded independently of every training input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kernels.metrics import POINT_COLUMNS, linearity, point_metrics

if TYPE_CHECKING:  # the one Estimator protocol; torch is not imported to evaluate
    from models.estimators import Estimator

#: Test MC of the i-th evaluation point is seed stream ``(seed, EVAL_POINT_OFFSET + i, ...)``: never a
#: stream that generation (points 0, 1, ... of the scan) uses, so test sets are independent of training.
EVAL_POINT_OFFSET = 10_000


@dataclass
class Evaluation:
    """Per-point rows (``POINT_COLUMNS`` plus ``on_grid``) and summary metrics of one estimator."""

    name: str
    rows: list[dict]
    summary: dict = field(default_factory=dict)


def summarise(rows: Sequence[Mapping]) -> dict:
    """Summary metrics over the points: mean and worst sigma/sigma_CRB, bias, MSE, linearity."""
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
    return out


def evaluate(
    estimator: Estimator,
    test_sets: Mapping[float, np.ndarray],
    sigma_crb: Mapping[float, float],
    on_grid: Sequence[float] = (),
    progress=None,
) -> Evaluation:
    """Predict every point's test sets (M, N, 4) and compute the metrics of ``physics.md``."""
    grid = {round(float(g), 9) for g in on_grid}
    rows = []
    for d, sets in test_sets.items():
        est, unc = estimator.predict(sets)
        row = point_metrics(est, unc, truth=float(d), sigma_crb=float(sigma_crb[d]), n_events=sets.shape[1])
        row = {k: row[k] for k in POINT_COLUMNS}
        row["on_grid"] = round(float(d), 9) in grid
        rows.append(row)
        if progress is not None:
            progress(1)
    return Evaluation(estimator.name, rows, summarise(rows))


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

r"""Coverage: are the per-set uncertainties of an estimator honest?

For M independent sets at one true point d with estimates x_j and widths s_j:

- **Interval coverage.** The central Gaussian interval at level L is
  ``x_j +- z_L s_j`` with ``z_L = Phi^-1((1 + L) / 2)``; asymmetric widths ``(lo, hi)`` give
  ``[x_j - z_L lo_j, x_j + z_L hi_j]``. Its coverage ``c = (1/M) sum_j 1[d in interval_j]`` is
  binomial: standard error ``sqrt(c (1 - c) / M)``. The check compares c with L in units of the
  *nominal* error ``sqrt(L (1 - L) / M)`` (which stays finite when c is 0 or 1).
- **PIT / rank.** For a Gaussian width the probability integral transform of the truth,
  ``u_j = Phi((d - x_j) / s_j)`` (s = lo below the estimate, hi above it), is U(0, 1) when the
  widths are honest: the continuous analogue of the SBC rank (Talts et al. 2018), whose rank
  ``r_j = #{l : theta_jl < d}`` among L posterior draws is uniform on {0, ..., L}.
- **Posteriors on a grid.** With a (log-)density on a grid per set, treated as piecewise
  linear, the credibility of the truth is the posterior mass of the central interval
  (``|2 F(d) - 1|``) or of the highest-density region (``int p 1[p > p(d)]``) whose edge passes
  through d; the truth lies in the level-L credible interval iff its credibility is <= L.
- **Expected coverage** (sbi, TARP): the fraction of sets whose credibility is <= L, against L;
  on the diagonal for a calibrated estimator, below it for an over-confident one.
- **Uniformity**: the KS test of u against U(0, 1) and the chi-square of its histogram.
- **Joint regions** (several coefficients at once): with an estimate vector ``x_j`` and its
  covariance ``C_j`` per set, the truth lies in the level-L ellipsoid iff the squared Mahalanobis
  distance ``D_j^2 = (x_j - d)^T C_j^{-1} (x_j - d)`` is at most the chi-square quantile
  ``chi2_n^-1(L)`` (n coefficients); ``F_chi2_n(D_j^2)`` is U(0, 1) for honest covariances, the
  joint analogue of the PIT. Covariances without their off-diagonal fail this where the
  estimates are correlated (``tests/kernels/test_coverage.py``).

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=4000)                      # estimates of truth 0 with width 1
>>> row = point_coverage(x, np.ones_like(x), 0.0)
>>> round(row["coverage_68"], 3), row["calibration"]
(0.674, 'calibrated')
>>> point_coverage(x, np.full_like(x, 0.5), 0.0)["calibration"]   # widths too small
'miscalibrated'
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from kernels.errors import ConfigError

LEVELS = {"68": 0.68, "95": 0.95}
"""The levels :func:`point_coverage` reports, by key suffix."""

DEFAULT_N_SIGMA = 3.0


def z_value(level: float) -> float:
    """Half-width of the central Gaussian interval at ``level``, in sigma: ``Phi^-1((1 + level) / 2)``.

    >>> round(z_value(0.6826894921370859), 6), round(z_value(0.95), 4)
    (1.0, 1.96)
    """
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    return float(stats.norm.ppf((1 + level) / 2))


def _inputs(estimates, widths, truth):
    """Float arrays (x (M,), lo (M,), hi (M,), truth (M,)), sets with a non-finite or non-positive width dropped."""
    x = np.asarray(estimates, dtype=np.float64).ravel()
    w = np.asarray(widths, dtype=np.float64)
    if w.ndim == 2 and w.shape == (x.size, 2):
        lo, hi = w[:, 0], w[:, 1]
    elif w.size == x.size:
        lo = hi = w.ravel()
    else:
        raise ConfigError(f"widths must have shape ({x.size},) or ({x.size}, 2) for {x.size} estimates, got {w.shape}")
    t = np.asarray(truth, dtype=np.float64)
    t = np.full(x.size, float(t)) if t.ndim == 0 else t.ravel()
    if t.shape != x.shape:
        raise ConfigError(f"truth must be a number or one value per set ({x.size}), got shape {np.shape(truth)}")
    ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi > 0) & np.isfinite(t)
    if not ok.any():
        raise ConfigError("no set with a finite estimate and a positive width")
    return x[ok], lo[ok], hi[ok], t[ok]


def interval_coverage(estimates, widths, truth, level: float = 0.68) -> tuple[float, float]:
    """Fraction of sets whose interval ``x - z lo <= truth <= x + z hi`` covers the truth, and its binomial error.

    ``widths`` is (M,) (symmetric) or (M, 2) with columns (lo, hi); ``truth`` a number or (M,).
    Sets with a non-finite estimate or a non-positive width are left out.
    """
    z = z_value(level)
    x, lo, hi, t = _inputs(estimates, widths, truth)
    c = float(np.mean((t >= x - z * lo) & (t <= x + z * hi)))
    return c, float(np.sqrt(c * (1 - c) / x.size))


def coverage_check(coverage: float, n_sets: int, level: float, n_sigma: float = DEFAULT_N_SIGMA) -> str:
    """``"calibrated"`` if ``|coverage - level|`` is within ``n_sigma`` nominal binomial errors, else ``"miscalibrated"``.

    >>> coverage_check(0.66, 1000, 0.68), coverage_check(0.40, 1000, 0.68)
    ('calibrated', 'miscalibrated')
    """
    if n_sets <= 0:
        raise ConfigError(f"number of sets must be positive, got {n_sets}")
    err = np.sqrt(level * (1 - level) / n_sets)
    return "calibrated" if abs(coverage - level) <= n_sigma * err else "miscalibrated"


def pit(estimates, widths, truth) -> np.ndarray:
    """``u = Phi((truth - x) / s)`` per set (s = lo below x, hi above): U(0, 1) for honest Gaussian widths."""
    x, lo, hi, t = _inputs(estimates, widths, truth)
    dev = t - x
    return stats.norm.cdf(dev / np.where(dev < 0, lo, hi))


def point_coverage(estimates, widths, truth, n_sigma: float = DEFAULT_N_SIGMA) -> dict:
    """Coverage at one evaluation point: ``coverage_68``, ``coverage_68_err``, ``coverage_95``,
    ``coverage_95_err``, ``n_sets``, the PIT's KS p-value ``pit_ks_pvalue`` and ``calibration``
    (``"calibrated"`` when both coverages pass :func:`coverage_check`)."""
    x, lo, hi, t = _inputs(estimates, widths, truth)
    row: dict = {"n_sets": int(x.size)}
    verdicts = []
    for key, level in LEVELS.items():
        c, e = interval_coverage(x, np.stack([lo, hi], axis=1), t, level)
        row[f"coverage_{key}"], row[f"coverage_{key}_err"] = c, e
        verdicts.append(coverage_check(c, x.size, level, n_sigma))
    row["pit_ks_pvalue"] = float(stats.kstest(pit(x, np.stack([lo, hi], axis=1), t), "uniform").pvalue)
    row["calibration"] = "calibrated" if all(v == "calibrated" for v in verdicts) else "miscalibrated"
    return row


def sbc_ranks(samples, truth, seed=0) -> np.ndarray:
    """SBC rank of each truth among its set's posterior draws: ``#{l : theta_l < truth}``, ties split at random.

    ``samples`` (M, L), ``truth`` (M,) or a number; ranks are integers in [0, L].

    >>> sbc_ranks([[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]], [0.6, 0.0]).tolist()
    [2, 0]
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 2:
        raise ConfigError(f"posterior samples must have shape (M, L), got {s.shape}")
    t = np.broadcast_to(np.asarray(truth, dtype=np.float64), s.shape[:1])[:, None]
    below = (s < t).sum(axis=1)
    ties = (s == t).sum(axis=1)
    if not ties.any():
        return below
    return below + np.random.default_rng(seed).integers(0, ties + 1)


def ranks_to_pit(ranks, n_draws: int, seed=0) -> np.ndarray:
    """Ranks in {0..L} -> continuous ``u = (r + U(0, 1)) / (L + 1)``, exactly U(0, 1) when the ranks are uniform."""
    r = np.asarray(ranks, dtype=np.float64)
    if np.any((r < 0) | (r > n_draws)):
        raise ConfigError(f"ranks must lie in [0, {n_draws}]")
    return (r + np.random.default_rng(seed).random(r.shape)) / (n_draws + 1)


def _grid_cdf_parts(grid, log_density):
    g = np.asarray(grid, dtype=np.float64)
    lp = np.atleast_2d(np.asarray(log_density, dtype=np.float64))
    if g.ndim != 1 or g.size < 2 or lp.shape[-1] != g.size or np.any(np.diff(g) <= 0):
        raise ConfigError(
            f"need an increasing grid of >= 2 points and log densities of shape (M, {g.size}), got {lp.shape}"
        )
    p = np.exp(lp - np.max(lp, axis=1, keepdims=True))
    p = np.where(np.isfinite(p), p, 0.0)
    area = np.diff(g) * (p[:, 1:] + p[:, :-1]) / 2
    norm = area.sum(axis=1, keepdims=True)
    return g, p / norm, area / norm


def grid_credibility(grid, log_density, truth, kind: str = "hpd") -> np.ndarray:
    """Per set, the smallest credibility level whose interval contains the truth, in [0, 1].

    ``log_density`` (M, G) on the increasing ``grid`` (G,), unnormalised; the density is taken
    piecewise linear between grid points. ``kind="central"``: ``|2 F(truth) - 1|``;
    ``kind="hpd"``: the mass where the density exceeds its value at the truth. A truth off the
    grid has credibility 1.

    >>> g = np.linspace(-6, 6, 2001)
    >>> round(float(grid_credibility(g, -g**2 / 2, [1.0], "hpd")[0]), 4)   # N(0, 1): P(|x| < 1)
    0.6827
    """
    g, p, area = _grid_cdf_parts(grid, log_density)
    t = np.broadcast_to(np.asarray(truth, dtype=np.float64), p.shape[:1])
    inside = (t >= g[0]) & (t <= g[-1])
    k = np.clip(np.searchsorted(g, t, side="right") - 1, 0, g.size - 2)
    rows = np.arange(p.shape[0])
    h = g[k + 1] - g[k]
    f = np.clip((t - g[k]) / h, 0, 1)
    p0, p1 = p[rows, k], p[rows, k + 1]
    pt = p0 + f * (p1 - p0)
    if kind == "central":
        F = np.cumsum(area, axis=1)
        before = np.where(k > 0, F[rows, np.maximum(k - 1, 0)], 0.0)
        F_t = before + h * f * (p0 + pt) / 2
        cred = np.abs(2 * F_t - 1)
    elif kind == "hpd":
        a, b = p[:, :-1], p[:, 1:]
        c = pt[:, None]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        # The part of each cell where the linear density exceeds c, and its mass.
        with np.errstate(over="ignore"):  # tiny (hi - lo) in far tails: the fraction clips to 0 or 1
            frac = np.where(hi > lo, np.clip((hi - c) / np.where(hi > lo, hi - lo, 1), 0, 1), (lo > c).astype(float))
        mass = np.diff(g) * frac * np.where(hi > c, (hi + np.maximum(c, lo)) / 2, 0.0)
        cred = mass.sum(axis=1)
    else:
        raise ConfigError(f"credible interval kind must be 'hpd' or 'central', got {kind!r}")
    return np.where(inside, np.clip(cred, 0, 1), 1.0)


def grid_interval_coverage(grid, log_density, truth, level: float = 0.68, kind: str = "hpd") -> tuple[float, float]:
    """Fraction of sets whose level-``level`` credible interval (HPD or central) contains the truth, and its error."""
    if not 0 < level < 1:
        raise ConfigError(f"credibility level must be in (0, 1), got {level}")
    cred = grid_credibility(grid, log_density, truth, kind)
    c = float(np.mean(cred <= level))
    return c, float(np.sqrt(c * (1 - c) / cred.size))


def expected_coverage(values, *, n_draws: int | None = None, credibility: bool = False, levels=None, seed=0):
    """``(nominal levels, empirical coverage)``: the fraction of sets whose credibility is <= each level.

    ``values`` are PIT values u in [0, 1] (central intervals: credibility ``|2u - 1|``), SBC ranks
    when ``n_draws`` is given (turned into u by :func:`ranks_to_pit`), or credibility levels
    themselves with ``credibility=True`` (e.g. HPD ones from :func:`grid_credibility`).

    >>> lv, cov = expected_coverage(np.linspace(0.0005, 0.9995, 1000), levels=[0.5, 0.9])
    >>> cov.tolist()
    [0.5, 0.9]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if n_draws is not None:
        v = ranks_to_pit(v, n_draws, seed)
    if np.any((v < 0) | (v > 1)):
        raise ConfigError("PIT values and credibility levels must lie in [0, 1]")
    cred = v if credibility else np.abs(2 * v - 1)
    lv = np.linspace(0, 1, 51) if levels is None else np.asarray(levels, dtype=np.float64)
    return lv, np.mean(cred[None, :] <= lv[:, None], axis=1)


def uniformity(values, *, n_draws: int | None = None, n_bins: int | None = None, alpha: float = 0.01, seed=0) -> dict:
    """Tests of U(0, 1) for PIT values (or of the uniform rank distribution, with ``n_draws``).

    Returns ``ks_stat``, ``ks_pvalue`` (KS against U(0, 1); ranks are jittered to continuous u
    first), ``chi2``, ``chi2_dof``, ``chi2_pvalue`` (histogram of ``n_bins`` equal bins, default
    about M / 20 and at most 50; for ranks, bins of whole ranks) and ``verdict``:
    ``"calibrated"`` unless a p-value is below ``alpha / 2`` (Bonferroni over the two tests).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    M = v.size
    if M < 10:
        raise ConfigError(f"need at least 10 sets to test uniformity, got {M}")
    nb = n_bins or int(np.clip(M // 20, 2, 50))
    if n_draws is not None:  # bins of whole ranks; the expected counts follow the ranks in each bin
        if n_draws < 1:
            raise ConfigError(f"need at least one posterior draw per set, got {n_draws}")
        nb = min(nb, n_draws + 1)
        counts = np.bincount((v.astype(np.int64) * nb) // (n_draws + 1), minlength=nb)
        expected = M * np.bincount((np.arange(n_draws + 1) * nb) // (n_draws + 1), minlength=nb) / (n_draws + 1)
        u = ranks_to_pit(v, n_draws, seed)
    else:
        if np.any((v < 0) | (v > 1)):
            raise ConfigError("PIT values must lie in [0, 1]")
        u = v
        counts = np.bincount(np.minimum((v * nb).astype(np.int64), nb - 1), minlength=nb)
        expected = np.full(nb, M / nb)
    ks = stats.kstest(u, "uniform")
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    chi2_p = float(stats.chi2.sf(chi2, nb - 1))
    verdict = "calibrated" if min(ks.pvalue, chi2_p) >= alpha / 2 else "miscalibrated"
    return {
        "ks_stat": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "chi2": chi2,
        "chi2_dof": nb - 1,
        "chi2_pvalue": chi2_p,
        "verdict": verdict,
    }


def _joint_inputs(estimates, covariances, truth):
    """``(x (M, n), C (M, n, n), d (M, n))`` as floats, sets with a non-finite estimate or a covariance that is
    not positive definite dropped."""
    x = np.asarray(estimates, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ConfigError(f"estimates must have shape (M, n), got {np.shape(estimates)}")
    M, n = x.shape
    C = np.asarray(covariances, dtype=np.float64).reshape(M, n, n) if np.size(covariances) == M * n * n else None
    if C is None:
        raise ConfigError(f"covariances must have shape ({M}, {n}, {n}) for {M} estimates of {n}, "
                          f"got {np.shape(covariances)}")
    d = np.broadcast_to(np.asarray(truth, dtype=np.float64), (M, n)) if np.size(truth) in (n, M * n) else None
    if d is None:
        raise ConfigError(f"truth must have shape ({n},) or ({M}, {n}), got {np.shape(truth)}")
    ok = np.isfinite(x).all(1) & np.isfinite(C).all((1, 2)) & np.isfinite(d).all(1)
    ok[ok] &= np.linalg.eigvalsh(C[ok]).min(axis=1) > 0  # only finite matrices reach eigvalsh
    if not ok.any():
        raise ConfigError("no set with a finite estimate and a positive-definite covariance")
    return x[ok], C[ok], d[ok]


def mahalanobis2(estimates, covariances, truth) -> np.ndarray:
    """``D^2 = (x - d)^T C^-1 (x - d)`` per set (:func:`_joint_inputs` drops the sets it cannot use)."""
    x, C, d = _joint_inputs(estimates, covariances, truth)
    r = x - d
    return np.einsum("mi,mi->m", r, np.linalg.solve(C, r[..., None])[..., 0])


def joint_coverage(estimates, covariances, truth, level: float = 0.68) -> tuple[float, float]:
    """Fraction of sets whose level-``level`` ellipsoid ``D^2 <= chi2_n^-1(level)`` holds the truth, and its binomial error.

    >>> rng = np.random.default_rng(1)
    >>> C = np.array([[1.0, 0.9], [0.9, 1.0]])
    >>> x = rng.multivariate_normal([0, 0], C, size=4000)
    >>> round(joint_coverage(x, np.broadcast_to(C, (4000, 2, 2)), [0, 0], 0.95)[0], 2)
    0.95
    """
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    n = np.asarray(estimates).shape[-1] if np.ndim(estimates) == 2 else 1
    return _ellipsoid_coverage(mahalanobis2(estimates, covariances, truth), n, level)


def _ellipsoid_coverage(D2: np.ndarray, n: int, level: float) -> tuple[float, float]:
    c = float(np.mean(D2 <= stats.chi2.ppf(level, n)))
    return c, float(np.sqrt(c * (1 - c) / D2.size))


def joint_point_coverage(estimates, covariances, truth, n_sigma: float = DEFAULT_N_SIGMA) -> dict:
    """The joint analogue of :func:`point_coverage`: ``joint_coverage_68``, ``joint_coverage_68_err``,
    ``joint_coverage_95``, ``joint_coverage_95_err``, ``n_sets``, ``joint_ks_pvalue`` (of ``F_chi2_n(D^2)``
    against U(0, 1)) and ``calibration``."""
    n = np.asarray(estimates).shape[-1] if np.ndim(estimates) == 2 else 1
    D2 = mahalanobis2(estimates, covariances, truth)
    row: dict = {"n_sets": int(D2.size)}
    verdicts = []
    for key, level in LEVELS.items():
        c, row[f"joint_coverage_{key}_err"] = _ellipsoid_coverage(D2, n, level)
        row[f"joint_coverage_{key}"] = c
        verdicts.append(coverage_check(c, D2.size, level, n_sigma))
    row["joint_ks_pvalue"] = float(stats.kstest(stats.chi2.cdf(D2, n), "uniform").pvalue)
    row["calibration"] = "calibrated" if all(v == "calibrated" for v in verdicts) else "miscalibrated"
    return row

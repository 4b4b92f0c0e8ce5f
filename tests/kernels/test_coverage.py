"""Coverage of per-set uncertainties: intervals, PIT and SBC ranks, grid posteriors, expected coverage."""

import numpy as np
import pytest
from scipy import stats

from kernels import coverage as cov
from kernels.errors import ConfigError

M = 4000
TRUTH = -0.8


def _gaussian_toy(seed, M=M):
    """Estimates truth + sigma N(0, 1) with per-set widths sigma (which vary from set to set)."""
    rng = np.random.default_rng(seed)
    sigma = 0.1 * (1 + rng.random(M))
    return TRUTH + sigma * rng.standard_normal(M), sigma


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_honest_widths_cover_at_the_nominal_rate(seed):
    x, s = _gaussian_toy(seed)
    row = cov.point_coverage(x, s, TRUTH)
    assert row["n_sets"] == M
    for key, level in cov.LEVELS.items():
        nominal_err = np.sqrt(level * (1 - level) / M)
        assert abs(row[f"coverage_{key}"] - level) < 3 * nominal_err
        c, e = cov.interval_coverage(x, s, TRUTH, level)
        assert (c, e) == (row[f"coverage_{key}"], row[f"coverage_{key}_err"])
        assert e == pytest.approx(np.sqrt(c * (1 - c) / M))
    assert row["calibration"] == "calibrated"
    assert row["pit_ks_pvalue"] > 1e-3


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_dishonest_widths_fail_the_check(factor):
    x, s = _gaussian_toy(4)
    row = cov.point_coverage(x, factor * s, TRUTH)
    assert row["calibration"] == "miscalibrated"
    if factor < 1:  # over-confident: the intervals cover too rarely
        assert row["coverage_68"] < 0.68 - 3 * np.sqrt(0.68 * 0.32 / M)
        assert row["coverage_68"] == pytest.approx(2 * stats.norm.cdf(0.5 * cov.z_value(0.68)) - 1, abs=0.03)
    else:
        assert row["coverage_95"] > 0.95 + 3 * np.sqrt(0.95 * 0.05 / M)
    assert cov.coverage_check(row["coverage_68"], M, 0.68) == "miscalibrated"
    assert row["pit_ks_pvalue"] < 1e-6


def test_asymmetric_widths_are_honoured_and_swapping_them_is_caught():
    rng = np.random.default_rng(5)
    lo, hi = np.full(M, 0.05), np.full(M, 0.20)
    # Deviations truth - x with P(< 0) = 1/2, Gaussian of width lo below and hi above: these intervals are honest.
    z = np.abs(rng.standard_normal(M))
    below = rng.random(M) < 0.5
    x = TRUTH - np.where(below, -lo * z, hi * z)
    honest = cov.point_coverage(x, np.stack([lo, hi], axis=1), TRUTH)
    assert honest["calibration"] == "calibrated"
    swapped = cov.point_coverage(x, np.stack([hi, lo], axis=1), TRUTH)
    assert swapped["calibration"] == "miscalibrated"
    u = cov.pit(x, np.stack([lo, hi], axis=1), TRUTH)
    assert cov.uniformity(u)["verdict"] == "calibrated"


def test_invalid_sets_are_left_out_and_bad_shapes_refused():
    x, s = _gaussian_toy(6, 100)
    s[:10] = np.nan
    s[10:15] = 0.0
    assert cov.point_coverage(x, s, TRUTH)["n_sets"] == 85
    with pytest.raises(ConfigError):
        cov.interval_coverage(x, s[:50], TRUTH)
    with pytest.raises(ConfigError):
        cov.interval_coverage(x, s, np.zeros(3))
    with pytest.raises(ConfigError):
        cov.z_value(1.0)
    with pytest.raises(ConfigError):
        cov.interval_coverage(x, np.full_like(x, np.nan), TRUTH)


def _posterior_draws(seed, width_factor, L=99):
    """SBC: truth from the prior, data given truth, L draws from a Gaussian posterior of width factor * sigma."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-2, 1, M)
    sigma = 0.1
    x = theta + sigma * rng.standard_normal(M)  # flat prior: the exact posterior is N(x, sigma^2)
    return theta, x[:, None] + width_factor * sigma * rng.standard_normal((M, L)), x, sigma


def test_sbc_ranks_are_uniform_for_a_calibrated_posterior_and_not_for_a_wrong_one():
    theta, draws, _, _ = _posterior_draws(7, 1.0)
    ranks = cov.sbc_ranks(draws, theta)
    assert ranks.min() >= 0 and ranks.max() <= 99 and ranks.dtype.kind == "i"
    assert cov.uniformity(ranks, n_draws=99)["verdict"] == "calibrated"
    for factor in (0.5, 2.0):  # over-confident: U-shaped ranks; under-confident: a hump
        theta, draws, _, _ = _posterior_draws(8, factor)
        res = cov.uniformity(cov.sbc_ranks(draws, theta), n_draws=99)
        assert res["verdict"] == "miscalibrated"
        assert res["chi2_pvalue"] < 1e-6


def test_gaussian_pit_is_the_continuum_limit_of_the_rank():
    theta, draws, x, sigma = _posterior_draws(9, 1.0, L=999)
    u = cov.pit(x, np.full(M, sigma), theta)
    ranks = cov.sbc_ranks(draws, theta)
    assert np.max(np.abs(ranks / 999 - u)) < 0.06  # binomial noise of 999 draws
    assert cov.uniformity(u)["verdict"] == "calibrated"


def test_ties_in_ranks_are_split():
    ranks = cov.sbc_ranks(np.zeros((2000, 9)), np.zeros(2000))
    assert ranks.min() == 0 and ranks.max() == 9
    assert abs(ranks.mean() - 4.5) < 0.3


def test_expected_coverage_is_the_diagonal_for_calibrated_and_below_it_for_over_confident():
    x, s = _gaussian_toy(10)
    levels, emp = cov.expected_coverage(cov.pit(x, s, TRUTH))
    assert levels[0] == 0 and levels[-1] == 1 and emp.shape == levels.shape
    tol = 4 * np.sqrt(levels * (1 - levels) / M) + 1e-12
    assert np.all(np.abs(emp - levels) <= tol)
    _, emp_bad = cov.expected_coverage(cov.pit(x, 0.5 * s, TRUTH))
    inner = (levels > 0.1) & (levels < 0.9)
    assert np.all(emp_bad[inner] < levels[inner] - tol[inner])
    # From SBC ranks, the same curve.
    theta, draws, _, _ = _posterior_draws(11, 1.0)
    lv, emp_r = cov.expected_coverage(cov.sbc_ranks(draws, theta), n_draws=99)
    assert np.all(np.abs(emp_r - lv) <= 4 * np.sqrt(lv * (1 - lv) / M) + 0.01)


@pytest.mark.parametrize("kind", ["hpd", "central"])
def test_grid_posteriors_cover_at_the_nominal_rate(kind):
    theta, _, x, sigma = _posterior_draws(12, 1.0)
    grid = np.linspace(-3, 2, 1501)
    logp = -0.5 * ((grid[None, :] - x[:, None]) / sigma) ** 2
    for level in (0.68, 0.95):
        c, e = cov.grid_interval_coverage(grid, logp, theta, level, kind)
        assert abs(c - level) < 3 * np.sqrt(level * (1 - level) / M)
        assert e == pytest.approx(np.sqrt(c * (1 - c) / M))
    cred = cov.grid_credibility(grid, logp, theta, kind)
    # For a Gaussian both kinds are the central interval of the PIT. Near the mode the HPD mass
    # is resolved only to about (grid step) x (peak density): the density is piecewise linear.
    atol = 2e-4 if kind == "central" else 2 * (grid[1] - grid[0]) / (np.sqrt(2 * np.pi) * sigma)
    np.testing.assert_allclose(cred, np.abs(2 * cov.pit(x, np.full(M, sigma), theta) - 1), atol=atol)
    c_bad, _ = cov.grid_interval_coverage(grid, 4 * logp, theta, 0.68, kind)  # posterior width halved
    assert c_bad < 0.68 - 3 * np.sqrt(0.68 * 0.32 / M)


def test_credibility_of_a_skewed_posterior_is_uniform_when_the_truth_is_drawn_from_it():
    rng = np.random.default_rng(13)
    grid = np.linspace(0, 12, 2401)
    shape = rng.uniform(1.5, 4.0, M)[:, None]
    logp = (shape - 1) * np.log(np.maximum(grid[None, :], 1e-300)) - grid[None, :]  # Gamma(shape, 1)
    truth = rng.gamma(shape[:, 0])
    hpd = cov.grid_credibility(grid, logp, truth, "hpd")
    central = cov.grid_credibility(grid, logp, truth, "central")
    assert not np.allclose(hpd, central, atol=0.01)  # they differ for a skewed posterior ...
    for cred in (hpd, central):  # ... and each is uniform for a calibrated one
        assert cov.uniformity(cred)["verdict"] == "calibrated"
        lv, emp = cov.expected_coverage(cred, credibility=True)
        assert np.all(np.abs(emp - lv) <= 4 * np.sqrt(lv * (1 - lv) / M) + 1e-3)
    assert cov.grid_credibility(grid, logp[:1], [20.0])[0] == 1.0  # off the grid: never covered
    with pytest.raises(ConfigError):
        cov.grid_credibility(grid, logp, truth, "equal-tailed")


def test_joint_regions_cover_a_correlated_gaussian_and_fail_without_the_off_diagonal():
    """A known 2D Gaussian posterior (correlation 0.9): the chi-square ellipsoids of the full covariance cover
    at their levels; the same estimates with the off-diagonal dropped do not (the joint coverage at 95% falls
    to about 0.92, many binomial errors away)."""
    rng = np.random.default_rng(7)
    C = np.array([[0.04, 0.054], [0.054, 0.09]])  # sigmas 0.2 and 0.3, correlation 0.9
    truth = np.array([-1.0, 0.5])
    M = 4000
    x = rng.multivariate_normal(truth, C, size=M)
    full = cov.joint_point_coverage(x, np.broadcast_to(C, (M, 2, 2)), truth)
    assert full["calibration"] == "calibrated" and full["n_sets"] == M
    assert abs(full["joint_coverage_68"] - 0.68) < 0.03 and abs(full["joint_coverage_95"] - 0.95) < 0.015
    assert full["joint_ks_pvalue"] > 1e-3
    diag = cov.joint_point_coverage(x, np.broadcast_to(np.diag(np.diag(C)), (M, 2, 2)), truth)
    assert diag["calibration"] == "miscalibrated"
    assert diag["joint_coverage_95"] < 0.935 and diag["joint_ks_pvalue"] < 1e-6
    # each coefficient alone still covers: only the joint region sees the correlation
    for i in range(2):
        assert cov.point_coverage(x[:, i], np.full(M, np.sqrt(C[i, i])), truth[i])["calibration"] == "calibrated"


def test_joint_coverage_drops_unusable_sets_and_refuses_bad_shapes():
    C = np.broadcast_to(np.eye(2), (3, 2, 2)).copy()
    C[1] = [[1.0, 2.0], [2.0, 1.0]]  # not positive definite
    x = np.array([[0.1, 0.1], [0.0, 0.0], [np.nan, 0.0]])
    assert cov.mahalanobis2(x, C, [0.0, 0.0]).shape == (1,)
    with pytest.raises(ConfigError, match="covariances must have shape"):
        cov.joint_coverage(x, np.eye(2), [0.0, 0.0])
    with pytest.raises(ConfigError, match="truth must have shape"):
        cov.joint_coverage(x, C, [0.0, 0.0, 0.0])

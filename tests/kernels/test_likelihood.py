"""The yardstick: projections, NLL gradient, Fisher information, and the ML fit on toys."""

import numpy as np
import pytest

from kernels import angular, likelihood, sampler, theory
from kernels.errors import ConfigError


def _events(table, shifts, n, seed):
    return sampler.sample_array(table, shifts, n, seed).T.astype(np.float64)


def test_projection_equals_the_rate_formula_evaluated_directly(c9_table):
    ev = _events(c9_table, [0.0], 2000, (1,))
    d = np.array([-0.7])
    J_nodes = c9_table.at(d)  # (K, 12)
    J_ev = np.stack([np.interp(ev[:, 0], c9_table.q2, J_nodes[:, i]) for i in range(12)], axis=1)
    direct = angular.PREFACTOR * np.sum(J_ev * angular.basis(ev[:, 1], ev[:, 2], ev[:, 3]), axis=1)
    a = likelihood.project(c9_table, ev)
    np.testing.assert_allclose(a @ theory.monomials(d), direct, rtol=1e-10)


def test_projection_keeps_event_order_and_batch_shape(c9_table):
    ev = _events(c9_table, [0.0], 3000, (2,)).reshape(3, 1000, 4)
    batched = likelihood.project(c9_table, ev)
    assert batched.shape == (3, 1000, 3)
    np.testing.assert_allclose(batched[1], likelihood.project(c9_table, ev[1]), rtol=1e-13)


def test_nll_gradient_matches_finite_differences(c9_c10_table):
    ev = _events(c9_c10_table, [-0.5, 0.2], 5000, (3,))
    a = likelihood.project(c9_c10_table, ev)
    norm = c9_c10_table.rate_integral()
    d = np.array([-0.3, 0.1])
    h = 1e-6
    fd = [(likelihood.nll(d + h * e, a, norm) - likelihood.nll(d - h * e, a, norm)) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(likelihood.nll_grad(d, a, norm), fd, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dc9", [0.0, -1.0])
def test_fisher_information_by_quadrature_matches_monte_carlo(c9_table, dc9):
    ev = _events(c9_table, [dc9], 1_000_000, (4, int(10 * abs(dc9))))
    a = likelihood.project(c9_table, ev)
    m, dm = theory.monomials([dc9]), theory.monomial_gradient([dc9])
    norm = c9_table.rate_integral()
    score = (a @ dm[0]) / (a @ m) - (dm[0] @ norm) / (norm @ m)
    assert abs(score.mean()) < 5 * score.std() / np.sqrt(score.size)  # E[score] = 0
    mc, mc_err = np.mean(score**2), np.std(score**2) / np.sqrt(score.size)
    quad = likelihood.fisher_information(c9_table, [dc9])[0, 0]
    assert abs(quad - mc) < 4 * mc_err


def test_crb_scales_as_one_over_root_n(c9_table):
    s1 = likelihood.sigma_crb(c9_table, [0.0], 1000)
    s4 = likelihood.sigma_crb(c9_table, [0.0], 4000)
    assert s1 / s4 == pytest.approx(2.0, rel=1e-12)


def test_crb_refuses_non_positive_n(c9_table):
    with pytest.raises(ConfigError):
        likelihood.sigma_crb(c9_table, [0.0], 0)


@pytest.mark.parametrize("dc9", [-1.0, 0.5])
def test_ml_fit_on_toys_is_unbiased_with_unit_pulls_and_reaches_the_crb(c9_table, dc9):
    M, N = 300, 4000
    sets = _events(c9_table, [dc9], M * N, (5, int(10 * dc9) + 20)).reshape(M, N, 4)
    res = likelihood.fit_sets(c9_table, sets)
    assert res.valid.all()
    crb = likelihood.sigma_crb(c9_table, [dc9], N)
    spread = res.values.std(ddof=1)
    assert abs(res.values.mean() - dc9) < 4 * spread / np.sqrt(M)
    # The standard error of a standard deviation from M sets is about 1/sqrt(2M) = 4%.
    assert spread / crb == pytest.approx(1.0, abs=0.15)
    pulls = (res.values - dc9) / res.errors
    assert pulls.std(ddof=1) == pytest.approx(1.0, abs=0.15)
    assert abs(pulls.mean()) < 4 / np.sqrt(M)
    # HESSE errors are the inverse Fisher information of the set: close to the CRB.
    assert np.median(res.errors) == pytest.approx(crb, rel=0.1)


def test_joint_c9_c10_fit_recovers_both_shifts(c9_c10_table):
    truth = np.array([-1.0, 0.5])
    M, N = 80, 10_000
    sets = _events(c9_c10_table, truth, M * N, (6,)).reshape(M, N, 4)
    res = likelihood.fit_sets(c9_c10_table, sets)
    assert res.values.shape == (M, 2) and res.valid.all()
    crb = likelihood.sigma_crb(c9_c10_table, truth, N)
    spread = res.values.std(axis=0, ddof=1)
    np.testing.assert_array_less(np.abs(res.values.mean(axis=0) - truth), 4 * spread / np.sqrt(M))
    np.testing.assert_allclose(spread / crb, 1.0, atol=0.3)
    np.testing.assert_allclose(np.median(res.errors, axis=0) / crb, 1.0, atol=0.15)


def test_fit_sets_refuses_a_badly_shaped_array(c9_table):
    with pytest.raises(ConfigError, match="shape"):
        likelihood.fit_sets(c9_table, np.zeros((10, 4)))


def test_progress_is_reported_once_per_set(c9_table):
    sets = _events(c9_table, [0.0], 3 * 500, (7,)).reshape(3, 500, 4)
    ticks = []
    likelihood.fit_sets(c9_table, sets, progress=ticks.append)
    assert ticks == [1, 1, 1]


def test_joint_fit_covariances_match_the_fisher_matrix_and_its_ellipses_cover(c9_c10_table):
    """(delta C9, delta C10) on toys: the spread and correlation of the joint fit's estimates are the inverse
    Fisher matrix's (the marginal bound, the other coefficient free, and the bound's correlation), and the
    per-set HESSE covariances give joint 68% / 95% ellipses that cover."""
    from kernels import metrics

    truth = np.array([-0.5, 0.3])
    M, N = 240, 8_000
    sets = _events(c9_c10_table, truth, M * N, (11,)).reshape(M, N, 4)
    res = likelihood.fit_sets(c9_c10_table, sets)
    assert res.covariances.shape == (M, 2, 2) and res.valid.all()
    np.testing.assert_allclose(np.sqrt(np.diagonal(res.covariances, axis1=1, axis2=2)), res.errors, rtol=1e-4)
    bound = np.linalg.inv(likelihood.fisher_information(c9_c10_table, truth)) / N
    row = metrics.joint_point_metrics(res.values, res.covariances, truth=truth, crb_covariance=bound, n_events=N,
                                      shifts=c9_c10_table.shift_columns)
    assert row["corr_crb_dc9_dc10"] == pytest.approx(bound[0, 1] / np.sqrt(bound[0, 0] * bound[1, 1]))
    assert abs(row["corr_crb_dc9_dc10"]) > 0.1  # the two coefficients are correlated: the test has teeth
    assert abs(row["corr_dc9_dc10"] - row["corr_crb_dc9_dc10"]) < 0.15  # about 2.5 standard errors at M = 240
    for s in ("dc9", "dc10"):
        assert row[f"sigma_over_crb_{s}"] == pytest.approx(1.0, abs=0.15)
        assert abs(row[f"bias_{s}"]) < 4 * row[f"sigma_{s}"] / np.sqrt(M)
    assert abs(row["joint_coverage_68"] - 0.68) < 0.09 and abs(row["joint_coverage_95"] - 0.95) < 0.045


def test_failed_and_far_off_fits_are_refitted_from_the_median_of_the_others():
    from kernels.refit import retry_failed

    values = np.array([[0.0, 1.0], [2.0, 3.0], [-12.5, 14.0], [4.0, 5.0], [40.0, 3.0]])
    errors = np.ones((5, 2))
    valid = np.array([True, True, False, True, True])
    covs = np.zeros((5, 2, 2))
    starts = []
    depth = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.5}  # set 4's dip at 40 is the deeper one: it stays

    def refit(j, start=None, at=None):
        if at is not None:
            return depth[j] if at[0] > 30 else 1.0
        starts.append((j, start.tolist()))
        return np.array([2.1, 3.1]), np.array([0.5, 0.5]), True, np.eye(2)

    # median of the valid estimates (sets 0, 1, 3, 4): (3, 3); set 2 failed, set 4 is 37 errors off
    assert retry_failed(values, errors, valid, covs, refit) == 1
    assert starts == [(2, [3.0, 3.0]), (4, [3.0, 3.0])]
    assert valid.all() and values[2].tolist() == [2.1, 3.1] and covs[2].tolist() == [[1, 0], [0, 1]]
    assert values[4].tolist() == [40.0, 3.0]  # its refit had the higher NLL
    depth[4] = 2.0  # now the refit is deeper: it replaces the far estimate
    assert retry_failed(values, errors, valid, covs, refit) == 1 and values[4].tolist() == [2.1, 3.1]
    valid[:] = False  # nothing valid: nothing to start from
    assert retry_failed(values, errors, valid, covs, refit) == 0

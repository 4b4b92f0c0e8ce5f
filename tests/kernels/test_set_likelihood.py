"""Set likelihoods with a shared nuisance: the known answer of a linear toy, coverage, and the pitfall.

The toy: ``p(x | c, u) = (1 + (c + u) x) / 2`` on ``[-1, 1]``, the nuisance ``u ~ N(0, tau^2)``
shared by the N events of a set. Its pdf is linear in (c, u), so per event the coefficient matrix
over ``m(c) = (1, c, c^2)`` (rows) and ``mu(u) = (1, u)`` (columns) is ``[[1, x], [x, 0], [0, 0]] / 2``
and the normalisation ``[[1, 0], [0, 0], [0, 0]]``. Known answer: the data see only ``theta = c + u``,
so the profiled error of c is exactly ``sqrt(1 / H_theta + tau^2)`` and the spread of the estimate
is that of ``theta_hat - u``. Per event, marginalising u over its prior gives ``(1 + c x) / 2``
(u enters linearly with mean 0): multiplying those per-event marginals is the fit at u = 0, whose
error ``1 / sqrt(H_theta)`` forgets tau and under-covers.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import likelihood, nuisances, profile, sampler, set_likelihood
from kernels.errors import ConfigError

TAU, N_EVENTS, N_SETS, C_TRUE = 0.05, 2000, 800, 0.1


def _toy_events(theta: np.ndarray, n: int, rng) -> np.ndarray:
    """``(M, n)`` draws of ``(1 + theta x) / 2`` on [-1, 1] by inverting the CDF (vectorised)."""
    r = rng.random((theta.size, n))
    t = theta[:, None]
    # F(x) = (x + 1)/2 + t (x^2 - 1)/4 = r  <=>  t x^2 + 2 x + (2 - t - 4 r) = 0
    disc = 4 - 4 * t * (2 - t - 4 * r)
    return np.where(np.abs(t) > 1e-12, (-2 + np.sqrt(disc)) / (2 * np.where(t == 0, 1, t)), 2 * r - 1)


def _toy_coefficients(x: np.ndarray, with_nuisance: bool = True) -> np.ndarray:
    A = np.zeros(x.shape + (3, 2 if with_nuisance else 1))
    A[..., 0, 0] = 0.5
    A[..., 1, 0] = 0.5 * x
    if with_nuisance:
        A[..., 0, 1] = 0.5 * x
    return A


def _toy_norm(with_nuisance: bool = True) -> np.ndarray:
    Z = np.zeros((3, 2 if with_nuisance else 1))
    Z[0, 0] = 1.0
    return Z


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(20261203)
    u = TAU * rng.standard_normal(N_SETS)
    x = _toy_events(C_TRUE + u, N_EVENTS, rng)
    return u, x


def test_the_toy_sampler_draws_the_toy_pdf():
    x = _toy_events(np.array([0.3]), 200_000, np.random.default_rng(1))[0]
    assert abs(x.mean() - 0.3 / 3) < 4 * np.sqrt(1 / 3 / 200_000)  # E[x] = theta / 3
    assert x.min() >= -1 and x.max() <= 1


def test_the_profiled_error_is_the_known_answer(toy):
    """The Hessian of -ln L in (c, u) is H_theta [[1, 1], [1, 1]] + diag(0, 1/tau^2): the c-error is sqrt(1/H_theta + tau^2)."""
    _, x = toy
    A = _toy_coefficients(x[0])
    lik = set_likelihood.SetLikelihood(A, _toy_norm(), 1, 1, degree=1, prior_scale=TAU)
    phi, cov, ok, _ = set_likelihood.fit_set(lik)
    assert ok
    fixed = set_likelihood.SetLikelihood(_toy_coefficients(x[0], False), _toy_norm(False), 1, 0, degree=1, prior_scale=None)
    theta, cov_theta, ok_t, _ = set_likelihood.fit_set(fixed)
    assert ok_t
    # the data see theta = c + u only, and the prior pins u at its mean 0 at the minimum
    assert phi[0] + phi[1] == pytest.approx(theta[0], abs=1e-6)
    assert phi[1] == pytest.approx(0.0, abs=1e-6)
    assert np.sqrt(cov[0, 0]) == pytest.approx(np.sqrt(cov_theta[0, 0] + TAU**2), rel=1e-5)
    # and the gradient and Hessian are those of finite differences
    nll, grad, hess = lik(np.array([0.2, 0.03]))
    for i in range(2):
        e = np.zeros(2)
        e[i] = 1e-6
        up, gu, _ = lik(np.array([0.2, 0.03]) + e)
        dn, gd, _ = lik(np.array([0.2, 0.03]) - e)
        assert (up - dn) / 2e-6 == pytest.approx(grad[i], rel=1e-5, abs=1e-4)
        assert np.allclose((gu - gd) / 2e-6, hess[:, i], rtol=1e-4, atol=1e-2)


def _first(a) -> np.ndarray:
    """The first coefficient's column (FitResult keeps one coefficient as a vector)."""
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1)[:, 0]


def _coverage(values, errors, truth):
    z = np.abs(_first(values) - truth) / _first(errors)
    return float(np.mean(z <= 1.0)), float(np.mean(z <= 1.959964))


def test_the_nuisance_aware_set_likelihood_covers_nominally(toy):
    _, x = toy
    res = set_likelihood.fit_sets(_toy_coefficients(x), _toy_norm(), 1, 1, degree=1, prior_scale=TAU)
    assert res.valid.all()
    c68, c95 = _coverage(res.values, res.errors, C_TRUE)
    assert abs(c68 - 0.683) < 0.05 and abs(c95 - 0.954) < 0.03
    # the spread is the known one, sqrt(1/(N I) + tau^2) with I = E[x^2 / (1 + theta x)^2] ~ 1/3 near 0
    sd = float(np.std(_first(res.values), ddof=1))
    assert sd / float(np.median(res.errors)) == pytest.approx(1.0, abs=0.07)
    assert abs(np.mean(_first(res.values)) - C_TRUE) < 3 * sd / np.sqrt(N_SETS)


def test_multiplying_per_event_marginal_posteriors_under_covers(toy):
    """The pitfall: the per-event marginal over u is (1 + c x)/2, the product of those the fit at u = 0."""
    _, x = toy
    res = set_likelihood.fit_sets(_toy_coefficients(x, False), _toy_norm(False), 1, 0, degree=1, prior_scale=None)
    assert res.valid.all()
    c68, c95 = _coverage(res.values, res.errors, C_TRUE)
    assert c68 < 0.683 - 0.15 and c95 < 0.954 - 0.15  # far outside the nominal band
    sd = float(np.std(_first(res.values), ddof=1))
    assert sd / float(np.median(res.errors)) > 1.4  # the shared u does not average out over the set


def test_with_the_exact_tables_it_is_the_profiled_fit(ff_tables_cache):
    """degree 2 over the projections of the bi-quadratic tables is kernels.profile's fit, set by set."""
    ff = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")
    nt = nuisances.nuisance_table(["C9_bsmumu"], form_factors=ff, spacing=0.25, cache=ff_tables_cache)
    worlds = nuisances.draw_worlds(4, nt.n_nuisances, 1.0, seed=5, point=0)
    sets = np.stack([sampler.sample_array(nt.at(u), [-0.5], 3000, (5, k)).T for k, u in enumerate(worlds)])
    norm = likelihood.normalisation(nt.flat)
    ref = profile.fit_sets_profiled(nt, sets, norm=norm)
    P_c, P_u = nt.coef.shape[:2]
    A = likelihood.project(nt.flat, sets).reshape(*sets.shape[:2], P_c, P_u)
    got = set_likelihood.fit_sets(A, norm.reshape(P_c, P_u), nt.n_shifts, nt.n_nuisances, degree=2, prior_scale=1.0)
    assert ref.valid.all() and got.valid.all()
    assert np.allclose(got.values, ref.values, atol=1e-3 * float(np.min(ref.errors)))
    assert np.allclose(got.errors, ref.errors, rtol=1e-3)
    assert np.allclose(got.nuisances, ref.nuisances, atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(degree=3), "degree must be 1 or 2"),
    (dict(prior_scale=0.0), "prior_scale must be > 0"),
    (dict(prior_scale=float("nan")), "prior_scale must be > 0"),
    (dict(n_u=2), "event coefficients must have shape"),
])
def test_bad_shapes_and_settings_are_config_errors(kwargs, message):
    args = dict(A=_toy_coefficients(np.zeros(5)), norm=_toy_norm(), n_c=1, n_u=1, degree=1, prior_scale=1.0)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        set_likelihood.SetLikelihood(**args)

"""Hadronic nuisances: bi-quadratic tables against flavio, the efficient bound, the profiled fit, the pitfall."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import likelihood, nuisances, profile, sampler, theory
from kernels.errors import ConfigError

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")


@pytest.fixture(scope="module")
def ntable(ff_tables_cache):
    """delta C9 x three form factors on a coarse q2 grid: 3 x 10 flavio evaluations."""
    return nuisances.nuisance_table(["C9_bsmumu"], form_factors=FF, spacing=0.25, cache=ff_tables_cache)


def _flavio(ntable, c, u):
    import flavio

    par = flavio.default_parameters.get_central_all()
    par.update(zip(ntable.prior.names, ntable.prior.theta(u)))
    return theory._flavio_j(flavio, ntable.coefficients, np.atleast_1d(c), ntable.q2, par) / ntable.scale


def test_the_biquadratic_tables_reproduce_flavio_at_a_random_point(ntable):
    rng = np.random.default_rng(11)
    c, u = rng.uniform(-2, 1), rng.normal(size=len(FF)) * 1.5
    direct = _flavio(ntable, c, u)
    model = ntable.at(u).at([c])
    assert np.max(np.abs(model - direct)) / np.max(np.abs(direct)) < 1e-9


def test_a_world_at_the_prior_centre_is_the_fixed_theory_table(ntable):
    fixed = theory.jtable(["C9_bsmumu"], spacing=0.25, cache=False)
    central = ntable.at(np.zeros(len(FF)))
    assert central.key == fixed.key
    assert np.array_equal(central.coef, fixed.coef)


def test_a_contracted_table_equals_flavio_with_those_parameter_values(ntable):
    u = np.array([0.8, -1.1, 0.3])
    world = ntable.at(u)
    for c in (-1.0, 0.0, 0.7):  # it is an ordinary quadratic table in c
        direct = _flavio(ntable, c, u)
        assert np.max(np.abs(world.at([c]) - direct)) / np.max(np.abs(direct)) < 1e-9
    assert world.key != ntable.at(np.zeros(3)).key  # the sampler's cache keeps worlds apart


def test_local_derivatives_are_those_of_the_tables(ntable):
    c, u, h = np.array([-0.4]), np.array([0.2, -0.5, 0.9]), 1e-5
    J, dJ, d2J = ntable.local(c, u)
    assert np.allclose(J, ntable.at(u).at(c), rtol=0, atol=1e-14)
    e = np.zeros(3)
    e[1] = h
    fd = (ntable.at(u + e).at(c) - ntable.at(u - e).at(c)) / (2 * h)
    assert np.allclose(dJ[2], fd, rtol=0, atol=1e-8 * np.abs(J).max())
    assert np.allclose(d2J, np.transpose(d2J, (1, 0, 2, 3)))


def test_the_joint_fisher_matrix_contains_the_fixed_one(ntable):
    I = likelihood.fisher_information_nuisances(ntable, [0.0])
    assert I.shape == (4, 4)
    assert I[0, 0] == pytest.approx(likelihood.fisher_information(ntable.at(np.zeros(3)), [0.0])[0, 0], rel=1e-10)
    assert np.all(np.linalg.eigvalsh(I) > 0)


def test_the_efficient_bound_tends_to_the_fixed_bound_and_to_the_flat_profile():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    I = A @ A.T + 0.1 * np.eye(4)
    fixed = 1 / np.sqrt(100 * I[0, 0])
    flat = np.sqrt(np.linalg.inv(100 * I)[0, 0])
    tight = likelihood.efficient_bound(I, 1, 100, np.eye(3) * 1e12)[0][0]
    loose = likelihood.efficient_bound(I, 1, 100, np.eye(3) * 1e-12)[0][0]
    mid = likelihood.efficient_bound(I, 1, 100, np.eye(3))[0][0]
    assert tight == pytest.approx(fixed, rel=1e-6)
    assert loose == pytest.approx(flat, rel=1e-6)
    assert fixed < mid < flat


def test_the_profiled_fit_reaches_the_efficient_bound_and_covers_where_the_fixed_fit_does_not(ntable):
    N, M, d = 3000, 120, -0.5
    worlds = nuisances.draw_worlds(M, len(FF), 1.0, seed=3, point=0)
    sets = np.stack([sampler.sample_array(ntable.at(u), [d], N, (3, 0, k)).T for k, u in enumerate(worlds)])
    res = profile.fit_sets_profiled(ntable, sets)
    eff = likelihood.efficient_bound(likelihood.fisher_information_nuisances(ntable, [d]), 1, N, np.eye(3))[0][0]
    assert res.valid.all()
    spread = np.std(res.values, ddof=1)
    assert 0.8 < spread / eff < 1.2  # 120 sets: the ratio is known to about 7%
    assert abs(np.mean(res.values) - d) < 0.3 * eff
    assert np.median(res.errors) == pytest.approx(eff, rel=0.1)
    assert 0.58 < np.mean(np.abs(res.values - d) <= res.errors) < 0.78
    naive = likelihood.fit_sets(ntable.at(np.zeros(3)), sets)  # form factors fixed at flavio's centre
    assert np.mean(np.abs(naive.values - d) <= naive.errors) < 0.5


def test_multiplying_per_event_marginal_posteriors_under_covers_a_shared_nuisance():
    """x_e = c + theta + noise, theta ~ N(0, tau^2) shared by the set: the set's posterior has variance
    1/N + tau^2 (the efficient bound), the product of per-event marginals (1 + tau^2) / N."""
    rng = np.random.default_rng(5)
    N, M, tau, c = 400, 2000, 0.3, 0.0
    theta = rng.normal(0, tau, size=M)
    x = c + theta[:, None] + rng.normal(size=(M, N))
    est = x.mean(axis=1)
    I_event = np.ones((2, 2))  # d ln p / dc = d ln p / dtheta for a unit Gaussian
    eff = likelihood.efficient_bound(I_event, 1, N, np.eye(1) / tau**2)[0][0]
    assert eff == pytest.approx(np.sqrt(1 / N + tau**2), rel=1e-9)
    product = np.sqrt((1 + tau**2) / N)  # each event's marginal N(c, 1 + tau^2), multiplied over the set
    covered = lambda w: np.mean(np.abs(est - c) <= w)  # noqa: E731
    assert abs(covered(eff) - 0.68) < 0.03
    assert covered(product) < 0.25


def test_bad_nuisance_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown nuisance parameter 'B->K\\* BSZ a9_Q'"):
        nuisances.nuisance_table(["C9_bsmumu"], form_factors=["B->K* BSZ a9_Q"], cache=tmp_path)
    with pytest.raises(ConfigError, match="unknown nuisance parameter 'm_b'"):
        nuisances.nuisance_table(["C9_bsmumu"], form_factors=["m_b"], cache=tmp_path)
    with pytest.raises(ConfigError, match="unknown form-factor set 'lcsr'"):
        nuisances.nuisance_table(["C9_bsmumu"], form_factors="lcsr", cache=tmp_path)
    with pytest.raises(ConfigError, match="not positive definite"):
        nuisances.Prior(("a", "b"), np.zeros(2), np.array([[1.0, 0.0], [0.0, -1.0]]))
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(ConfigError, match="prior_scale must be a finite number > 0"):
            nuisances.check_prior_scale(bad)
    assert not list(tmp_path.iterdir())  # nothing written


def test_worlds_are_seeded_per_point_and_world():
    a = nuisances.draw_worlds(5, 3, 1.0, seed=1, point=2)
    b = nuisances.draw_worlds(3, 3, 1.0, seed=1, point=2)
    assert np.array_equal(a[:3], b)
    assert not np.allclose(a, nuisances.draw_worlds(5, 3, 1.0, seed=1, point=3))
    assert np.allclose(nuisances.draw_worlds(5, 3, 2.0, seed=1, point=2), 2 * a)

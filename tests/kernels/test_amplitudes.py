"""Power corrections as nuisances: amplitude tables against flavio, their derivatives, and the bounds they give."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kernels import amplitudes, likelihood, nuisances, theory
from kernels.errors import ConfigError

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")
PC = ("B0->K*0 delta_C7 a_0 Re", "B0->K*0 delta_C7 b_- Re", "B0->K*0 delta_C7p a_+ Re", "B0->K*0 delta_C7 a_- Im")
BOTH = ((1.1, 6.0), (15.0, 19.0))


@pytest.fixture(scope="module")
def atable(ff_tables_cache):
    """delta C9 x 4 power corrections x 3 form factors on a coarse q2 grid: 24 amplitude evaluations."""
    return amplitudes.amplitude_table(["C9_bsmumu"], form_factors=FF, corrections=PC, spacing=0.25,
                                      cache=ff_tables_cache)


def _flavio(table, c, u):
    import flavio

    par = flavio.default_parameters.get_central_all()
    par.update(zip(table.prior.names, table.prior.theta(u)))
    return theory._flavio_j(flavio, table.coefficients, np.atleast_1d(c), table.q2, par) / table.scale


def test_the_nuisance_vector_is_the_form_factors_then_the_power_corrections(atable):
    assert atable.prior.names == FF + PC and atable.n_form_factors == 3 and atable.n_nuisances == 7
    assert atable.space.names == ("C9_bsmumu", *(f"u:{n}" for n in FF + PC))
    sd = np.sqrt(np.diag(atable.prior.cov))[3:]
    assert sd.tolist() == pytest.approx([0.186, 0.432, 0.006, 0.023])  # flavio's own priors, B0 marginals
    assert np.all(atable.prior.cov[:3, 3:] == 0)


def test_the_amplitude_tables_reproduce_flavio_at_random_points(atable):
    rng = np.random.default_rng(3)
    for _ in range(2):
        c, u = rng.uniform(-2, 1), rng.normal(size=atable.n_nuisances) * 1.5
        direct = _flavio(atable, c, u)
        assert np.max(np.abs(atable.j([c], u) - direct)) / np.max(np.abs(direct)) < 1e-9


def test_the_power_corrections_change_j(atable):
    u = np.zeros(atable.n_nuisances)
    for k in range(3, 7):
        e = u.copy()
        e[k] = 1.0
        assert np.max(np.abs(atable.j([0.0], e) - atable.j([0.0], u))) > 1e-4 * np.max(np.abs(atable.j([0.0], u)))


def test_a_contracted_table_equals_flavio_with_those_parameter_values(atable):
    u = np.array([0.8, -1.1, 0.3, 0.5, -0.7, 1.2, 0.4])
    world = atable.at(u)
    for c in (-1.0, 0.0, 0.7):
        direct = _flavio(atable, c, u)
        assert np.max(np.abs(world.at([c]) - direct)) / np.max(np.abs(direct)) < 1e-9


def test_without_power_corrections_the_world_is_the_form_factor_tables(atable, ff_tables_cache):
    ntable = nuisances.nuisance_table(["C9_bsmumu"], form_factors=FF, spacing=0.25, cache=ff_tables_cache)
    u = np.array([0.4, -0.9, 1.1])
    a, b = atable.at(np.r_[u, np.zeros(4)]), ntable.at(u)
    assert np.allclose(a.coef, b.coef, rtol=0, atol=1e-10 * np.abs(b.coef).max())
    assert a.scale == pytest.approx(ntable.scale, rel=1e-12)


def test_local_derivatives_match_finite_differences(atable):
    x, h = np.array([-0.4, 0.2, -0.5, 0.9, 0.3, -1.0, 0.6, 0.1]), 1e-5
    J, dJ, d2J = atable.local(x[:1], x[1:])
    assert np.allclose(J, atable.j(x[:1], x[1:]), rtol=0, atol=1e-14)
    scale = np.abs(J).max()
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        fd = (atable.j((x + e)[:1], (x + e)[1:]) - atable.j((x - e)[:1], (x - e)[1:])) / (2 * h)
        assert np.allclose(dJ[k], fd, rtol=0, atol=1e-8 * scale)
        fd2 = (atable.local((x + e)[:1], (x + e)[1:])[1] - atable.local((x - e)[:1], (x - e)[1:])[1]) / (2 * h)
        assert np.allclose(d2J[k], fd2, rtol=0, atol=1e-7 * scale)


def test_profiling_the_power_corrections_widens_the_bound(atable):
    I = likelihood.fisher_information_nuisances(atable, [0.0])
    assert np.allclose(I, I.T) and np.all(np.linalg.eigvalsh(I) > -1e-12 * np.abs(I).max())
    ff_only = likelihood.efficient_bound(I[:4, :4], 1, 24_000, np.eye(3))[0][0]
    both = likelihood.efficient_bound(I, 1, 24_000, np.eye(7))[0][0]
    narrow = likelihood.efficient_bound(I, 1, 24_000, np.eye(7) * 1e12)[0][0]
    assert both > ff_only > narrow
    assert narrow == pytest.approx(likelihood.sigma_crb(atable.at(np.zeros(7)), [0.0], 24_000), rel=1e-5)


def test_which_corrections_act_depends_on_the_windows():
    low, both = amplitudes.power_corrections([(1.1, 6.0)]), amplitudes.power_corrections(BOTH)
    assert low == amplitudes.LOW_Q2_CORRECTIONS and both == low + amplitudes.HIGH_Q2_CORRECTIONS
    assert amplitudes.power_corrections([(15.0, 19.0)]) == amplitudes.HIGH_Q2_CORRECTIONS


@pytest.mark.parametrize("names, message", [
    (["B0->K*0 delta_C7 c_0 Re"], "unknown power correction 'B0->K*0 delta_C7 c_0 Re'"),
    ([PC[0], PC[0]], "listed twice"),
])
def test_bad_power_corrections_are_one_line_errors(names, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        amplitudes.amplitude_table(["C9_bsmumu"], form_factors=FF, corrections=names, spacing=0.25, cache=False)
    assert "\n" not in str(err.value)


def test_node_values_and_contracted_hessians_are_the_local_derivatives(atable):
    c, u = np.array([0.3]), np.linspace(-1, 1, atable.n_nuisances)
    J, dJ, d2J = atable.local(c, u)
    J2, dJ2 = atable.node_values(c, u)
    assert np.allclose(J2, J, rtol=0, atol=1e-15) and np.allclose(dJ2, dJ, rtol=0, atol=1e-14)
    W = np.random.default_rng(0).normal(size=J.shape)
    got, ones = atable.contracted_hessians(c, u, [W, np.ones_like(J)])
    assert np.allclose(got, np.einsum("pxkt,kt->px", d2J, W), rtol=1e-10, atol=1e-14)
    assert np.allclose(ones, d2J.sum(axis=(2, 3)), rtol=1e-10, atol=1e-14)


def test_the_profiled_fit_with_power_corrections_reaches_their_bound(atable, ff_tables_cache):
    from kernels import profile, sampler

    N, M, d = 3000, 120, -0.5
    n = atable.n_nuisances
    worlds = nuisances.draw_worlds(M, n, 1.0, seed=4, point=0)
    sets = np.stack([sampler.sample_array(atable.at(u), [d], N, (4, 0, k)).T for k, u in enumerate(worlds)])
    res = profile.fit_sets_profiled(atable, sets)
    I = likelihood.fisher_information_nuisances(atable, [d])
    eff = likelihood.efficient_bound(I, 1, N, np.eye(n))[0][0]
    ff_only = likelihood.efficient_bound(I[:4, :4], 1, N, np.eye(3))[0][0]
    assert res.valid.all() and res.nuisances.shape == (M, n)
    assert 0.8 < np.std(res.values, ddof=1) / eff < 1.2  # 120 sets: known to about 7%
    assert abs(np.mean(res.values) - d) < 0.3 * eff
    assert np.median(res.errors) == pytest.approx(eff, rel=0.1)
    assert 0.58 < np.mean(np.abs(res.values - d) <= res.errors) < 0.78
    # the form factors alone profiled: its errors are those of a narrower bound, and it under-covers
    ntable = nuisances.nuisance_table(["C9_bsmumu"], form_factors=FF, spacing=0.25, cache=ff_tables_cache)
    ff = profile.fit_sets_profiled(ntable, sets)
    assert np.median(ff.errors) == pytest.approx(ff_only, rel=0.1) and ff_only < 0.8 * eff
    assert np.mean(np.abs(ff.values - d) <= ff.errors) < 0.6


def test_the_node_normalisation_is_the_rate(atable):
    from kernels import profile

    N = profile.node_normalisation(atable)
    u = np.linspace(-1, 1, atable.n_nuisances)
    world = atable.at(u)
    assert float(np.sum(N * atable.j([0.4], u))) == pytest.approx(float(theory.monomials([0.4]) @ world.rate_integral()), rel=1e-12)


def test_the_linear_table_is_j_and_its_nuisance_gradient_at_the_centre(atable):
    from kernels import joint_nuisance

    lin = joint_nuisance.nuisance_linear_table(atable)
    n = atable.n_nuisances
    for c in (-0.7, 0.4):
        J, dJ = atable.node_values([c], np.zeros(n))
        got = np.tensordot(theory.monomials([c]), lin.coef.reshape(3, 1 + n, *lin.coef.shape[1:]), axes=(0, 0))
        assert np.allclose(got[0], J, rtol=0, atol=1e-13) and np.allclose(got[1:], dJ[1:], rtol=0, atol=1e-12)

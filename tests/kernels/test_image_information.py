"""Information in the voxel image: exact voxel probabilities, their gradient, and the bounds they obey."""

import numpy as np
import pytest
from scipy import stats

from kernels import angular, detector, likelihood, sampler, theory, voxels
from kernels import image_information as ii
from kernels.errors import ConfigError


@pytest.fixture(scope="module")
def table():
    """The default delta C9 table, from the shared cache (``kernels.theory.cache_dir()``): built once, then loaded."""
    return theory.jtable(("C9_bsmumu",), ((1.1, 6.0),))


@pytest.fixture(scope="module")
def det_bkg(table):
    return detector.DetectorConfig().pdf_model("det_bkg", table.windows)


def _chi2_pvalue(counts, p):
    n = counts.sum()
    chi2 = np.sum((counts - n * p) ** 2 / (n * p))
    return stats.chi2.sf(chi2, counts.size - 1)


def test_voxel_integrals_of_the_basis_match_direct_quadrature():
    B, n = 3, 12
    L, K, X = ii.factor_integrals(B)
    F = np.einsum("ia,ib,ic->abci", L, K, X)
    x, w = np.polynomial.legendre.leggauss(n)
    nodes, weights = [], []
    for lo, hi in (voxels.RANGES[a] for a in voxels.AXES):  # plain Gauss-Legendre in each variable, per bin
        e = np.linspace(lo, hi, B + 1)
        nodes.append(((e[:-1] + e[1:])[:, None] / 2 + np.diff(e)[:, None] / 2 * x).ravel())
        weights.append((np.diff(e)[:, None] / 2 * w).ravel())
    g = np.meshgrid(*nodes, indexing="ij")
    W = np.einsum("a,b,c->abc", *weights)
    vals = angular.basis(*(v.ravel() for v in g)).reshape(B, n, B, n, B, n, 12) * W.reshape(B, n, B, n, B, n, 1)
    direct = vals.sum(axis=(1, 3, 5))
    # The sin factors have a square-root edge in cos: plain Gauss-Legendre converges slowly there.
    np.testing.assert_allclose(F, direct, atol=2e-4)
    assert np.abs(F - direct)[1:-1, 1:-1].max() < 1e-12  # interior voxels: polynomial integrands, exact


@pytest.mark.parametrize("dc9", [0.0, -1.5])
def test_voxel_probabilities_sum_to_one_and_match_sampled_events(table, dc9):
    B = 6
    p = ii.voxel_probabilities(table, [dc9], B)
    assert p.shape == (B, B, B)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    ev = sampler.sample_array(table, [dc9], 300_000, (31, int(10 * abs(dc9))))
    counts = voxels.make_images(ev, B, ev.shape[1], 1)[0, voxels.OCCUPANCY].astype(np.float64)
    assert _chi2_pvalue(counts.ravel(), p.ravel()) > 1e-3
    # The test has power: the probabilities at another shift are rejected.
    assert _chi2_pvalue(counts.ravel(), ii.voxel_probabilities(table, [dc9 + 0.5], B).ravel()) < 1e-6


def test_detector_level_probabilities_match_accepted_events_plus_background(table, det_bkg):
    B, N = 5, 400_000
    cfg = detector.DetectorConfig()
    rng = np.random.default_rng(5)
    ev = sampler.sample_array(table, [0.0], 3 * N, (32,)).astype(np.float64)
    ev = ev[:, rng.random(ev.shape[1]) < cfg.efficiency(*ev)]  # the acceptance, without resolution
    n_bkg = int(round(cfg.bkg_fraction / (1 - cfg.bkg_fraction) * ev.shape[1]))  # a fraction f of all events
    bkg = cfg.sample_background(table.windows, n_bkg, rng).astype(np.float64)
    both = np.concatenate([ev, bkg], axis=1)
    counts = voxels.voxelize(both[1], both[2], both[3], both[0], B)[0, voxels.OCCUPANCY].astype(np.float64)
    vm = ii.voxel_model(table, B, det_bkg)
    p = vm.probabilities([0.0])
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    assert _chi2_pvalue(counts.ravel(), p.ravel()) > 1e-3
    # The signal normalisation agrees with the likelihood's own quadrature.
    gam = vm.S[0].reshape(vm.S.shape[1], -1).sum(axis=1)
    np.testing.assert_allclose(gam, likelihood.normalisation(table, det_bkg), rtol=1e-7)


def test_quadrature_path_with_unit_efficiency_reproduces_the_exact_integrals(table):
    ones = likelihood.PdfModel(efficiency=lambda q2, cl, ck, chi: np.ones_like(q2 * cl * ck * chi))
    exact = ii.voxel_model(table, 8)
    quad = ii.voxel_model(table, 8, ones)
    np.testing.assert_allclose(quad.S, exact.S, rtol=0, atol=1e-9 * np.abs(exact.S).max())


def test_an_efficiency_too_sharp_in_q2_for_the_chebyshev_nodes_is_refused(table):
    edge = likelihood.PdfModel(efficiency=lambda q2, cl, ck, chi: stats.norm.cdf((6.0 - q2) / 0.05) + 0 * cl)
    with pytest.raises(ConfigError, match="varies too fast in q2"):
        ii.voxel_model(table, 4, edge)


@pytest.mark.parametrize("level", ["gen", "det_bkg"])
def test_gradient_matches_finite_differences(table, det_bkg, level):
    vm = ii.voxel_model(table, 7, det_bkg if level == "det_bkg" else likelihood.GEN)
    h = 1e-5
    for d in (0.0, -1.2):
        fd = (vm.probabilities([d + h]) - vm.probabilities([d - h])) / (2 * h)
        np.testing.assert_allclose(vm.gradient([d])[0], fd, rtol=0, atol=1e-8 * np.abs(fd).max())
        mu_p, _ = vm.q2_mean_variance([d + h])
        mu_m, _ = vm.q2_mean_variance([d - h])
        r, dr = vm.moments([d])
        dmu = (dr[0, 1] - r[1] / r[0] * dr[0, 0]) / r[0]
        np.testing.assert_allclose(dmu, ((mu_p - mu_m) / (2 * h)).ravel(), atol=1e-7)


@pytest.mark.parametrize("dc9", [0.0, -1.0])
def test_the_image_never_holds_more_information_than_the_events(table, dc9):
    full = ii.full_information(table, [dc9])[0, 0]
    for B in (2, 5, 8, 16):
        vm = ii.voxel_model(table, B)
        counts = vm.counts_information([dc9])[0, 0]
        mean = vm.mean_q2_information([dc9])[0, 0]
        upper = ii.voxel_q2_information(table, [dc9], B)[0, 0]
        assert 0 < counts < counts + mean <= upper * (1 + 1e-9)
        assert upper < full


def test_the_image_never_holds_more_information_than_the_events_with_detector_and_background(table, det_bkg):
    info = ii.image_information(table, [0.0], 8, det_bkg)
    full = info["full"][0, 0]
    assert full == pytest.approx(likelihood.fisher_information(table, [0.0], det_bkg)[0, 0], rel=1e-12)
    assert 0 < info["counts"][0, 0] < info["image"][0, 0] < full
    assert 1 < info["ratio_image"][0] < info["ratio_counts"][0]
    coarse = ii.voxel_model(table, 3, det_bkg)
    c3 = coarse.counts_information([0.0])[0, 0]
    assert 0 < c3 < c3 + coarse.mean_q2_information([0.0])[0, 0] < full
    assert c3 < info["counts"][0, 0]
    # The background dilutes the information: less per event than at detector level without it.
    det = detector.DetectorConfig().pdf_model("det", table.windows)
    assert info["counts"][0, 0] < ii.counts_information(table, [0.0], 8, det)[0, 0]


def test_counts_information_converges_to_the_angular_information(table):
    # The limit, independently: the q2-integrated angular pdf, by Gauss-Legendre over the angles.
    d = np.array([0.0])
    m, dm = theory.monomials(d), theory.monomial_gradient(d)
    n = 48
    x, w = np.polynomial.legendre.leggauss(n)
    chi = (np.arange(n) + 0.5) * 2 * np.pi / n
    cl, ck, ch = np.meshgrid(x, x, chi, indexing="ij")
    W = np.einsum("a,b,c->abc", w, w, np.full(n, 2 * np.pi / n)).ravel()
    F = angular.basis(cl.ravel(), ck.ravel(), ch.ravel())
    Jint = table.integral()
    G, dG = angular.PREFACTOR * F @ (m @ Jint), angular.PREFACTOR * F @ (dm[0] @ Jint)
    gam, dgam = table.rate_integral() @ m, dm[0] @ table.rate_integral()
    dp = dG / gam - G * dgam / gam**2
    limit = np.sum(W * dp**2 / (G / gam))

    infos = [ii.counts_information(table, d, B)[0, 0] for B in (4, 8, 16, 32, 64)]
    assert np.all(np.diff(infos) > 0)  # nested refinements never lose information
    assert infos[-1] < limit
    assert infos[-1] / limit > 0.98
    assert infos[0] / limit < 0.9  # ... and coarse images do lose some
    assert limit < ii.full_information(table, d)[0, 0]  # q2 carries information of its own


def test_sigma_crb_image_is_above_the_unbinned_bound_and_scales_with_n(table):
    s_crb = likelihood.sigma_crb(table, [0.0], 24_000)
    s_counts = ii.sigma_crb_image(table, [0.0], 16, 24_000, mean_q2=False)
    s_image = ii.sigma_crb_image(table, [0.0], 16, 24_000)
    assert s_crb < s_image < s_counts
    assert ii.sigma_crb_image(table, [0.0], 16, 6_000) / s_image == pytest.approx(2.0, rel=1e-12)
    info = ii.image_information(table, [0.0], 16)
    assert info["ratio_image"][0] == pytest.approx(s_image / s_crb, rel=1e-6)
    with pytest.raises(ConfigError):
        ii.sigma_crb_image(table, [0.0], 16, 0)
    with pytest.raises(ConfigError):
        ii.voxel_model(table, 0)


def test_monte_carlo_images_reproduce_the_table_information(table):
    B, h = 4, 0.5
    mc = ii.image_information_mc(table, [0.0], B, 4_000, 128, h=h, seed=3)
    vm = ii.voxel_model(table, B)
    # The MC estimator's own expectation: the same central differences, evaluated on the tables.
    p, (_, var) = vm.probabilities([0.0]), vm.q2_mean_variance([0.0])
    D = (vm.probabilities([h]) - vm.probabilities([-h])) / (2 * h)
    Dm = (vm.q2_mean_variance([h])[0] - vm.q2_mean_variance([-h])[0]) / (2 * h)
    expect_counts, expect_mean = np.sum(D**2 / p), np.sum(p * Dm**2 / var)
    assert expect_counts == pytest.approx(vm.counts_information([0.0])[0, 0], rel=0.02)
    assert expect_mean == pytest.approx(vm.mean_q2_information([0.0])[0, 0], rel=0.02)
    assert abs(mc["counts"][0, 0] - expect_counts) < 4 * mc["counts_err"][0, 0]
    assert abs(mc["mean_q2"][0, 0] - expect_mean) < 4 * mc["mean_q2_err"][0, 0]
    assert mc["mean_q2_err"][0, 0] < 0.3 * expect_mean  # the check has power


def test_two_q2_windows_are_integrated_separately_and_exactly():
    """A toy table over [1.1, 6] and [15, 19] (no flavio): each window has its own q2 nodes."""
    q2 = np.r_[np.linspace(1.1, 6.0, 50), np.linspace(15.0, 19.0, 41)]
    coef = np.zeros((3, q2.size, 12))
    coef[0, :, 0], coef[0, :, 1] = 1 + 0.1 * np.sin(q2), 1 + 0.05 * q2
    coef[1, :, angular.TERMS.index("6s")] = 0.2 * np.cos(q2)
    toy = theory.JTable(
        ("C9_bsmumu",), ((1.1, 6.0), (15.0, 19.0)), q2, np.repeat([0, 1], [50, 41]), coef, 1.0, "toy", ""
    )
    exact = ii.voxel_model(toy, 5)
    np.testing.assert_allclose(exact.S[0].reshape(3, -1).sum(axis=1), toy.rate_integral(), atol=1e-12)
    acc = likelihood.PdfModel(
        efficiency=lambda q, cl, ck, chi: 0.5 * (1 + 0.03 * (q - 10)) * (1 - 0.5 * cl * cl) + 0 * ck * chi
    )
    quad = ii.voxel_model(toy, 5, acc)
    np.testing.assert_allclose(quad.S[0].reshape(3, -1).sum(axis=1), likelihood.normalisation(toy, acc), atol=1e-10)
    assert 0 < quad.counts_information([0.3])[0, 0] < likelihood.fisher_information(toy, [0.3], acc)[0, 0]

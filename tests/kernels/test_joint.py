"""The simulator's joint quantities: exact scores and ratios, zero-mean scores at every level, training draws."""

import numpy as np
import pytest

from kernels import detector, joint, likelihood, sampler, theory
from kernels.errors import ConfigError


def _truth(table, d, n, seed, level="gen"):
    return detector.sample_level_truth(table, [d], n, seed, level)


@pytest.fixture(scope="module")
def det_norm(c9_table):
    return joint.normalisation(c9_table, joint.true_efficiency("det", c9_table.windows))


def test_joint_score_is_the_derivative_of_the_joint_log_ratio_and_of_the_nll(c9_table, det_norm):
    z = _truth(c9_table, -0.4, 2000, (1,), "det").truth.T
    h = 1e-5
    for norm in (None, det_norm):
        t = joint.joint_score(c9_table, z, -0.4, norm)
        fd = (joint.joint_log_ratio(c9_table, z, -0.4 + h, 0.3, norm) - joint.joint_log_ratio(c9_table, z, -0.4 - h, 0.3, norm)) / (2 * h)
        np.testing.assert_allclose(t, fd, rtol=1e-6, atol=1e-8)
    # independently: -d/dd of the one-event NLL of kernels.likelihood, at the generator level
    a = likelihood.project(c9_table, z[:50])
    gamma = c9_table.rate_integral()
    nll_fd = [(likelihood.nll([-0.4 + h], a[i : i + 1], gamma) - likelihood.nll([-0.4 - h], a[i : i + 1], gamma)) / (2 * h)
              for i in range(50)]
    np.testing.assert_allclose(joint.joint_score(c9_table, z[:50], -0.4), -np.array(nll_fd), rtol=1e-5, atol=1e-7)


def test_joint_log_ratio_is_the_log_of_the_pdf_ratio(c9_table):
    z = sampler.sample_array(c9_table, [0.5], 500, (2,)).T.astype(np.float64)
    a = likelihood.project(c9_table, z)
    m0, m1 = theory.monomials(np.array([1.2])), theory.monomials(np.array([-2.0]))
    g = c9_table.rate_integral()
    expect = np.log((a @ m0) / (g @ m0)) - np.log((a @ m1) / (g @ m1))
    np.testing.assert_allclose(joint.joint_log_ratio(c9_table, z, 1.2, -2.0), expect, rtol=1e-12)


@pytest.mark.parametrize("d", [-2.0, 0.0, 1.0])
def test_the_joint_score_averages_to_zero_at_the_generator_level(c9_table, d):
    z = sampler.sample_array(c9_table, [d], 300_000, (3, int(10 * d) + 30)).T
    t = joint.joint_score(c9_table, z, d)
    assert abs(t.mean()) < 4 * t.std() / np.sqrt(t.size)


@pytest.mark.parametrize("level, d", [("det", -1.5), ("det", 0.8), ("det_bkg", -0.5)])
def test_the_detector_level_joint_score_averages_to_zero_only_with_the_acceptance_term(c9_table, det_norm, level, d):
    s = _truth(c9_table, d, 300_000, (4, int(10 * d) + 30), level)
    t = joint.joint_score(c9_table, s.truth.T, d, det_norm, s.is_signal)
    err = t.std() / np.sqrt(t.size)
    assert abs(t.mean()) < 4 * err
    assert np.all(t[~s.is_signal] == 0)
    # the pitfall: the generator-level normalisation (no acceptance term) biases every score
    naive = joint.joint_score(c9_table, s.truth.T, d, None, s.is_signal)
    assert abs(naive.mean()) > 8 * err


def test_the_acceptance_term_is_minus_the_slope_of_the_accepted_fraction(c9_table, det_norm):
    # t_det - t_gen = -d/dd ln(Gamma_eps / Gamma), the same for every signal event
    z = _truth(c9_table, 0.3, 100, (5,), "det").truth.T
    diff = joint.joint_score(c9_table, z, 0.3, det_norm) - joint.joint_score(c9_table, z, 0.3)
    slope = joint.log_normalisation_gradient(c9_table, 0.3, det_norm) - joint.log_normalisation_gradient(c9_table, 0.3, c9_table.rate_integral())
    np.testing.assert_allclose(diff, -slope[0, 0], rtol=1e-9)


def test_truth_sampler_gives_the_event_store_bytes_and_the_true_events(c9_table):
    for level in ("gen", "det", "det_bkg"):
        tbl = detector.sample_level(c9_table, [-0.3], 5000, (6, 1), level)
        s = detector.sample_level_truth(c9_table, [-0.3], 5000, (6, 1), level)
        for i, c in enumerate(("q2", "cos_theta_mu", "cos_theta_k", "chi")):
            assert np.array_equal(tbl.column(c).to_numpy(), s.events[i])
        if level == "det_bkg":
            assert np.array_equal(tbl.column("is_signal").to_numpy(zero_copy_only=False), s.is_signal)
            assert np.array_equal(s.truth[:, ~s.is_signal], s.events[:, ~s.is_signal])  # background is not smeared
        if level == "gen":
            assert np.array_equal(s.truth, s.events)
        else:
            sig = s.is_signal
            dq2 = s.events[0, sig] - s.truth[0, sig]
            assert 0.03 < dq2.std() < 0.07  # sigma_q2 = 0.05: truth and smeared events are paired
            assert np.all(s.truth[0] >= 1.1) and np.all(s.truth[0] <= 6.0)


def test_window_efficiency_is_the_chance_to_stay_in_the_window():
    det = detector.DetectorConfig()
    kappa = det.window_efficiency(((1.1, 6.0),))
    assert kappa(3.5) == pytest.approx(1.0) and kappa(1.1) == pytest.approx(0.5, abs=1e-6)
    rng = np.random.default_rng(0)
    q2 = 1.12 + det.sigma_q2 * rng.standard_normal(200_000)
    assert np.mean(q2 >= 1.1) == pytest.approx(float(kappa(1.12)), abs=0.005)


def test_sample_joint_draws_d_continuously_with_exact_joint_scores(c9_table):
    js = joint.sample_joint(c9_table, (-3.0, 2.0), 200_000, (7,))
    assert js.events.shape == js.truth.shape == (200_000, 4) and js.shifts.shape == js.score.shape == (200_000,)
    assert js.shifts.min() >= -3.0 and js.shifts.max() <= 2.0
    assert np.unique(js.shifts).size > 190_000  # continuous, not a grid
    counts = np.histogram(js.shifts, bins=10, range=(-3.0, 2.0))[0]
    assert np.all(np.abs(counts - 20_000) < 5 * np.sqrt(20_000))  # uniform prior at the generator level
    np.testing.assert_allclose(js.score, joint.joint_score(c9_table, js.truth, js.shifts), rtol=1e-10)
    # Given its d, each event follows p(z|d): the joint score averages to 0 in every d slice.
    for lo in (-3.0, -1.0, 1.0):
        sl = (js.shifts >= lo) & (js.shifts < lo + 1.0)
        assert abs(js.score[sl].mean()) < 4 * js.score[sl].std() / np.sqrt(sl.sum())


def test_sample_joint_at_detector_level_with_background(c9_table, det_norm):
    js = joint.sample_joint(c9_table, (-2.0, 1.0), 100_000, (8,), level="det_bkg", norm=det_norm)
    assert np.mean(~js.is_signal) == pytest.approx(0.44, abs=0.001)
    assert np.all(js.score[~js.is_signal] == 0)
    assert js.shifts[~js.is_signal].min() >= -2.0 and js.shifts[~js.is_signal].max() <= 1.0
    assert abs(js.score.mean()) < 4 * js.score.std() / np.sqrt(js.score.size)


def test_joint_quadratic_is_the_joint_ratio_and_averages_to_gamma(c9_table, det_norm):
    s = _truth(c9_table, 0.5, 200_000, (9,), "det_bkg")
    c, mean = joint.joint_quadratic(c9_table, s.truth.T, 0.5, det_norm, s.is_signal)
    g = det_norm
    gam = lambda d: g @ theory.monomials(np.array([d]))  # noqa: E731
    np.testing.assert_allclose(mean, [(g[1] + 2 * g[2] * 0.5) / gam(0.5), g[2] / gam(0.5)], rtol=1e-12)
    sig = s.is_signal
    # signal: 1 + c1 delta + c2 delta^2 = G(z; d) / G(z; d_ref), i.e. exp(ln p ratio) * Gamma ratio
    d = -1.3
    ratio = np.exp(joint.joint_log_ratio(c9_table, s.truth.T[sig][:100], d, 0.5, g)) * gam(d) / gam(0.5)
    np.testing.assert_allclose(1 + c[sig][:100, 0] * (d - 0.5) + c[sig][:100, 1] * (d - 0.5) ** 2, ratio, rtol=1e-9)
    assert np.all(c[~sig] == mean)
    err = c.std(axis=0) / np.sqrt(c.shape[0])
    assert np.all(np.abs(c.mean(axis=0) - mean) < 4 * err)


def test_bad_inputs_are_refused(c9_table):
    with pytest.raises(ConfigError, match="shape"):
        joint.joint_score(c9_table, np.zeros((3, 5)), 0.0)
    with pytest.raises(ConfigError, match="unknown level"):
        joint.true_efficiency("reco", c9_table.windows)
    with pytest.raises(ConfigError, match="d_range"):
        joint.sample_joint(c9_table, (1.0, -1.0), 100, (1,))
    with pytest.raises(ConfigError, match="is_signal"):
        joint.joint_score(c9_table, np.full((3, 4), 0.5) + [2, 0, 0, 0], 0.0, is_signal=[True])


def test_voxel_score_sums_bin_each_events_scores_where_voxelize_puts_it(c9_table, det_norm):
    from kernels.voxels import bin_index, voxelize

    s = detector.sample_level_truth(c9_table, [0.3], 3000, (9, 1), "det_bkg", detector.DetectorConfig())
    ev, truth = s.events.T, s.truth.T
    points = [-1.0, 0.0, 0.7]
    sums = joint.voxel_score_sums(c9_table, truth, ev, points, 4, det_norm, s.is_signal)
    scores = joint.scores_at(c9_table, truth, points, det_norm, s.is_signal)
    assert sums.shape == (3, 4, 4, 4)
    assert np.allclose(sums.sum(axis=(1, 2, 3)), scores.sum(axis=0), rtol=1e-4)
    assert np.all(scores[~s.is_signal] == 0) and (~s.is_signal).any()  # background carries no score
    ix = bin_index(ev[:, 1], ev[:, 2], ev[:, 3], 4)  # binned by the observed (smeared) event, as the image
    v = tuple(ix[:, 0])
    members = np.all(ix == ix[:, :1], axis=0)
    assert np.isclose(sums[(1, *v)], scores[members, 1].sum(), rtol=1e-4)
    image = voxelize(ev[:, 1], ev[:, 2], ev[:, 3], ev[:, 0], 4, n_images=1)[0]
    assert image[1][v] == members.sum()
    assert np.allclose(scores[:, 2], joint.joint_score(c9_table, truth, 0.7, det_norm, s.is_signal))

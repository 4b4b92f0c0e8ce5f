"""Detector and background levels, and the fit's fairness there (physics.md, "Detector level")."""

import numpy as np
import pytest

from kernels import detector, likelihood
from kernels.errors import ConfigError

COLS = ["q2", "cos_theta_mu", "cos_theta_k", "chi"]


def _arr(tbl):
    return np.stack([tbl.column(c).to_numpy() for c in COLS], axis=1).astype(np.float64)


def test_default_acceptance_averages_about_the_belle2_efficiency(c9_table):
    eff = detector.mean_efficiency(c9_table, [0.0], detector.DetectorConfig())
    assert 0.33 < eff < 0.41


def test_acceptance_falls_toward_the_edges():
    det = detector.DetectorConfig()
    centre = det.efficiency(3.5, 0.0, 0.0, np.pi / 4)
    assert det.efficiency(3.5, 0.99, 0.0, np.pi / 4) < centre
    assert det.efficiency(3.5, 0.0, 0.99, np.pi / 4) < centre


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"efficiency_scale": 2.0}, "reaches"),
        ({"bkg_fraction": 1.0}, "bkg_fraction"),
        ({"acc_cos_mu": 1.5}, "positive"),
        ({"bkg_cos_k": 2.0}, "background shape"),
        ({"sigma_q2": -0.1}, "sigma_q2"),
    ],
)
def test_invalid_detector_settings_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        detector.DetectorConfig(**bad).check(((1.1, 6.0),))


def test_unknown_detector_setting_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown detector setting.*accept"):
        detector.DetectorConfig.from_dict({"accept": 0.5})


def test_config_round_trips_through_a_dict():
    det = detector.DetectorConfig(bkg_fraction=0.2)
    assert detector.DetectorConfig.from_dict(det.to_dict()) == det


def test_det_bkg_has_the_configured_background_fraction_and_a_signal_flag(c9_table):
    tbl = detector.sample_level(c9_table, [0.0], 10_000, (1,), "det_bkg", detector.DetectorConfig(bkg_fraction=0.3))
    assert tbl.column_names == COLS + ["dc9", "is_signal"]
    assert tbl.num_rows == 10_000
    assert int((~tbl.column("is_signal").to_numpy()).sum()) == 3000


@pytest.mark.parametrize("level", ["det", "det_bkg"])
def test_detector_events_stay_in_range_and_are_deterministic(c9_table, level):
    a = detector.sample_level(c9_table, [0.5], 20_000, (4, 1), level)
    b = detector.sample_level(c9_table, [0.5], 20_000, (4, 1), level)
    assert a.equals(b)
    x = _arr(a)
    assert x[:, 0].min() >= 1.1 and x[:, 0].max() <= 6.0
    assert np.abs(x[:, 1:3]).max() <= 1
    assert x[:, 3].min() >= 0 and x[:, 3].max() < 2 * np.pi


def test_unknown_level_is_refused(c9_table):
    with pytest.raises(ConfigError, match="unknown level"):
        detector.sample_level(c9_table, [0.0], 10, (1,), "reco")


def test_background_sampler_follows_its_density():
    det = detector.DetectorConfig()
    x = det.sample_background(((1.1, 6.0),), 400_000, np.random.default_rng(3)).astype(np.float64)
    c, b, lam = det.bkg_cos_mu2, det.bkg_cos_k, det.bkg_q2_slope
    expect_cl2 = (2 / 3 + 2 * c / 5) / (2 + 2 * c / 3)
    qs = np.linspace(1.1, 6.0, 20001)
    wq = np.exp(-lam * qs)
    expect_q2 = np.sum(qs * wq) / np.sum(wq)
    n = x.shape[1]
    assert abs(np.mean(x[1] ** 2) - expect_cl2) < 5 * np.std(x[1] ** 2) / np.sqrt(n)
    assert abs(np.mean(x[2]) - b / 3) < 5 * np.std(x[2]) / np.sqrt(n)
    assert abs(np.mean(x[0]) - expect_q2) < 5 * np.std(x[0]) / np.sqrt(n)


def test_the_background_density_is_normalised():
    det = detector.DetectorConfig()
    pdf = det.background_pdf(((1.1, 6.0),))
    rng = np.random.default_rng(0)
    n = 1_000_000
    u = (1.1 + 4.9 * rng.random(n), 2 * rng.random(n) - 1, 2 * rng.random(n) - 1, 2 * np.pi * rng.random(n))
    assert np.mean(pdf(*u)) * 4.9 * 8 * np.pi == pytest.approx(1.0, abs=5e-3)


def test_fisher_with_acceptance_and_background_matches_monte_carlo(c9_table):
    det = detector.DetectorConfig()
    model = det.pdf_model("det_bkg", c9_table.windows)
    x = _arr(detector.sample_level(c9_table, [-1.0], 400_000, (9,), "det_bkg", det))
    s = likelihood._scores(np.array([-1.0]), likelihood.project(c9_table, x), likelihood.normalisation(c9_table, model), model.mixture(x))[:, 0]
    mc, err = np.mean(s**2), np.std(s**2) / np.sqrt(s.size)
    assert abs(likelihood.fisher_information(c9_table, [-1.0], model)[0, 0] - mc) < 5 * err


@pytest.mark.parametrize("level", ["det", "det_bkg"])
def test_ml_fit_with_acceptance_and_background_is_unbiased_at_the_crb(c9_table, level):
    det = detector.DetectorConfig()
    model = det.pdf_model(level, c9_table.windows)
    M, N, d = 200, 3000, -1.0
    sets = _arr(detector.sample_level(c9_table, [d], M * N, (12, len(level)), level, det)).reshape(M, N, 4)
    res = likelihood.fit_sets(c9_table, sets, model)
    crb = likelihood.sigma_crb(c9_table, [d], N, model)
    spread = res.values.std(ddof=1)
    assert res.valid.all()
    assert abs(res.values.mean() - d) < 4 * spread / np.sqrt(M)
    assert spread / crb == pytest.approx(1.0, abs=0.2)
    assert ((res.values - d) / res.errors).std(ddof=1) == pytest.approx(1.0, abs=0.2)


def test_ignoring_the_acceptance_biases_the_fit(c9_table):
    """Why the yardstick must include the acceptance: a generator-level pdf on det events is biased."""
    M, N, d = 40, 5000, -1.0
    sets = _arr(detector.sample_level(c9_table, [d], M * N, (13,), "det")).reshape(M, N, 4)
    naive = likelihood.fit_sets(c9_table, sets)
    assert abs(naive.values.mean() - d) > 10 * naive.values.std() / np.sqrt(M)


def test_the_pdf_keeps_the_events_the_q2_smearing_loses_at_the_window_edges(c9_table):
    """Smeared events leave the q2 windows and none come in, so the observed density falls to half at an
    edge. The detector-level pdf carries that loss (kappa of the observed q2); the acceptance alone does not."""
    det = detector.DetectorConfig()
    lo, hi = c9_table.windows[0]
    q2 = _arr(detector.sample_level(c9_table, [0.0], 1_000_000, (21,), "det", det))[:, 0]
    band = lambda x: ((x < lo + 0.05) | (x > hi - 0.05)).astype(np.float64)  # noqa: E731
    m = np.array([1.0])  # the monomials at delta C9 = 0: only the constant term

    def predicted(eff):
        in_band = likelihood.PdfModel(efficiency=lambda q, *a: eff(q, *a) * band(q))
        return float(likelihood.normalisation(c9_table, in_band)[:1] @ m
                     / (likelihood.normalisation(c9_table, likelihood.PdfModel(efficiency=eff))[:1] @ m))

    seen = np.mean(band(q2))
    err = np.sqrt(seen * (1 - seen) / q2.size)
    model = det.pdf_model("det", c9_table.windows)
    assert abs(predicted(model.efficiency) - seen) < 5 * err
    assert predicted(det.efficiency) - seen > 20 * err  # the acceptance alone over-predicts the edges

"""The event posterior with the form factors: u-scores learned from the joint score, Z's slopes calibrated,
and sets profiled in (delta C9, u) beside the bi-quadratic profiled fit, on sets from prior-drawn worlds.

Three form factors stand in for the 19 (30 flavio calls); the training is small, the checks are loose
where the network's accuracy enters and tight where it must be exact (the normalisation's slopes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import detector, joint, joint_nuisance, likelihood, nuisances, profile
from kernels.errors import ConfigError
from models.estimators import NuisanceEventPosteriorEstimator
from orchestrator.config.run import RunConfig
from orchestrator.evaluate.estimators import evaluation_worlds
from orchestrator.jobs.event_posterior import train_event_posterior, train_nuisance_posterior
from orchestrator.runtime.progress import no_progress

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")

CFG = dict(
    name="tiny-np", seed=4,
    nuisances={"form_factors": "bsz", "prior_scale": 1.0, "worlds": "per_set"},
    scan={"dc9": [-1.0, 0.0], "events_per_point": 1000, "level": "gen"},
    models={"event_classifier": {"head": "score", "hidden": 32, "layers": 2, "events_per_point": 1000,
                                 "train_events": 80_000, "reference_events": 100_000,
                                 "train": {"epochs": 6, "batch_size": 512, "lr": 0.003, "weight_decay": 0.0,
                                           "patience": 6}},
            "ml_fit": {"enabled": True}},
    evaluation={"dc9": [-0.5], "sets": 30, "events_per_set": 3000},
)


@pytest.fixture(scope="module")
def trained(ff_tables_cache):
    from orchestrator.jobs.run import _train_config

    torch.set_num_threads(2)
    nt = nuisances.nuisance_table(["C9_bsmumu"], form_factors=FF, spacing=0.25, cache=ff_tables_cache)
    cfg = RunConfig(**CFG)
    tc = _train_config(cfg.models.event_classifier.train, cfg, loss="mse")
    table = nt.at(np.zeros(nt.n_nuisances))
    det = detector.DetectorConfig()
    base, _ = train_event_posterior(cfg, table, det, "gen", tc, lambda adv: None, no_progress)
    net, hist = train_nuisance_posterior(cfg, nt, base, det, "gen", tc, lambda adv: None, no_progress)
    return nt, base, net, hist


def test_the_u_scores_are_learned_from_the_joint_score(trained):
    nt, base, net, hist = trained
    lin = joint.normalisation(joint_nuisance.nuisance_linear_table(nt))
    s = joint.sample_joint(nt.at(np.zeros(3)), (-2.0, 1.0), 20_000, (77, 0))
    exact = joint_nuisance.nuisance_scores(nt, s.truth, s.shifts, lin)
    net.set_normalisation(joint_nuisance.normalisation_slopes(lin, net.d_ref))  # the tables' Z slopes, as in training
    with torch.no_grad():
        model = net(torch.from_numpy(s.events), torch.from_numpy(s.shifts)).numpy()
    net.calibrate(*joint_nuisance.nuisance_reference_sample(nt, 100_000, (5, 5)))
    # gen level: the joint score is the score, so the regression can be exact; R^2 per form factor
    r2 = 1 - ((model - exact) ** 2).mean(0) / exact.var(0)
    assert np.all(r2 > 0.9), r2  # an untrained head (b = 0) has R^2 <= 0


def test_the_calibrated_slopes_of_z_are_the_tables(trained):
    """Z's u-slopes from reference events (the network's own normalisation) match grad_u Gamma / Gamma exactly
    up to the network's error in the mean, which the control variate leaves alone."""
    nt, _, net, _ = trained
    exact = joint_nuisance.normalisation_slopes(joint.normalisation(joint_nuisance.nuisance_linear_table(nt)), net.d_ref)
    got = net.zeta_coef.numpy()
    assert int(net.zeta_state) == 2
    assert np.max(np.abs(got - exact)) < 0.05 * np.max(np.abs(exact))


def test_the_calibration_streams_in_chunks_and_fits_its_control_coefficient(trained):
    """Z's u-slopes from chunks equal those from one array of the same events; the control variate's coefficient
    is fitted (a control equal to β gives its mean exactly, with no error; pure noise is ignored)."""
    nt, _, net, _ = trained
    saved = net.zeta_coef.clone()
    try:
        ref = joint_nuisance.nuisance_reference_sample(nt, 40_000, (5, 6), chunk=1 << 14)
        whole = net.calibrate(ref.events, ref.control, ref.control_mean)
        z_whole = net.zeta_coef.clone()
        parts = list(joint_nuisance.nuisance_reference_chunks(nt, 40_000, (5, 6), chunk=1 << 14))
        assert len(parts) == 3 and np.array_equal(np.concatenate([p.events for p in parts]), ref.events)
        np.testing.assert_allclose(net.calibrate(iter(parts)), whole, rtol=1e-6)
        np.testing.assert_allclose(net.zeta_coef.numpy(), z_whole.numpy(), rtol=1e-9, atol=1e-15)
        with torch.no_grad():
            beta = net.beta(torch.from_numpy(ref.events)).double().numpy()
        known = np.full((3, 3), 0.25)
        err = net.calibrate(ref.events, beta, known)  # a perfect control: its exact mean is the answer
        np.testing.assert_allclose(net.zeta_coef.numpy(), known, rtol=1e-9)
        assert np.all(err < 1e-9 * np.abs(beta).max())
        noise = np.random.default_rng(3).normal(0.0, 10.0, beta.shape)
        err = net.calibrate(ref.events, noise, np.zeros((3, 3)))  # an unrelated control is ignored, not added
        plain = beta.std(0) / np.sqrt(beta.shape[0])
        assert np.all(err <= plain * 1.0001)
        assert np.all(np.abs(net.zeta_coef.numpy() - beta.mean(0)) < 5 * plain + 1e-12)
        with pytest.raises(ConfigError, match="must match"):
            net.calibrate(ref.events, ref.control[:10], ref.control_mean)
    finally:
        net.zeta_coef.copy_(saved)


def test_sets_from_prior_drawn_worlds_are_profiled_like_the_fit(trained):
    nt, _, net, _ = trained
    d, n, m = -0.5, 3000, 30
    sets, _, eff, _ = evaluation_worlds(nt, likelihood.GEN, [d], n, m, 11, "gen", None, 1.0, "per_set")
    est = NuisanceEventPosteriorEstimator(net, 1.0)
    values, errors = est.predict(sets[d])
    ref = profile.fit_sets_profiled(nt, sets[d])
    assert values.shape == errors.shape == (m,) and np.all(np.isfinite(errors))
    # the errors are the profiled ones (the bound with the form factors), not the fixed-theory ones
    assert np.median(errors) == pytest.approx(float(np.median(ref.errors)), rel=0.1)
    assert np.median(errors) == pytest.approx(eff[d], rel=0.15)
    # set by set, close to the exact profiled fit (first order in u, and a small network)
    assert np.median(np.abs(values - np.asarray(ref.values).ravel())) < 0.3 * eff[d]
    assert abs(np.mean(np.abs(values - d) <= errors) - 0.683) < 0.2


def test_the_set_fit_refuses_a_bad_prior_scale(trained):
    _, _, net, _ = trained
    with pytest.raises(ConfigError, match="prior_scale must be > 0"):
        net.fit_sets(np.zeros((1, 10, 4), dtype=np.float32) + 2.0, prior_scale=0.0)

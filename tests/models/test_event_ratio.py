"""The per-event ratio in several coefficients (models.event_ratio): its form, its set fit, its calibration."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from models.event_ratio import EventRatio, fit_sets_learned, ratio_targets


class _Fixed(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float32)

    def forward(self, f):
        return self.w.reshape(1, -1).expand(f.shape[0], -1)


def test_the_coefficients_are_those_of_a_positive_quadratic_form_equal_to_one_at_the_standard_model():
    from kernels.theory import monomials

    rng = np.random.default_rng(0)
    for n in (1, 2, 4):
        w = rng.normal(size=(n + 1, n))
        net = EventRatio(n, features="plain")
        net.net = _Fixed(w)
        a = net.projections(np.zeros((3, 4), dtype=np.float32))  # any events: the stand-in ignores them
        assert a.shape == (3, 1 + n + n * (n + 1) // 2) and np.all(a[:, 0] == 1)
        for c in rng.normal(size=(20, n)) * 3:
            q = (1 + w[0] @ c) ** 2 + sum((w[r] @ c) ** 2 for r in range(1, n + 1))
            assert a[0] @ monomials(c) == pytest.approx(q, rel=1e-5)
        assert a[0] @ monomials(np.zeros(n)) == 1.0


def test_the_set_fit_with_exact_projections_is_the_joint_ml_fit(c9_c10_table_coarse):
    """fit_sets_learned on a stand-in whose per-event coefficients are the theory's is kernels' joint fit."""
    from kernels import likelihood, sampler

    table = c9_c10_table_coarse
    sets = sampler.sample_array(table, [-0.5, 0.3], 6 * 3000, (5,)).T.reshape(6, 3000, 4)
    norm = likelihood.normalisation(table)
    exact = SimpleNamespace(calibrated=True, n=2, z=torch.from_numpy(norm),
                            projections=lambda ev: likelihood.project(table, np.asarray(ev, dtype=np.float64)))
    ours = fit_sets_learned(exact, sets)
    ref = likelihood.fit_sets(table, sets)
    np.testing.assert_allclose(ours.values, ref.values, atol=1e-4)
    np.testing.assert_allclose(ours.covariances, ref.covariances, rtol=1e-3)
    assert ours.valid.all()


def test_targets_calibration_and_refusals():
    assert ratio_targets(np.array([[4.0, 2.0, 1.0, 0.5, 0.0, 8.0]])).tolist() == [[0.5, 0.25, 0.125, 0.0, 2.0]]
    with pytest.raises(ConfigError, match="non-positive Standard-Model density"):
        ratio_targets(np.array([[0.0, 1.0, 1.0]]))
    net = EventRatio(2, features="plain")
    with pytest.raises(ConfigError, match="not calibrated"):
        fit_sets_learned(net, np.zeros((1, 10, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match="at least 1000 reference events"):
        net.calibrate(np.zeros((10, 4), dtype=np.float32))
    rng = np.random.default_rng(1)
    ref = np.stack([rng.uniform(1.1, 6, 4000), rng.uniform(-1, 1, 4000), rng.uniform(-1, 1, 4000),
                    rng.uniform(0, 6.28, 4000)], axis=1).astype(np.float32)
    z = net.calibrate(ref)
    assert net.calibrated and z[0] == 1.0 and z.shape == (6,)
    np.testing.assert_allclose(z, net.projections(ref).mean(axis=0))
    with pytest.raises(ConfigError, match="n_coefficients must be >= 1"):
        EventRatio(0)


def test_the_log_loss_output_is_ln_q_at_the_loss_points_and_its_targets_match_the_theory():
    from kernels.theory import monomials
    from models.event_ratio import log_ratio_targets

    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 2))
    pts = [[-1.0, 0.5], [1.0, -1.0], [0.5, 0.5]]
    net = EventRatio(2, features="plain", loss_points=pts)
    net.net = _Fixed(w)
    out = net(torch.zeros((4, 4))).detach().numpy()
    a = net.projections(np.zeros((4, 4), dtype=np.float32))
    np.testing.assert_allclose(out, np.log(a @ monomials(np.array(pts)).T), rtol=1e-5)
    # the targets of exact coefficients are the model's output when the model is exact
    np.testing.assert_allclose(log_ratio_targets(a, pts), out, rtol=1e-5)
    assert EventRatio(**net.hparams).hparams["loss_points"] == pts


def test_a_control_variate_calibrates_z_to_its_exact_mean_with_the_networks_error_alone():
    """Z = control_mean + mean(a - control): exact when the network is (its coefficients are the control), and the
    plain mean when control_mean is the control's own sample mean; shapes are checked in one line."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1, (2000, 4)).astype(np.float32)
    net = EventRatio(2, features="plain")
    net.net = _Fixed(rng.normal(size=(3, 2)))
    a = net.projections(ref)[:, 1:]
    exact_mean = rng.normal(size=5)
    np.testing.assert_allclose(net.calibrate(ref, control=a, control_mean=exact_mean)[1:], exact_mean, atol=1e-12)
    noisy = a + rng.normal(size=a.shape)
    np.testing.assert_allclose(net.calibrate(ref, control=noisy, control_mean=noisy.mean(axis=0)),
                               net.projections(ref).mean(axis=0), atol=1e-12)
    with pytest.raises(ConfigError, match="give both control and control_mean"):
        net.calibrate(ref, control=a)
    with pytest.raises(ConfigError, match=r"control must have shape \(2000, 5\)"):
        net.calibrate(ref, control=a[:, :4], control_mean=exact_mean[:4])

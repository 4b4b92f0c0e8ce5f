"""The learned summary's own fit (models.summary_fit): the emulator's regression and Gauss-Newton on it reach the
summary's bound on a toy, and the ResNet refines rho's estimates only where asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from kernels.theory import monomials
from models.resnet_joint import JointScoreResNet3d
from models.summary_fit import emulator_model, fit_emulator, gauss_newton

RATE = np.array([1.0, 0.3, -0.2, 0.2, 0.05, 0.1])  # Gamma(c) = m(c) . RATE, positive over the box
A = np.random.default_rng(5).normal(size=(6, 3))  # the mean's numerator; B its 1/N part
B = np.random.default_rng(6).normal(size=(6, 3)) * 200
SIGMA = np.array([[1.0, 0.3, 0.1], [0.3, 0.8, -0.2], [0.1, -0.2, 0.5]])
BOX = np.array([[-1.0, 1.0], [-1.0, 1.0]])


def _summaries(c, n, rng):
    m = monomials(c)
    mu = (m @ A + (m @ B) / n[:, None]) / (m @ RATE)[:, None]
    return mu + rng.multivariate_normal(np.zeros(3), SIGMA, len(c)) / np.sqrt(n)[:, None]


def test_the_emulators_fit_reaches_the_summarys_bound_and_covers():
    rng = np.random.default_rng(0)
    c = rng.uniform(-1, 1, (40000, 2))
    n = np.exp(rng.uniform(np.log(2000), np.log(70000), 40000))
    emu = fit_emulator(_summaries(c, n, rng), c, n, RATE, ridge=0.0)
    truth, N = np.array([0.3, -0.4]), 24000
    mu, J, sigma = emulator_model(emu, truth[None], N)
    np.testing.assert_allclose(sigma[0], SIGMA, atol=0.03)
    m = monomials(truth)
    np.testing.assert_allclose(mu[0], (m @ A + m @ B / N) / (m @ RATE), atol=2e-3)
    s = _summaries(np.tile(truth, (400, 1)), np.full(400, float(N)), rng)
    values, covs, ok = gauss_newton(lambda x: emulator_model(emu, x, N), s, N, np.zeros((400, 2)), BOX)
    assert ok.all()
    bound = np.linalg.inv(N * J[0] @ np.linalg.solve(SIGMA, J[0].T))  # the summary's exact Fisher bound
    spread = np.cov(values.T)
    np.testing.assert_allclose(np.sqrt(np.diag(spread) / np.diag(bound)), 1.0, atol=0.12)
    assert np.all(np.abs(values.mean(0) - truth) < 0.2 * np.sqrt(np.diag(bound)))
    r = values - truth
    d2 = np.einsum("ni,nij,nj->n", r, np.linalg.inv(covs), r)
    assert 0.61 < np.mean(d2 < 2.2789) < 0.75
    # without its 1/N term the emulator's mean is off by B / N: the fit is biased at small N
    emu0 = fit_emulator(_summaries(c, n, rng), c, n, RATE, ridge=0.0)
    emu0["mean"] = emu0["mean"].copy()
    emu0["mean"][6:] = 0.0
    v0, _, _ = gauss_newton(lambda x: emulator_model(emu0, x, 2000), _summaries(np.tile(truth, (400, 1)),
                            np.full(400, 2000.0), rng), 2000, np.zeros((400, 2)), BOX)
    v1, _, _ = gauss_newton(lambda x: emulator_model(emu, x, 2000), _summaries(np.tile(truth, (400, 1)),
                            np.full(400, 2000.0), rng), 2000, np.zeros((400, 2)), BOX)
    assert np.abs(v0.mean(0) - truth).max() > 3 * np.abs(v1.mean(0) - truth).max()


def test_fit_emulator_refuses_mismatched_input():
    c = np.zeros((10, 2))
    with pytest.raises(ConfigError, match="must match"):
        fit_emulator(np.zeros((10, 3)), c, np.ones(9), RATE)
    with pytest.raises(ConfigError, match="needs events"):
        fit_emulator(np.zeros((10, 3)), c, np.zeros(10), RATE)
    with pytest.raises(ConfigError, match="not positive"):
        fit_emulator(np.zeros((10, 3)), c, np.ones(10), -RATE)


def test_the_resnet_refines_from_its_threshold_and_keeps_the_emulator_in_its_state():
    torch.manual_seed(0)
    net = JointScoreResNet3d(2, [[0.0, 0.0], [0.5, -0.5]], bins=4, width=4, blocks=1, rho_hidden=8).eval()
    rng = np.random.default_rng(1)
    images = np.stack([np.full((2, 4, 4, 4), 3.0, np.float32)] * 6)
    images[:, 1] = rng.poisson(30, (6, 4, 4, 4))
    images[3:, 1] *= 4  # three images of about 1,900 events, three of about 7,700
    assert not net.has_emulator
    plain = net.estimate(images)
    with torch.no_grad():
        raw = net.summary(torch.from_numpy(images)).numpy()
    # an emulator whose mean is flat in c except a linear slope: the fit moves rho's estimates
    k = raw.shape[1] - 1
    emu = {"rate": np.array([1.0, 0, 0, 0, 0, 0]), "mean": np.zeros((12, k)), "cov": np.zeros((12, k, k)),
           "ridge": 0.0}
    emu["mean"][0] = raw[:, :-1].mean(0)
    emu["mean"][1, 0], emu["mean"][2, 1] = 1.0, 1.0
    emu["cov"][0] = np.eye(k)
    net.set_emulator(emu, [[-3.0, 3.0], [-3.0, 3.0]], min_events=5000)
    assert net.has_emulator
    values, covs = net.estimate(images)
    np.testing.assert_array_equal(values[:3], plain[0][:3])  # below the threshold: rho's
    expected = raw[3:, :2] - emu["mean"][0, :2]  # the linear model's exact solution in its first two components
    np.testing.assert_allclose(values[3:], expected, atol=1e-6)
    np.testing.assert_array_equal(net.estimate(images, refine=False)[0], plain[0])
    again = JointScoreResNet3d(**net.hparams)
    again.load_state_dict(net.state_dict())
    np.testing.assert_allclose(again.eval().estimate(images)[0], values)


def test_the_fit_in_shifts_and_nuisances_reaches_the_profiled_bound_under_the_prior():
    """A summary of means (x1, x2) with x1 ~ N(d + u, 1), x2 ~ N(u, 1), u ~ N(0, tau^2) shared by the set: its
    moments in (d, u) as nuisance_moments_model reads them. With the prior, the fit's error of d is the known
    1/N + tau^2 (1/N) / (tau^2 + 1/N), its spread matches and it covers; without it, the flat profile's 2/N."""
    from models.summary_fit import nuisance_moments_model

    P, Q, N, tau = 3, 3, 400, 0.1
    m0 = np.zeros(P * Q)
    m0[0] = 1.0
    m1 = np.zeros((P * Q, 2))
    m1[1 * Q + 0, 0] = m1[0 * Q + 1, 0] = m1[0 * Q + 1, 1] = 1.0  # E x1 = d + u, E x2 = u
    m2 = np.zeros((P, 2, 2))
    m2[0] = np.eye(2)
    m2[2, 0, 0] = 1.0  # E[x1^2] = 1 + d^2 at u = 0
    model = nuisance_moments_model((m0, m1, m2), 1, 1)
    rng = np.random.default_rng(7)
    d, u = 0.3, rng.normal(0.0, tau, 2000)
    s = np.stack([d + u, u], axis=1) + rng.normal(size=(2000, 2)) / np.sqrt(N)
    box = np.array([[-2.0, 2.0], [-6 * tau, 6 * tau]])
    est, cov, ok = gauss_newton(model, s, N, np.zeros((2000, 2)), box, prior=np.diag([0.0, 1 / tau**2]))
    bound = np.sqrt(1 / N + tau**2 / N / (tau**2 + 1 / N))
    assert ok.all()
    np.testing.assert_allclose(np.sqrt(cov[:, 0, 0]), bound, rtol=1e-6)
    assert abs(est[:, 0].std() / bound - 1) < 0.06 and abs(est[:, 0].mean() - d) < 0.1 * bound
    assert abs(np.mean(np.abs(est[:, 0] - d) < bound) - 0.683) < 0.04
    flat, flat_cov, _ = gauss_newton(model, s, N, np.zeros((2000, 2)), np.array([[-2.0, 2.0], [-2.0, 2.0]]))
    np.testing.assert_allclose(np.sqrt(flat_cov[:, 0, 0]), np.sqrt(2 / N), rtol=1e-6)
    with pytest.raises(ConfigError, match="prior's precision must be 2 x 2"):
        gauss_newton(model, s, N, np.zeros((2000, 2)), box, prior=np.eye(3))
    with pytest.raises(ConfigError, match="moments must be"):
        nuisance_moments_model((m0, m1, m2[:2]), 1, 1)

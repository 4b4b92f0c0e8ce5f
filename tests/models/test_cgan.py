"""The conditional GAN on a linear-Gaussian toy with a known posterior: moments, coverage, a broken sampler, seeds.

Toy: ``x = A theta + b + eps``, K = 8, P = 2, theta on a 40x40 grid over
[-2, 0] x [-1, 1] (flat prior). Posterior sigmas (0.095, 0.162), correlation
-0.57: truths in [-1.5, -0.5] x [-0.5, 0.5] are >= 3.1 sigma from every edge,
where the posterior is N(GLS estimate, (A^T Sigma^-1 A)^-1).
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import models.cgan as cg
from kernels.errors import ConfigError
from models.cgan import CGANConfig, CGANEstimator, ConditionalGAN, coverage, in_region, sample, train_cgan

CENTRE = np.array([-1.0, 0.0])
LEVEL = 0.68
#: 200 pseudo-experiments: binomial sd sqrt(0.68 * 0.32 / 200) = 0.033, so +-0.08 is 2.4 sd of pure sampling
#: noise, with a little room for the GAN's own error; a sampler 2x too narrow covers ~0.25, 2x too wide ~0.99.
TOLERANCE = 0.08

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gan(toy, grid):
    model, hist = train_cgan(grid, toy.predictions(grid), toy.cov, CGANConfig(), seed=0)
    return model


@pytest.fixture(scope="module")
def pseudo_experiments(toy):
    rng = np.random.default_rng(1)
    truths = rng.uniform([-1.5, -0.5], [-0.5, 0.5], (200, 2))
    return truths, toy.simulate(truths, rng)


def exact_sampler(toy):
    """The analytic posterior N(GLS(x), C) as a sampler (observations (B, K), n, seed) -> (B, n, P)."""
    C = toy.posterior_cov()

    def draw(obs, n, seed):
        rng = np.random.default_rng(seed)
        mean = toy.posterior_mean(obs)
        return mean[:, None, :] + rng.multivariate_normal(np.zeros(2), C, (len(mean), n))

    return draw


def test_samples_match_the_analytic_posterior_at_the_centre(gan, toy):
    C = toy.posterior_cov()
    sigma = np.sqrt(np.diag(C))
    s = sample(gan, toy.predictions(CENTRE[None])[0], 4000, seed=1)
    mean, S = s.mean(0), np.cov(s.T)
    # 4000 samples: Monte Carlo errors of 1.6% sigma on the mean and 1.1% on the widths, so the tolerances
    # measure the GAN. Across 8 training seeds (this config) the worst were 0.16 sigma on the mean, 18% on a
    # width and 0.13 on the correlation; the bounds leave that room and still reject a 2x-shrunk posterior.
    assert np.all(np.abs(mean - CENTRE) < 0.25 * sigma), (mean - CENTRE) / sigma
    ratio = np.sqrt(np.diag(S)) / sigma
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
    corr, true_corr = S[0, 1] / np.sqrt(S[0, 0] * S[1, 1]), C[0, 1] / np.sqrt(C[0, 0] * C[1, 1])
    assert abs(corr - true_corr) < 0.15, (corr, true_corr)
    # every direction at once: the eigenvalues of C^-1/2 S C^-1/2 are the variance ratios of the principal axes
    Li = np.linalg.inv(np.linalg.cholesky(C))
    eig = np.linalg.eigvalsh(Li @ S @ Li.T)
    assert np.all((eig > 0.8**2) & (eig < 1.25**2)), eig


def test_coverage_of_the_68_percent_region(gan, pseudo_experiments):
    truths, x = pseudo_experiments
    for method in ("ellipse", "kde"):
        c = coverage(gan, truths, x, LEVEL, n=1000 if method == "ellipse" else 400, seed=2, method=method)
        assert abs(c - LEVEL) < TOLERANCE, (method, c)


def test_the_exact_posterior_passes_the_same_check(toy, pseudo_experiments):
    truths, x = pseudo_experiments
    assert abs(coverage(exact_sampler(toy), truths, x, LEVEL, n=1000, seed=2) - LEVEL) < TOLERANCE


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_broken_sampler_fails_the_same_check(gan, pseudo_experiments, factor):
    truths, x = pseudo_experiments

    def scaled(obs, n, seed):  # the trained sampler, spread around its own mean by `factor`
        s = sample(gan, obs, n, seed)
        m = s.mean(1, keepdims=True)
        return m + factor * (s - m)

    c = coverage(scaled, truths, x, LEVEL, n=1000, seed=2)
    assert abs(c - LEVEL) > TOLERANCE, c
    assert (c < LEVEL) if factor < 1 else (c > LEVEL)


@pytest.mark.parametrize("method", ["ellipse", "kde"])
def test_in_region_on_a_standard_normal(method):
    # chi2_2 quantile at 0.68: r^2 = -2 ln 0.32 = 2.28, r = 1.51
    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 2000, 2))
    points = np.array([[1.2, 0.0], [0.0, -1.3], [1.75, 0.0], [0.0, 1.85]])
    assert in_region(s, points, LEVEL, method).tolist() == [True, True, False, False]


def test_same_seed_gives_the_same_weights_and_samples(toy, grid):
    cfg = CGANConfig(epochs=2, hidden=16)
    a, ha = train_cgan(grid, toy.predictions(grid), toy.cov, cfg, seed=3)
    b, hb = train_cgan(grid, toy.predictions(grid), toy.cov, cfg, seed=3)
    c, _ = train_cgan(grid, toy.predictions(grid), toy.cov, cfg, seed=4)
    assert ha["critic_loss"] == hb["critic_loss"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.generator[0].weight, c.generator[0].weight)
    x = toy.predictions(grid[:3])
    np.testing.assert_array_equal(sample(a, x, 50, seed=7), sample(b, x, 50, seed=7))
    assert not np.array_equal(sample(a, x, 50, seed=7), sample(a, x, 50, seed=8))


def test_shapes_estimator_and_state_dict(gan, toy):
    x = toy.predictions(np.array([CENTRE, [-0.6, 0.3]]))
    assert sample(gan, x[0], 7).shape == (7, 2) and sample(gan, x, 7).shape == (2, 7, 2)
    est = CGANEstimator(gan, n=2000)
    mean, std = est.predict(x)
    assert mean.shape == std.shape == (2, 2) and est.name == "cgan"
    s = sample(gan, x, 2000, seed=0)
    np.testing.assert_allclose(mean, s.mean(1))
    np.testing.assert_allclose(std, s.std(1, ddof=1))
    state = gan.state_dict()
    assert {"x_mean", "x_std", "theta_mean", "theta_std", "lin_weight", "lin_bias", "res_chol"} <= set(state)
    clone = ConditionalGAN(**gan.hparams)
    clone.load_state_dict(state)
    np.testing.assert_array_equal(sample(clone, x, 20, seed=1), sample(gan, x, 20, seed=1))


def test_bad_inputs_are_refused_in_one_line(gan, toy, grid):
    with pytest.raises(ConfigError, match="latent"):
        ConditionalGAN(n_obs=8, n_params=3, latent=2)
    with pytest.raises(ConfigError, match="n_critic"):
        CGANConfig(n_critic=0)
    with pytest.raises(ConfigError, match="observations"):
        sample(gan, np.zeros(5), 10)
    with pytest.raises(ConfigError, match="method"):
        in_region(np.zeros((1, 10, 2)), np.zeros((1, 2)), method="hist")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trains_and_samples_on_cuda(toy, grid):
    model, hist = train_cgan(grid, toy.predictions(grid), toy.cov, CGANConfig(epochs=2, device="cuda"))
    assert hist["device"].startswith("cuda") and model.x_mean.is_cuda
    s = sample(model, toy.predictions(grid[:2]), 10)
    assert s.shape == (2, 10, 2) and np.all(np.isfinite(s))


def test_docstring_examples_run():
    result = doctest.testmod(cg, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

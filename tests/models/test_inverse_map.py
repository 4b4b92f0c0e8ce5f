"""The inverse map on a linear-Gaussian toy with a known posterior: accuracy, calibrated widths, why noise matters.

Toy: ``x = A theta + b + eps`` with K = 8, P = 2, ``eps ~ N(0, Sigma)``, theta on a
40x40 grid over [-2, 0] x [-1, 1] (flat prior). The posterior sigmas are
(0.095, 0.162) with correlation -0.57, so truths in [-1.5, -0.5] x [-0.5, 0.5]
are at least 3.1 sigma from every edge: there the posterior is Gaussian with
covariance ``(A^T Sigma^-1 A)^-1``, its mean on Asimov data is the truth, and
its marginal widths are ``sqrt(diag)``.
"""

from __future__ import annotations

import doctest
import time

import numpy as np
import pytest
import torch

import models.inverse_map as im
from kernels.errors import ConfigError
from models.inverse_map import (
    InverseMap,
    InverseMapConfig,
    InverseMapEstimator,
    LinearGaussianToy,
    LinearNuisances,
    predict,
    train_inverse_map,
)

TRUTHS = np.array([[-1.0, 0.0], [-1.4, -0.4], [-0.6, 0.4], [-1.3, 0.45], [-0.7, -0.35]])
INNER_LO, INNER_HI = np.array([-1.5, -0.5]), np.array([-0.5, 0.5])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sigma(toy):
    return np.sqrt(np.diag(toy.posterior_cov()))


@pytest.fixture(scope="module")
def noisy_model(toy, grid):
    return train_inverse_map(grid, toy.predictions(grid), toy.cov, InverseMapConfig(), seed=0)[0]


@pytest.fixture(scope="module")
def noise_free_model(toy, grid):
    """The seed study's recipe: trained on the noise-free predictions only."""
    return train_inverse_map(grid, toy.predictions(grid), toy.cov, InverseMapConfig(noise_scale=0.0), seed=0)[0]


@pytest.fixture(scope="module")
def pseudo_experiments(toy):
    """200 noisy observations of truths uniform in the interior of the box."""
    rng = np.random.default_rng(1)
    truths = rng.uniform(INNER_LO, INNER_HI, (200, 2))
    return truths, toy.simulate(truths, rng)


def test_toy_posterior_is_narrow_against_the_box(sigma):
    # the premise of the tolerances below: interior truths are >= 3 sigma from the box edges
    assert np.all(0.5 / sigma >= 3.0)


def test_asimov_estimates_recover_the_truth(noisy_model, toy, sigma):
    est, _ = predict(noisy_model, toy.predictions(TRUTHS))
    # The exact posterior mean of Asimov data is the truth; what is left is the
    # network's regression error. 0.3 sigma (0.03-0.05, under 2.5% of the box) is
    # tight enough that a map biased by its training (e.g. pulled to the prior
    # mean) fails, and loose enough for a 64-wide MLP (measured over 4 training
    # seeds: at most 0.16 sigma).
    assert np.all(np.abs(est - TRUTHS) < 0.3 * sigma), (est - TRUTHS) / sigma


def test_widths_match_the_analytic_posterior(noisy_model, toy, sigma):
    _, err = predict(noisy_model, toy.predictions(TRUTHS))
    ratio = err / sigma
    assert np.all((ratio > 0.7) & (ratio < 1.3)), ratio


def _rms(est, truths):
    return np.sqrt(((est - truths) ** 2).mean(0))


def test_noisy_data_are_fitted_as_well_as_by_the_exact_posterior(noisy_model, toy, sigma, pseudo_experiments):
    truths, x = pseudo_experiments
    est, err = predict(noisy_model, x)
    # the reference: the exact posterior (GLS mean, analytic sigma) on the same 200 pseudo-experiments, whose
    # own pull width differs from 1 by chance (+-0.05)
    exact = toy.posterior_mean(x)
    exact_pull_sd = ((exact - truths) / sigma).std(0)
    assert np.all(np.abs(((est - truths) / err).std(0) - exact_pull_sd) < 0.1)
    assert np.all(_rms(est, truths) < 1.05 * _rms(exact, truths)), _rms(est, truths) / _rms(exact, truths)


def test_training_without_noise_is_over_confident_and_generalises_worse(noise_free_model, noisy_model, sigma,
                                                                        pseudo_experiments, toy):
    # Asimov widths collapse: the noise-free target is a deterministic function of x
    _, err = predict(noise_free_model, toy.predictions(TRUTHS))
    assert np.median(err / sigma) < 0.4, err / sigma
    # on noisy data the claimed widths are far too small and the estimates far worse than the noise-trained map's
    truths, x = pseudo_experiments
    est0, err0 = predict(noise_free_model, x)
    est1, _ = predict(noisy_model, x)
    assert np.all(np.median(err0 / sigma, axis=0) < 0.4)
    assert np.all(((est0 - truths) / err0).std(0) > 3.0)
    assert np.all(_rms(est0, truths) > 1.5 * _rms(est1, truths)), (_rms(est0, truths), _rms(est1, truths))


def test_a_callable_predictor_trains_on_continuous_parameters(toy, grid, sigma):
    calls = []

    def f(theta):
        calls.append(theta.shape[0])
        return torch.as_tensor(toy.predictions(theta.double().numpy()))

    model, _ = train_inverse_map(grid, f, toy.cov, InverseMapConfig(epochs=30), seed=0)
    # the grid (for the scales), a validation draw, then noise_draws * M fresh continuous draws per epoch
    assert calls == [len(grid)] * 2 + [4 * len(grid)] * 30
    est, err = predict(model, toy.predictions(TRUTHS))
    assert np.all(np.abs(est - TRUTHS) < 0.3 * sigma)
    assert np.all(np.abs(err / sigma - 1) < 0.3)


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(toy, grid):
    cfg = InverseMapConfig(epochs=2, hidden=16)
    a, ha = train_inverse_map(grid, toy.predictions(grid), toy.cov, cfg, seed=3)
    b, hb = train_inverse_map(grid, toy.predictions(grid), toy.cov, cfg, seed=3)
    c, _ = train_inverse_map(grid, toy.predictions(grid), toy.cov, cfg, seed=4)
    assert ha["train_loss"] == hb["train_loss"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_state_dict_carries_the_standardisation(noisy_model, toy):
    state = noisy_model.state_dict()
    assert {"x_mean", "x_std", "theta_mean", "theta_std"} <= set(state)
    clone = InverseMap(**noisy_model.hparams)
    clone.load_state_dict(state)
    x = toy.predictions(TRUTHS)
    for u, v in zip(predict(clone, x), predict(noisy_model, x), strict=True):
        np.testing.assert_array_equal(u, v)


def test_estimator_answers_predict_like_the_event_estimators(noisy_model, toy):
    from models.estimators import Estimator

    est = InverseMapEstimator(noisy_model)
    assert isinstance(est, Estimator) and est.name == "inverse_map"
    values, errors = est.predict(toy.predictions(TRUTHS))
    assert values.shape == errors.shape == (5, 2) and values.dtype == np.float64
    one, one_err = est.predict(toy.predictions(TRUTHS)[0])
    assert one.shape == (2,) and np.allclose(one, values[0], atol=1e-6) and np.allclose(one_err, errors[0])
    assert noisy_model.training is False


def test_bad_inputs_are_refused_in_one_line(toy, grid, noisy_model):
    with pytest.raises(ConfigError, match="positive definite"):
        train_inverse_map(grid, toy.predictions(grid), -toy.cov, InverseMapConfig(epochs=1))
    with pytest.raises(ConfigError, match="observables"):
        train_inverse_map(grid, toy.predictions(grid), np.eye(3), InverseMapConfig(epochs=1))
    with pytest.raises(ConfigError, match="predictions"):
        train_inverse_map(grid, toy.predictions(grid)[:-1], toy.cov, InverseMapConfig(epochs=1))
    with pytest.raises(ConfigError, match="observations"):
        predict(noisy_model, np.zeros((3, 7)))
    with pytest.raises(ConfigError, match="epochs"):
        InverseMapConfig(epochs=0)


def test_default_config_trains_the_seed_problem_size_quickly():
    # 50x50 (C9, C10) grid x K = 37 observables: the orchestrator's default
    toy = LinearGaussianToy.random(n_obs=37, seed=5, noise=0.2)
    grid = toy.grid(50)
    t0 = time.perf_counter()
    model, hist = train_inverse_map(grid, toy.predictions(grid), toy.cov, seed=0)
    assert time.perf_counter() - t0 < 60
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    est, err = predict(model, toy.predictions(np.array([[-1.0, 0.0]])))
    sigma = np.sqrt(np.diag(toy.posterior_cov()))
    assert np.all(np.abs(est[0] - [-1.0, 0.0]) < 0.3 * sigma) and np.all(np.abs(err[0] / sigma - 1) < 0.3)


# --- nuisances: x = A theta + b + H a + eps, a ~ N(0, diag(sigma^2)) -------------------------------------------
#
# K = 8, P = 2, m = 2 nuisances whose columns are close to A's (H = A + 0.5 N(0, 1) / sqrt 2, sigma = 0.08), so
# that they are nearly degenerate with theta: marginalising them widens theta's posterior 1.64x and 1.41x, to
# (0.078, 0.115) (truths >= 4.7 sigma from the box edges), and the data narrow the nuisances to 0.85 and 0.75 of
# their prior. The exact posterior of (theta, a): precision G^T Sigma^-1 G + diag(0, 0, sigma^-2), G = [A H].


@pytest.fixture(scope="module")
def nuisance_toy():
    toy = LinearGaussianToy.random(n_obs=8, seed=0, noise=0.1)
    design = toy.A + 0.5 * np.random.default_rng(2).normal(0.0, 1.0, (8, 2)) / np.sqrt(2)
    nuis = LinearNuisances(design, np.full(2, 0.08))
    G = np.hstack([toy.A, design])
    V = np.linalg.inv(G.T @ np.linalg.solve(toy.cov, G) + np.diag([0.0, 0.0, *nuis.sigma**-2.0]))

    def exact(x):  # the posterior mean (n, 4) of noisy or Asimov data (n, K), away from the box edges
        return (np.atleast_2d(x) - toy.b) @ np.linalg.solve(toy.cov, G) @ V

    return toy, nuis, V, exact


@pytest.fixture(scope="module")
def nuisance_model(nuisance_toy):
    toy, nuis, _, _ = nuisance_toy
    grid = toy.grid(40)
    return train_inverse_map(grid, toy.predictions(grid), toy.cov, InverseMapConfig(), seed=0, nuisances=nuis)[0]


def test_nuisances_widen_the_posterior_of_theta_as_marginalising_them_should(nuisance_toy, nuisance_model):
    toy, nuis, V, _ = nuisance_toy
    sigma = np.sqrt(np.diag(V))[:2]
    assert np.all(sigma > 1.35 * np.sqrt(np.diag(toy.posterior_cov())))  # the premise: they matter
    est, err = predict(nuisance_model, toy.predictions(TRUTHS))  # Asimov data at a = 0
    assert est.shape == err.shape == (len(TRUTHS), 4)
    assert np.all(np.abs(est[:, :2] - TRUTHS) < 0.3 * sigma), (est[:, :2] - TRUTHS) / sigma
    # the marginal widths, not the no-nuisance ones (a map that ignored them would be at 1 / 1.4 or below; over
    # training seeds 0-2 the widths are within 0.05)
    assert np.all(np.abs(err[:, :2] / sigma - 1) < 0.15), err[:, :2] / sigma


def test_nuisance_estimates_follow_their_exact_posterior(nuisance_toy, nuisance_model):
    toy, nuis, V, exact = nuisance_toy
    rng = np.random.default_rng(11)
    a = rng.normal(0.0, 1.0, (len(TRUTHS), 2)) * nuis.sigma
    x = toy.predictions(TRUTHS) + a @ nuis.design.T  # Asimov data with the nuisances shifted from 0
    est, err = predict(nuisance_model, x)
    sd = np.sqrt(np.diag(V))
    # against the exact posterior means (theta and a; both shrink towards the nuisance prior) and widths (over
    # training seeds 0-2: means within 0.23 sd, widths within 0.06)
    assert np.all(np.abs(est - exact(x)) < 0.3 * sd), (est - exact(x)) / sd
    assert np.all(np.abs(err / sd - 1) < 0.15), err / sd


def test_bad_nuisances_are_refused_in_one_line(toy, grid):
    with pytest.raises(ConfigError, match="prior width positive"):
        LinearNuisances(np.ones((8, 2)), np.array([0.1, 0.0]))
    with pytest.raises(ConfigError, match="design must be"):
        LinearNuisances(np.ones((8, 2)), np.array([0.1]))
    with pytest.raises(ConfigError, match="the design has 7 rows but there are 8 observables"):
        train_inverse_map(grid, toy.predictions(grid), toy.cov, InverseMapConfig(epochs=1),
                          nuisances=LinearNuisances(np.ones((7, 1)), np.array([0.1])))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trains_and_predicts_on_cuda(toy, grid):
    model, hist = train_inverse_map(grid, toy.predictions(grid), toy.cov, InverseMapConfig(epochs=2, device="cuda"))
    assert hist["device"].startswith("cuda") and model.x_mean.is_cuda
    est, err = predict(model, toy.predictions(TRUTHS))
    assert np.all(np.isfinite(est)) and np.all(err > 0)


def test_docstring_examples_run():
    result = doctest.testmod(im, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

"""The event-by-event classifier: set posterior = product of event posteriors, moments off the grid, it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import sampler
from kernels.errors import ConfigError
from models.data import EventDataset
from models.estimators import EventPosteriorEstimator
from models.event_classifier import EventClassifier, grid_index, posterior_moments, set_log_posterior
from models.training import TrainConfig, seed_everything, train


def _unbalanced_classifier() -> EventClassifier:
    torch.manual_seed(0)
    net = EventClassifier([-1.0, 0.0, 0.5, 2.0], hidden=8, layers=2).eval()
    net.set_prior(np.repeat([0, 1, 2, 3], [10, 30, 20, 40]))  # prior 0.1, 0.3, 0.2, 0.4
    return net


def test_prior_is_the_class_frequencies_of_the_training_events():
    net = _unbalanced_classifier()
    assert torch.allclose(net.log_prior.exp(), torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=torch.float64))


def test_set_posterior_is_the_product_of_event_posteriors_over_the_prior(physical_sets):
    net = _unbalanced_classifier()
    sets = torch.from_numpy(physical_sets(3, 6, seed=1))
    with torch.no_grad():
        per_event = torch.softmax(net(sets).double(), dim=-1).numpy()  # (M, N, K)
    prior = net.log_prior.exp().numpy()
    M, N, K = per_event.shape
    brute = np.empty((M, K))
    for m in range(M):  # explicit loops: prod_e p(d_k | x_e) / pi_k^(N - 1), normalised
        for k in range(K):
            p = 1.0
            for e in range(N):
                p *= per_event[m, e, k]
            brute[m, k] = p / prior[k] ** (N - 1)
        brute[m] /= brute[m].sum()
    assert np.allclose(net.set_posterior(sets).exp().numpy(), brute, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        lp = torch.log_softmax(net(sets).double(), dim=-1)
    assert np.allclose(set_log_posterior(lp, net.log_prior).exp().numpy(), brute, rtol=1e-10, atol=1e-14)


def test_masked_events_do_not_count(physical_sets):
    net = _unbalanced_classifier()
    sets = torch.from_numpy(physical_sets(2, 8, seed=2))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    assert torch.allclose(net.set_log_likelihood(sets, mask), net.set_log_likelihood(sets[:, :5]))
    assert torch.allclose(net.set_posterior(sets, mask), net.set_posterior(sets[:, :5]))


def test_event_chunks_give_the_same_log_likelihood(physical_sets):
    net = _unbalanced_classifier()
    sets = torch.from_numpy(physical_sets(2, 50, seed=3))
    assert torch.allclose(net.set_log_likelihood(sets, event_chunk=7), net.set_log_likelihood(sets))


@pytest.mark.parametrize("method", ["spline", "parabola"])
def test_moments_of_a_gaussian_likelihood_off_the_grid(method):
    grid = np.array([-2.0, -1.6, -1.0, -0.7, -0.2, 0.0, 0.4, 1.1])  # uneven spacing
    truth = np.array([-1.33, 0.07, 0.61])
    for width in (0.02, 0.1):
        ell = -0.5 * ((grid[None] - truth[:, None]) / width) ** 2
        mean, std = posterior_moments(grid, ell, method=method)
        assert mean == pytest.approx(truth, abs=1e-6)
        assert std == pytest.approx(width, rel=1e-4)


def test_grid_moments_snap_to_the_grid_for_a_narrow_likelihood():
    grid = np.linspace(-2, 1, 13)
    ell = -0.5 * ((grid - 0.33) / 0.02) ** 2
    mean, std = posterior_moments(grid, ell[None], method="grid")
    assert mean[0] == pytest.approx(0.25) and std[0] < 1e-6


def test_a_likelihood_beyond_the_grid_is_truncated_at_its_end():
    grid = np.linspace(-2, 1, 13)
    ell = -0.5 * ((grid - 1.0) / 0.1) ** 2  # peak at the last grid value: half a Gaussian inside
    mean, _ = posterior_moments(grid, ell[None])
    assert mean[0] == pytest.approx(1.0 - 0.1 * np.sqrt(2 / np.pi), abs=1e-4)


def test_posterior_moments_refuses_bad_input():
    with pytest.raises(ConfigError, match="method"):
        posterior_moments([0.0, 1.0], [[0.0, 0.0]], method="median")
    with pytest.raises(ConfigError, match="shape"):
        posterior_moments([0.0, 1.0, 2.0], [[0.0, 0.0]])
    with pytest.raises(ConfigError, match="increasing"):
        posterior_moments([0.0, 0.0], [[0.0, 0.0]])


def test_grid_index_maps_labels_and_refuses_values_off_the_grid():
    assert grid_index([-2.0, -1.0, 0.0], [0.0, -2.0, -1.0, -1.0]).tolist() == [2, 0, 1, 1]
    with pytest.raises(ConfigError, match="not on the training grid"):
        grid_index([-2.0, -1.0, 0.0], [-0.5])


def test_prior_refuses_a_grid_value_without_training_events():
    net = EventClassifier([0.0, 1.0, 2.0])
    with pytest.raises(ConfigError, match="no training events"):
        net.set_prior([0, 0, 2])


def test_classifier_learns_gaussian_events_and_its_posterior_tracks_off_grid_truths(toy_events):
    rng = np.random.default_rng(0)
    grid = [-1.0, 0.0, 1.0]
    train_set = EventDataset.from_pools([toy_events(d, 6000, rng) for d in grid], [0, 1, 2])
    val_set = EventDataset.from_pools([toy_events(d, 1500, rng) for d in grid], [0, 1, 2])
    seed_everything(0)
    # Gaussian events: p(x|d) is not quadratic in d, so this toy needs the free (grid) head.
    net = EventClassifier(grid, hidden=32, layers=2, head="grid").fit_features(train_set.tensors[0].numpy()).set_prior(train_set.classes)
    hist = train(net, train_set, val_set,
                 TrainConfig(lr=3e-3, batch_size=256, epochs=4, loss="cross_entropy", patience=0))
    assert hist["val_loss"][hist["best_epoch"]] < hist["val_loss"][0] < np.log(3)

    N, M = 100, 20
    truths = np.array([-0.5, 0.0, 0.3])
    sets = np.stack([toy_events(t, M * N, rng).reshape(M, N, 4) for t in truths]).reshape(-1, N, 4)
    mean, width = EventPosteriorEstimator(net).predict(sets)
    assert mean.shape == width.shape == (3 * M,)
    # The exact posterior of a Gaussian mean: centred on the set mean, width 1/sqrt(N) = 0.1.
    set_means = sets[..., 0].mean(axis=1)
    assert np.corrcoef(mean, set_means)[0, 1] > 0.95
    assert np.all(np.abs(mean.reshape(3, M).mean(axis=1) - truths) < 0.08)
    assert np.median(width) == pytest.approx(0.1, rel=0.25)


def test_classifier_on_generated_events_orders_off_grid_truths(c9_table):
    grid = [-2.0, -1.0, 0.0]
    pools = [sampler.sample_array(c9_table, [d], 30_000, (1, i)).T for i, d in enumerate(grid)]
    vals = [sampler.sample_array(c9_table, [d], 6_000, (2, i)).T for i, d in enumerate(grid)]
    train_set, val_set = EventDataset.from_pools(pools, [0, 1, 2]), EventDataset.from_pools(vals, [0, 1, 2])
    seed_everything(0)
    net = EventClassifier(grid, hidden=64, layers=3).fit_features(train_set.tensors[0].numpy()).set_prior(train_set.classes)
    hist = train(net, train_set, val_set,
                 TrainConfig(lr=3e-3, batch_size=1024, epochs=3, loss="cross_entropy", patience=0))
    assert hist["val_loss"][-1] < np.log(3)  # better than the prior: events carry information on dC9

    truths = [-1.5, -1.0, -0.5]  # two of them between the training values
    N, M = 2000, 6
    sets = np.concatenate([sampler.sample_array(c9_table, [d], N * M, (3, i)).T.reshape(M, N, 4)
                           for i, d in enumerate(truths)])
    mean, width = EventPosteriorEstimator(net).predict(sets)
    per_truth = mean.reshape(3, M).mean(axis=1)
    assert per_truth[0] < per_truth[1] < per_truth[2]
    assert np.all(np.abs(per_truth - truths) < 0.25)
    assert np.all((width > 0.02) & (width < 0.4))


def test_quadratic_head_likelihood_is_smooth_and_equals_the_grid_likelihood_at_grid_values():
    torch.manual_seed(0)
    grid = [-2.0, -1.0, 0.0, 1.0]
    net = EventClassifier(grid, hidden=8, layers=1).eval()
    sets = torch.randn(3, 50, 4).abs().clamp(max=1.0)
    on_grid = net.log_likelihood_at(sets, grid)
    via_softmax = net.set_log_likelihood(sets)
    # equal up to a constant per set (the per-event softmax normalisation does not depend on d)
    diff = (on_grid - via_softmax).numpy()
    np.testing.assert_allclose(diff - diff[:, :1], 0.0, atol=1e-4)  # float32 logits vs float64
    between = net.log_likelihood_at(sets, [-1.5, 0.5])
    assert torch.isfinite(between).all()


def test_unknown_head_is_refused():
    with pytest.raises(ConfigError, match="head must be one of"):
        EventClassifier([0.0, 1.0], head="spline")

"""The event-by-event classifier and the score-trained likelihood net: set posteriors, exact normalisation, no truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import joint, likelihood, sampler
from kernels.errors import ConfigError
from models.data import EventDataset
from models.estimators import EventPosteriorEstimator
from models.event_classifier import EventClassifier, grid_index, posterior_moments, set_log_posterior
from models.event_posterior import EventLikelihoodNet, calibrate_quadratic, smooth_moments
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


# --- exact normalisation, score regression on the joint score, the smooth set posterior ---------------


def _random_net(seed: int = 0, **kw) -> EventLikelihoodNet:
    torch.manual_seed(seed)
    net = EventLikelihoodNet(hidden=16, layers=2, **kw)
    with torch.no_grad():  # a far-from-flat ratio, so the calibration has something to do
        net.net[-1].weight.normal_(0, 0.3)
        net.net[-1].bias.copy_(torch.tensor([0.2, 0.3]))
    return net.eval()


def test_after_calibration_the_ratio_averages_to_one_over_an_independent_reference_sample(c9_table):
    net = _random_net()
    ref = sampler.sample_array(c9_table, [0.0], 200_000, (21,)).T
    cal = net.calibrate(ref)
    assert net.z_state.item() == 2 and cal.n_events == 200_000
    other = torch.from_numpy(sampler.sample_array(c9_table, [0.0], 200_000, (22,)).T)
    for d in (-2.5, -1.0, 0.7, 2.0):
        with torch.no_grad():
            r = net.log_ratio(other, d).exp().numpy()
        # E_ref[r(x, d)] = 1 at every d, within the two samples' statistics
        assert abs(r.mean() - 1.0) < 4 * r.std() * np.sqrt(2 / r.size)
    # the uncalibrated net (Z from a wrong table) does not average to 1
    net.set_normalisation([1.0, 0.0, 0.0])
    with torch.no_grad():
        assert abs(net.log_ratio(other, 2.0).exp().mean().item() - 1.0) > 0.05


def test_calibration_is_the_pooled_mean_and_a_control_variate_keeps_its_expectation():
    torch.manual_seed(1)
    x = torch.randn(5000, 2, dtype=torch.float64)
    ref = np.zeros((5000, 4), dtype=np.float32)
    cal = calibrate_quadratic(lambda e: x, ref, chunk=5000)
    np.testing.assert_allclose(cal.coef[1:], [2 * x[:, 0].mean(), (x**2).sum(1).mean()], rtol=1e-12)
    control = np.stack([2 * x[:, 0].numpy() + 0.01, (x**2).sum(1).numpy()], axis=1)
    cv = calibrate_quadratic(lambda e: x, ref, chunk=5000, control=control, control_mean=np.array([0.3, 2.0]))
    np.testing.assert_allclose(cv.coef[1:], [0.3 - 0.01, 2.0], atol=1e-12)  # exact mean + mean(y - control)
    assert np.all(np.diag(cv.cov) < 1e-20)  # the control is the network's own output: no variance left
    with pytest.raises(ConfigError, match="control"):
        calibrate_quadratic(lambda e: x, ref, control=control)


@pytest.fixture(scope="module")
def score_net(c9_table):
    """A small net trained by score regression on 60k generator-level events with d in [-1.5, 1] (seconds)."""
    js = joint.sample_joint(c9_table, (-1.5, 1.0), 60_000, (31,))
    vs = joint.sample_joint(c9_table, (-1.5, 1.0), 10_000, (32,))
    seed_everything(0)
    net = EventLikelihoodNet(hidden=32, layers=2, train_range=(-1.5, 1.0))
    net.fit_features(js.events).set_normalisation(joint.normalisation(c9_table))
    hist = train(net, EventDataset.from_joint(js.events, js.shifts, js.score), EventDataset.from_joint(vs.events, vs.shifts, vs.score),
                 TrainConfig(lr=5e-3, batch_size=512, epochs=8, loss="mse", weight_decay=0.0, patience=0, device="cpu"))
    assert hist["val_loss"][-1] < 0.03 * vs.score.var()  # R^2 > 0.97 on held-out events
    ref = joint.reference_sample(c9_table, 100_000, (33,))
    net.calibrate(ref.events, control=ref.control, control_mean=ref.control_mean)
    return net.eval(), hist, ref


def test_score_regression_learns_the_exact_generator_level_score(c9_table, score_net):
    net, hist, _ = score_net
    assert hist["val_loss"][-1] < 0.5 * hist["val_loss"][0]
    for d in (-1.0, 0.0, 0.8):
        z = sampler.sample_array(c9_table, [d], 20_000, (34, int(10 * d) + 20)).T
        t = joint.joint_score(c9_table, z, d)
        with torch.no_grad():
            s = net(torch.from_numpy(z), torch.full((z.shape[0],), d)).double().numpy()
        assert np.corrcoef(s, t)[0, 1] > 0.98
        assert abs(np.mean(s - t)) < 0.02 * t.std()


def test_the_control_variate_shrinks_the_calibration_error(score_net):
    net, _, ref = score_net
    plain = calibrate_quadratic(net.uv, ref.events)
    cv = calibrate_quadratic(net.uv, ref.events, control=ref.control, control_mean=ref.control_mean)
    shrink = np.sqrt(np.diag(cv.cov) / np.diag(plain.cov))
    assert shrink[0] < 0.3 and shrink[1] < 0.7  # E[2u] is learned best; a small net is rougher on E[u^2 + v^2]
    assert np.all(np.abs(cv.coef - plain.coef)[1:] < 5 * np.sqrt(np.diag(plain.cov)))  # one expectation
    assert np.all(net.slope_error([-2.0, 0.0, 1.0]) > 0)


def test_the_set_posterior_is_smooth_and_not_truncated_at_the_training_range(c9_table, score_net):
    net, _, _ = score_net
    N = 20_000
    truths = np.array([-2.6, 0.2, 1.8])  # trained on [-1.5, 1]: two of them outside
    sets = np.stack([sampler.sample_array(c9_table, [d], N, (35, i)).T for i, d in enumerate(truths)])
    mean, width = EventPosteriorEstimator(net, batch_size=2).predict(sets)
    crb = np.array([likelihood.sigma_crb(c9_table, [d], N) for d in truths])
    assert np.all(np.abs(mean - truths) < 5 * crb + 0.05)
    assert np.all((width > 0.7 * crb) & (width < 1.4 * crb))
    # the width is the posterior standard deviation of the smooth ln L(d): brute force on a dense grid
    dense = np.linspace(mean[0] - 10 * width[0], mean[0] + 10 * width[0], 4001)
    ell = EventPosteriorEstimator(net).log_likelihood(sets[:1], dense)[0]
    p = np.exp(ell - ell.max())
    m = np.sum(p * dense) / p.sum()
    assert m == pytest.approx(mean[0], abs=1e-3 * width[0])
    assert np.sqrt(np.sum(p * (dense - m) ** 2) / p.sum()) == pytest.approx(width[0], rel=1e-3)


def test_smooth_moments_of_a_gaussian_anywhere_in_a_wide_prior():
    truth = np.array([-4.5, -0.3, 3.5])  # >= 5 widths inside the prior [-6, 5]
    for w in (0.01, 0.3):
        mean, std = smooth_moments(lambda d, w=w: -0.5 * ((d - truth[:, None]) / w) ** 2, -6.0, 5.0, 3)
        np.testing.assert_allclose(mean, truth, atol=1e-6)
        np.testing.assert_allclose(std, w, rtol=1e-4)


def test_the_net_refuses_to_train_without_a_normaliser_and_round_trips_its_state():
    net = EventLikelihoodNet(hidden=8, layers=1)
    with pytest.raises(ConfigError, match="not set"):
        net(torch.zeros(3, 4), torch.zeros(3))
    net.set_normalisation([2.0, 0.4, 0.1])
    other = EventLikelihoodNet(**net.hparams)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other.z_coef, net.z_coef) and other.z_state.item() == 1
    with pytest.raises(ConfigError, match="features"):
        EventLikelihoodNet(features="voxels")


def test_joint_event_dataset_items_feed_the_score_loss():
    ds = EventDataset.from_joint(np.zeros((5, 4)), np.linspace(-1, 1, 5), np.arange(5.0))
    x, d, t = ds[2]
    assert ds.is_joint and x.shape == (4,) and float(d) == 0.0 and float(t) == 2.0
    assert ds.shifts.dtype == ds.scores.dtype == torch.float32
    with pytest.raises(ConfigError, match="class indices"):
        _ = ds.classes
    with pytest.raises(ConfigError, match="shifts and scores"):
        EventDataset(np.zeros((5, 4)), shifts=np.zeros(5))
    with pytest.raises(ConfigError, match="finite"):
        EventDataset.from_joint(np.zeros((2, 4)), [0.0, np.nan], [0.0, 0.0])


def test_classifier_quadratic_head_calibrates_its_normaliser_and_widens_its_prior(c9_table):
    torch.manual_seed(0)
    net = EventClassifier([-1.0, 0.0, 1.0], hidden=8, layers=1).eval()
    with torch.no_grad():
        net.net[-1].bias.copy_(torch.tensor([0.2, 0.3]))
    assert not net.calibrated
    ref = sampler.sample_array(c9_table, [0.0], 50_000, (41,)).T
    net.calibrate(ref)
    assert net.calibrated
    with torch.no_grad():
        q = torch.exp(EventClassifier._log_q(net.net(net.features(torch.from_numpy(ref))).double(),
                                             torch.tensor([-2.0, 1.5], dtype=torch.float64)))
    np.testing.assert_allclose(q.mean(0).numpy(), np.exp(net._log_z(torch.tensor([-2.0, 1.5], dtype=torch.float64)).numpy()),
                               rtol=1e-10, atol=2e-6)  # _log_q adds 1e-6 to q
    sets = torch.from_numpy(sampler.sample_array(c9_table, [0.0], 2000, (42,)).T.reshape(2, 1000, 4))
    narrow, _ = net.continuous_moments(sets)
    wide, _ = net.continuous_moments(sets, prior_range=(-6.0, 5.0))
    assert np.all((narrow >= -1.0) & (narrow <= 1.0)) and np.all(np.isfinite(wide))
    # a checkpoint from before calibration existed loads, uncalibrated
    old = {k: v for k, v in net.state_dict().items() if k not in ("z_cal", "z_cov")}
    fresh = EventClassifier([-1.0, 0.0, 1.0], hidden=8, layers=1)
    fresh.load_state_dict(old)
    assert not fresh.calibrated


def test_event_posterior_doctests():
    import doctest

    import models.event_posterior

    assert doctest.testmod(models.event_posterior).failed == 0

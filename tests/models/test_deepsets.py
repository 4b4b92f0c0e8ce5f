"""Deep Sets: permutation invariance, masks, any set size, chi periodicity, and it learns a set mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from models.data import SetDataset
from models.deepsets import DeepSets
from models.estimators import DeepSetsEstimator
from models.features import EventFeatures
from models.training import TrainConfig, seed_everything, train


@pytest.fixture
def net():
    torch.manual_seed(0)
    return DeepSets(hidden=16, latent=8, phi_layers=2, rho_layers=2).eval()


def test_output_is_invariant_under_permutations_of_the_events(net):
    x = torch.randn(3, 20, 4)
    perm = torch.randperm(20)
    assert torch.allclose(net(x), net(x[:, perm]), atol=1e-5)


def test_padding_with_a_mask_gives_the_unpadded_result(net):
    x = torch.randn(1, 7, 4)
    padded = torch.cat([x, 100 * torch.randn(1, 5, 4)], dim=1)
    mask = torch.tensor([[True] * 7 + [False] * 5])
    assert torch.allclose(net(padded, mask), net(x), atol=1e-5)


def test_sets_of_different_sizes_in_one_batch(net):
    a, b = torch.randn(1, 3, 4), torch.randn(1, 9, 4)
    x = torch.zeros(2, 9, 4)
    x[0, :3], x[1] = a[0], b[0]
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :3], mask[1] = True, True
    out = net(x, mask)
    assert torch.allclose(out, torch.cat([net(a), net(b)]), atol=1e-5)


def test_event_chunks_give_the_same_result(net):
    x = torch.randn(2, 50, 4)
    assert torch.allclose(net(x, event_chunk=7), net(x), atol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_log_n_is_appended_to_the_pooled_vector(pool):
    net = DeepSets(hidden=8, latent=4, pool=pool)
    pooled = net.pooled(torch.randn(2, 12, 4))
    assert pooled.shape == (2, 5)
    assert torch.allclose(pooled[:, -1], torch.full((2,), float(np.log(12))))


def test_chi_is_encoded_periodically():
    enc = EventFeatures()
    a = enc(torch.tensor([[3.0, 0.1, 0.2, 0.0]], dtype=torch.float64))
    b = enc(torch.tensor([[3.0, 0.1, 0.2, 2 * np.pi]], dtype=torch.float64))
    assert torch.allclose(a, b, atol=1e-12)


def test_an_all_false_mask_row_is_refused(net):
    with pytest.raises(ConfigError, match="at least one event"):
        net(torch.randn(2, 3, 4), torch.tensor([[True, False, False], [False, False, False]]))


def test_unknown_pool_is_refused():
    with pytest.raises(ConfigError, match="pool"):
        DeepSets(pool="max")


def test_deep_sets_learns_the_mean_of_gaussian_sets(toy_events):
    rng = np.random.default_rng(0)
    labels = np.linspace(-1, 1, 9)
    pools = [toy_events(y, 2000, rng) for y in labels]
    N = 50
    train_sets = SetDataset(pools, labels, [rng.integers(0, 2000, (40, N)) for _ in labels])
    val_sets = SetDataset(pools, labels, [rng.integers(0, 2000, (10, N)) for _ in labels])
    seed_everything(0)
    net = DeepSets(hidden=32, latent=16, phi_layers=2, rho_layers=2).fit_features(np.concatenate(pools))
    hist = train(net, train_sets, val_sets, TrainConfig(lr=3e-3, batch_size=16, epochs=10, loss="mse", patience=0))
    assert hist["val_loss"][hist["best_epoch"]] < 0.2 * hist["val_loss"][0]

    truths = np.array([-0.8, -0.3, 0.25, 0.9])  # off the training labels, fresh events
    sets = np.stack([toy_events(t, 20 * N, rng).reshape(20, N, 4) for t in truths]).reshape(-1, N, 4)
    truth = np.repeat(truths, 20)
    pred, err = DeepSetsEstimator(net).predict(sets)
    assert err is None and pred.shape == (80,)
    assert np.corrcoef(pred, truth)[0, 1] > 0.9
    means = pred.reshape(4, 20).mean(axis=1)
    assert np.all(np.abs(means - truths) < 0.2)  # the ideal estimator's sigma per set is 1/sqrt(50) = 0.14


def test_a_score_summary_needs_its_reference_shifts():
    with pytest.raises(ConfigError, match="score_points"):
        DeepSets(summary="score")
    with pytest.raises(ConfigError, match="summary"):
        DeepSets(summary="sufficient")


def test_the_score_summary_reaches_the_bound_of_gaussian_sets(toy_events, one_torch_thread):
    """q2 ~ N(d, 1): the joint score at d_k is q2 - d_k, the bound of a set of N is 1/sqrt(N).

    The learned summary of the test above is 0.2 from the truth at 9 labels; the two-stage score
    summary, on sets at continuous d, must come within 15% of the bound with widths that cover."""
    from models.deepsets_score import pooled_vectors, pretrain_phi, train_rho

    rng = np.random.default_rng(1)
    points = (-1.5, -0.5, 0.5, 1.5)
    x = toy_events(0.0, 40_000, rng)
    x[:, 0] = rng.uniform(-2.0, 2.0, 40_000) + rng.normal(0, 1, 40_000)
    scores = np.stack([x[:, 0] - d for d in points], axis=1)
    seed_everything(0)
    net = DeepSets(hidden=32, phi_layers=2, rho_layers=2, head="gaussian", summary="score", score_points=points)
    hist = pretrain_phi(net, x[:30_000], scores[:30_000], x[30_000:], scores[30_000:],
                        TrainConfig(epochs=5, batch_size=512, lr=3e-3, loss="mse", weight_decay=0.0))
    assert hist["best_val_loss"] < 0.02  # the standardised scores are learned nearly exactly

    N = 100

    def sets(n, seed):
        r = np.random.default_rng(seed)
        d = r.uniform(-1.5, 1.5, n)
        for i in range(0, n, 64):
            b = d[i:i + 64]
            yield np.stack([toy_events(v, N, r) for v in b]), b

    pooled, d = pooled_vectors(net, sets(4000, 2))
    val_pooled, val_d = pooled_vectors(net, sets(600, 3))
    seed_everything(0)
    train_rho(net, pooled, d, val_pooled, val_d,
              TrainConfig(epochs=150, batch_size=128, lr=3e-3, loss="gaussian_nll", weight_decay=0.0, patience=30))
    truths = np.array([-1.0, 0.0, 1.0])
    test = np.stack([toy_events(t, N, rng) for t in truths for _ in range(200)])
    mean, width = DeepSetsEstimator(net).predict(test)
    mean, width = mean.reshape(3, 200), width.reshape(3, 200)
    bound = 1 / np.sqrt(N)
    assert np.all(mean.std(axis=1, ddof=1) < 1.15 * bound)
    assert np.all(np.abs(mean.mean(axis=1) - truths) < 0.3 * bound)
    assert np.all(np.abs(width.mean(axis=1) / bound - 1) < 0.15)
    covered = np.abs(mean - truths[:, None]) < width
    assert 0.6 < covered.mean() < 0.76


def test_nuisance_scores_need_a_score_summary_and_their_shifts():
    with pytest.raises(ConfigError, match="summary='score'"):
        DeepSets(nuisance_scores=3)
    with pytest.raises(ConfigError, match="nuisance_points"):
        DeepSets(summary="score", score_points=(0.0, 1.0), nuisance_scores=3)
    net = DeepSets(hidden=8, summary="score", score_points=(0.0, 1.0), nuisance_scores=3, nuisance_points=(0.5,))
    assert net.hparams["latent"] == 5 and DeepSets(**net.hparams).hparams == net.hparams


def test_the_nuisance_aware_score_summary_covers_with_a_shared_nuisance(toy_events, one_torch_thread):
    """A linear-Gaussian toy with a nuisance u shared by the set: q2 ~ N(d + u, 1) and a second variable
    x1 ~ N(u, 1) that sees u alone, u ~ N(0, tau^2) per set. With the set means m1, m2 the posterior of d
    is known: d - (m1 - m2 tau^2 / (tau^2 + 1/N)) has variance 1/N + tau^2 (1/N) / (tau^2 + 1/N).

    Deep Sets with the nuisance's score in its summary, rho trained on sets each in its own world,
    reaches that width and covers; the same network without the nuisance's score, trained at u = 0
    (the naive one), gives the width 1/sqrt(N) of a known u and under-covers on the same sets."""
    from models.deepsets_score import pooled_vectors, pretrain_phi, train_rho

    N, tau, points, d_ref = 100, 0.2, (-1.5, -0.5, 0.5, 1.5), 0.0
    bound = np.sqrt(1 / N + tau**2 / N / (tau**2 + 1 / N))

    def events(d, u, n, r):
        ev = toy_events(d + u, n, r)
        ev[:, 1] = r.normal(u, 1.0, n)
        return ev

    rng = np.random.default_rng(4)
    x = events(rng.uniform(-2.0, 2.0, 40_000), 0.0, 40_000, rng)
    t_d = np.stack([x[:, 0] - d for d in points], axis=1)  # the joint scores at u = 0
    t_u = (x[:, 0] - d_ref + x[:, 1])[:, None]

    def sets(n, seed, nuisance):
        r = np.random.default_rng(seed)
        d, u = r.uniform(-1.5, 1.5, n), r.normal(0.0, tau, n) * nuisance
        for i in range(0, n, 64):
            yield np.stack([events(d[j], u[j], N, r) for j in range(i, min(i + 64, n))]), d[i:i + 64]

    truths = np.array([-1.0, 0.0, 1.0])
    test = np.stack([events(t, rng.normal(0.0, tau), N, rng) for t in truths for _ in range(200)])
    results = {}
    for aware in (True, False):
        seed_everything(0)
        net = DeepSets(hidden=32, phi_layers=2, rho_layers=2, head="gaussian", summary="score", score_points=points,
                       **(dict(nuisance_scores=1, nuisance_points=(d_ref,)) if aware else {}))
        t = np.concatenate([t_d, t_u], axis=1) if aware else t_d
        pretrain_phi(net, x[:30_000], t[:30_000], x[30_000:], t[30_000:],
                     TrainConfig(epochs=5, batch_size=512, lr=3e-3, loss="mse", weight_decay=0.0))
        pooled, d = pooled_vectors(net, sets(4000, 2, aware))
        val_pooled, val_d = pooled_vectors(net, sets(600, 3, aware))
        seed_everything(0)
        train_rho(net, pooled, d, val_pooled, val_d,
                  TrainConfig(epochs=150, batch_size=128, lr=3e-3, loss="gaussian_nll", weight_decay=0.0, patience=30))
        mean, width = DeepSetsEstimator(net).predict(test)
        results[aware] = mean.reshape(3, 200), width.reshape(3, 200)
    mean, width = results[True]
    assert np.all(mean.std(axis=1, ddof=1) < 1.15 * bound)
    assert np.all(np.abs(mean.mean(axis=1) - truths) < 0.3 * bound)
    assert np.all(np.abs(width.mean(axis=1) / bound - 1) < 0.15)
    assert 0.6 < (np.abs(mean - truths[:, None]) < width).mean() < 0.76
    naive_mean, naive_width = results[False]
    assert np.all(naive_width.mean(axis=1) < 0.85 * bound)  # the width of a known u: 0.10 against 0.13
    assert (np.abs(naive_mean - truths[:, None]) < naive_width).mean() < 0.5  # and u's spread is missed


def test_the_summary_profile_is_kept_with_the_network_and_refuses_bad_input():
    """set_profile stores the moments in buffers (a rebuilt network gives the same estimates); wrong shapes,
    a bad prior scale, a network without nuisance scores, or no moments are refused in one line."""
    from models.deepsets_score import profile_moments

    torch.manual_seed(0)
    net = DeepSets(hidden=8, summary="score", score_points=(0.0, 1.0), nuisance_scores=1, nuisance_points=(0.5,),
                   head="gaussian").eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 4)).astype(np.float32)
    w = np.abs(rng.normal(size=(4000, 9))) + 0.5  # P_c Q = 3 x 3 for one nuisance
    moments = profile_moments(net, [(x[:2000], w[:2000]), (x[2000:], w[2000:])])
    assert [m.shape for m in moments] == [(9,), (9, 3), (3, 3, 3)]
    with pytest.raises(ConfigError, match="needs a Gaussian head and the summary's moments"):
        net.profiled_estimate(x[None, :100])
    box = [[-2.0, 2.0], [-6.0, 6.0]]
    with pytest.raises(ConfigError, match="profile1 must have shape"):
        net.set_profile((moments[0], moments[1][:, :2], moments[2]), box)
    with pytest.raises(ConfigError, match="prior_scale must be > 0"):
        net.set_profile(moments, box, prior_scale=0.0)
    with pytest.raises(ConfigError, match="needs the nuisances' scores"):
        DeepSets(hidden=8, summary="score", score_points=(0.0, 1.0), head="gaussian").set_profile(moments, box)
    net.set_profile(moments, box, prior_scale=0.5)
    assert net.has_profile and float(net.profile_prior) == 0.5
    sets = rng.normal(size=(3, 500, 4)).astype(np.float32)
    values, errors, ok = net.profiled_estimate(sets)
    assert values.shape == errors.shape == ok.shape == (3,) and np.all(np.isfinite(values))
    again = DeepSets(**net.hparams)
    again.load_state_dict(net.state_dict())
    assert again.has_profile
    np.testing.assert_array_equal(again.eval().profiled_estimate(sets)[0], values)

"""The multivariate Gaussian head (models.heads) and Deep Sets in several coefficients (models.deepsets_joint)."""

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from models.deepsets_joint import JointDeepSets
from models.heads import MultivariateGaussianHead, MultivariateGaussianNLLLoss, split_multivariate
from models.training import TrainConfig, train


def test_the_multivariate_nll_is_the_gaussian_log_density_and_the_head_is_a_valid_cholesky_factor():
    rng = np.random.default_rng(0)
    head = MultivariateGaussianHead(3)
    raw = torch.from_numpy(rng.normal(size=(5, 9))).float()
    out = head(raw, torch.full((5,), 0.5))
    mean, L = split_multivariate(out)
    assert torch.all(torch.triu(L, diagonal=1) == 0) and torch.all(torch.diagonal(L, dim1=-2, dim2=-1) > 0)
    y = torch.from_numpy(rng.normal(size=(5, 3))).float()
    cov = L @ L.transpose(-1, -2)
    ref = -torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(y) - 1.5 * np.log(2 * np.pi)
    assert float(MultivariateGaussianNLLLoss()(out, y)) == pytest.approx(float(ref.mean()), rel=1e-4)
    np.testing.assert_allclose(L.numpy(), 0.5 * split_multivariate(head(raw))[1].numpy(), rtol=1e-6)  # the scale
    with pytest.raises(ConfigError, match="needs 9 raw outputs"):
        head(raw[:, :8])
    with pytest.raises(ConfigError, match="needs targets"):
        MultivariateGaussianNLLLoss()(out, y[:, :2])


def test_a_network_with_the_head_learns_a_correlated_heteroscedastic_gaussian():
    """On y = A(x) z with z ~ N(0, 1), the trained covariance is A A^T: widths and the correlation, as x changes."""
    torch.manual_seed(0)
    n = 20000
    x = torch.rand(n, 1) * 2 + 1  # the width scales with x
    z = torch.randn(n, 2)
    a = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    y = (z @ a.T) * x * 0.1 + torch.cat([x, -x], 1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))
            self.head = MultivariateGaussianHead(2)

        def forward(self, x):
            return self.head(self.f(x))

    net = Net()
    data = torch.utils.data.TensorDataset(x, y)
    train(net, data, data, TrainConfig(loss="mvn_nll", lr=3e-3, batch_size=256, epochs=25, patience=0, weight_decay=0.0))
    with torch.no_grad():
        mean, L = split_multivariate(net(torch.tensor([[1.5], [2.5]])))
    cov = (L @ L.transpose(-1, -2)).numpy()
    for k, s in enumerate((1.5, 2.5)):
        want = (a @ a.T).numpy() * (0.1 * s) ** 2
        np.testing.assert_allclose(np.sqrt(np.diag(cov[k])), np.sqrt(np.diag(want)), rtol=0.1)
        assert cov[k, 0, 1] / np.sqrt(cov[k, 0, 0] * cov[k, 1, 1]) == pytest.approx(0.8, abs=0.07)
        np.testing.assert_allclose(mean[k].numpy(), [s, -s], atol=0.03)


def test_joint_deepsets_is_permutation_invariant_and_its_covariance_falls_as_one_over_n():
    torch.manual_seed(1)
    net = JointDeepSets(2, [[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]], hidden=16, rho_hidden=16).eval()
    x = torch.rand(2, 400, 4)
    with torch.no_grad():
        out = net(x)
        assert torch.allclose(out, net(x[:, torch.randperm(400)]), atol=1e-5)
        assert torch.allclose(out, net(x, event_chunk=64), atol=1e-5)
    assert out.shape == (2, 2, 3) and net.hparams["latent"] == 6
    assert JointDeepSets(**net.hparams).hparams == net.hparams
    # rho sees ln N, and the head divides L by sqrt(N): with rho's ln N input cut, the covariance is 1/N exactly
    with torch.no_grad():
        net.rho[0].weight[:, -1] = 0.0
        c1 = net.estimate(x.numpy())[1]
        c4 = net.estimate(np.concatenate([x.numpy()] * 4, axis=1))[1]
    np.testing.assert_allclose(c4, c1 / 4, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"score_points must have shape \(K >= 1, 2\)"):
        JointDeepSets(2, [0.0, 1.0])
    with pytest.raises(ConfigError, match="latent is K n = 6"):
        JointDeepSets(2, [[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]], latent=5)


def test_the_summary_moments_reweight_a_standard_model_pool_to_the_summary_distribution_at_any_shift(c9_c10_table_coarse):
    """A pool drawn at the SM, weighted by each event's exact coefficients over its SM value, gives phi's mean
    and covariance at another shift: those of events drawn there (to Monte Carlo precision); and the synthetic
    sets drawn from them have that mean and the covariance over N."""
    from kernels import likelihood, sampler
    from models.deepsets_joint import summary_moments, synthetic_pooled
    from models.event_ratio import ratio_targets

    table = c9_c10_table_coarse
    net = JointDeepSets(2, [[0.0, 0.0], [1.0, -1.0]], hidden=8, rho_hidden=8, features="plain")
    net.fit_features(np.random.default_rng(0).uniform(1, 6, (1000, 4)))
    pool = sampler.sample_array(table, [0.0, 0.0], 400_000, (5,)).T
    a = likelihood.project(table, pool.astype(np.float64))
    moments = summary_moments(net, pool, np.concatenate([np.ones((len(a), 1)), ratio_targets(a)], axis=1))
    c = np.array([-1.5, 1.0])
    direct = sampler.sample_array(table, c, 400_000, (6,)).T
    with torch.no_grad():
        phi = net.phi(net.features(torch.from_numpy(direct))).double().numpy()
    n = 500
    synth = synthetic_pooled(moments, np.tile(c, (20000, 1)), np.full(20000, n), 1).double().numpy()
    np.testing.assert_allclose(synth[:, :-1].mean(axis=0), phi.mean(axis=0), atol=4 * phi.std(axis=0).max() / 400)
    np.testing.assert_allclose(np.cov(synth[:, :-1].T) * n, np.cov(phi.T), rtol=0.05, atol=0.02 * phi.var(axis=0).max())
    assert np.all(synth[:, -1] == np.float32(np.log(n)))
    with pytest.raises(ConfigError, match="must match"):
        summary_moments(net, pool[:10], np.ones((9, 6)))


def test_the_summarys_own_fit_on_the_exact_scores_reaches_the_cramer_rao_bound(c9_c10_table_coarse):
    """With the exact joint scores at three points as the summary, Gauss-Newton on its Gaussian likelihood, from
    the SM, lands on the truth with the bound's spread and covariance: the fit itself loses nothing."""
    from kernels import likelihood, sampler
    from models.deepsets_joint import summary_fit
    from models.event_ratio import ratio_scores, ratio_targets

    table = c9_c10_table_coarse
    pts = np.array([[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]])
    a = likelihood.project(table, sampler.sample_array(table, [0.0, 0.0], 1_000_000, (5,)).T.astype(np.float64))
    phi = ratio_scores(a, pts).reshape(len(a), -1)
    b = np.concatenate([np.ones((len(a), 1)), ratio_targets(a)], axis=1)
    moments = (b.mean(axis=0), b.T @ phi / len(a), np.einsum("ep,ek,el->pkl", b, phi, phi) / len(a))
    c, n, m = np.array([-0.6, 0.4]), 4000, 200
    ev = likelihood.project(table, sampler.sample_array(table, c, m * n, (7,)).T.astype(np.float64))
    summaries = ratio_scores(ev, pts).reshape(m, n, -1).mean(axis=1)
    values, covs, ok = summary_fit(moments, summaries, n, np.zeros((m, 2)), [[-1.0, 1.0], [-1.0, 1.0]])
    assert ok.all()
    crb = np.sqrt(np.diag(np.linalg.inv(likelihood.fisher_information(table, c)) / n))
    err = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
    np.testing.assert_allclose(err.mean(axis=0), crb, rtol=0.03)
    np.testing.assert_allclose(values.std(axis=0), crb, rtol=0.15)
    assert np.all(np.abs(values.mean(axis=0) - c) < 0.35 * crb)


def test_deepsets_estimates_are_refined_once_it_holds_its_moments_and_keep_rhos_outside_the_box():
    from models.deepsets_joint import summary_moments

    torch.manual_seed(0)
    net = JointDeepSets(2, [[0.0, 0.0], [1.0, -1.0]], hidden=8, rho_hidden=8, features="plain")
    rng = np.random.default_rng(0)
    net.fit_features(rng.uniform(1, 6, (1000, 4)))
    pool = rng.uniform(0, 1, (20_000, 4))
    weights = np.concatenate([np.ones((20_000, 1)), pool[:, :2], pool[:, :1] ** 2, pool[:, :1] * pool[:, 1:2],
                              pool[:, 1:2] ** 2], axis=1)  # a density linear in the monomials of c
    sets = rng.uniform(0, 1, (6, 3000, 4))
    rho, rho_cov = net.estimate(sets)
    assert not net.has_moments
    net.set_moments(summary_moments(net, pool, weights), [[-1.0, 1.0], [-1.0, 1.0]])
    assert net.has_moments
    np.testing.assert_allclose(net.estimate(sets, refine=False)[0], rho)
    values, covs = net.estimate(sets)
    assert values.shape == (6, 2) and covs.shape == (6, 2, 2) and np.isfinite(values).all()
    net.set_moments(summary_moments(net, pool, weights), [[50.0, 51.0], [50.0, 51.0]])  # rho's start far outside
    far, far_cov = net.estimate(sets)
    np.testing.assert_allclose(far, rho)
    np.testing.assert_allclose(far_cov, rho_cov)

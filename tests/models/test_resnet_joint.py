"""The 3D ResNet in several coefficients (models.resnet_joint): shapes, rebuild, N, and both stages on a toy whose
voxel scores are exact and whose two coefficients are correlated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from models.resnet_joint import JointScoreResNet3d, set_images
from models.resnet_score import image_summaries, pretrain_voxel_scores, train_rho
from models.training import TrainConfig, seed_everything

B = 6
POINTS = [[-0.6, -0.6], [0.0, 0.0], [0.6, 0.6], [0.6, -0.6], [-0.6, 0.6]]


def test_shapes_rebuild_the_image_of_a_set_and_refusals():
    net = JointScoreResNet3d(2, POINTS, bins=B, width=4, blocks=1, rho_hidden=8).eval()
    again = JointScoreResNet3d(**net.hparams)
    again.load_state_dict(net.state_dict())
    x = torch.rand(3, 2, B, B, B)
    assert torch.equal(net(x), again.eval()(x)) and net(x).shape == (3, 2, 3)
    # the summary is per event, with ln N last: twice the counts, the same mean scores
    s1, s2 = net.summary(x), net.summary(torch.stack([x[:, 0], 2 * x[:, 1]], dim=1))
    torch.testing.assert_close(s1[:, :-1], s2[:, :-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2[:, -1] - s1[:, -1], torch.full((3,), float(np.log(2))).double())
    events = np.random.default_rng(0).uniform([1.1, -1, -1, 0], [6, 1, 1, 6], (2, 700, 4))
    img = set_images(events, B)
    assert img.shape == (2, 2, B, B, B) and np.nansum(img[:, 1], axis=(1, 2, 3)).tolist() == [700.0, 700.0]
    with pytest.raises(ConfigError, match="shape"):
        net(torch.rand(3, 2, B + 1, B + 1, B + 1))
    with pytest.raises(ConfigError, match=r"score_points must have shape \(K >= 1, 2\)"):
        JointScoreResNet3d(2, [0.0, 1.0])
    with pytest.raises(ConfigError, match="no events"):
        net(torch.zeros(1, 2, B, B, B))
    with pytest.raises(ConfigError, match=r"\(M, N, 4\)"):
        set_images(events[0], B)


def _weights():
    c = np.linspace(-1, 1, B)
    g = np.stack(np.meshgrid(c, c, c, indexing="ij"))
    return 0.3 * np.stack([g[0], 0.7 * g[0] + 0.7 * g[1]])  # two overlapping patterns: correlated coefficients


def _toy(n, rng, c=None, mu=None):
    """Counts Poisson with mean mu (1 + c . w_v) per voxel, mu log-uniform over [10, 40] (sets of about 2,000 to
    9,000 events), c uniform over [-1.2, 1.2]^2 (the test point stays several sigma inside the prior): the score
    of c at c_k is a sum over voxels of n_v w_v / (1 + c_k . w_v) (less its mean), so
    each voxel's labels are exact and local."""
    w = _weights()
    c = rng.uniform(-1.2, 1.2, (n, 2)) if c is None else np.tile(c, (n, 1))
    mu = np.exp(rng.uniform(np.log(10), np.log(40), n)) if mu is None else np.full(n, mu)
    lam = mu[:, None, None, None] * (1 + np.einsum("ni,ixyz->nxyz", c, w))
    counts = rng.poisson(lam).astype(np.float32)
    images = np.stack([np.where(counts > 0, 3.0, np.nan).astype(np.float32), counts], axis=1)
    return images, c, w


def test_the_two_stages_learn_correlated_local_scores_and_cover_at_two_luminosities(one_torch_thread):
    rng = np.random.default_rng(0)
    seed_everything(0)
    net = JointScoreResNet3d(2, POINTS, bins=B, width=8, blocks=1, rho_hidden=64, rho_layers=3)
    x, c, w = _toy(600, rng)
    pts = np.asarray(POINTS)
    labels = np.stack([x[:, 1] * w[i] / (1 + np.einsum("i,ixyz->xyz", p, w)) for p in pts for i in range(2)], axis=1)
    hist = pretrain_voxel_scores(net, x[:500], labels[:500], x[500:], labels[500:],
                                 TrainConfig(epochs=12, batch_size=16, lr=3e-3, loss="mse", weight_decay=0.0))
    assert hist["best_val_loss"] < 0.05 * hist["val_loss"][0]  # the exact local labels are learned

    def batches(n, seed):
        yield _toy(n, np.random.default_rng(seed))[:2]

    pooled, cc = image_summaries(net, batches(60000, 1))
    val_pooled, val_c = image_summaries(net, batches(500, 2))
    assert pooled.shape == (60000, 2 * len(POINTS) + 1)
    seed_everything(0)
    train_rho(net, pooled, cc.float(), val_pooled, val_c.float(),
              TrainConfig(epochs=60, batch_size=128, lr=2e-3, loss="mvn_nll", weight_decay=0.0))
    truth = np.array([0.3, -0.2])
    for mu in (12.0, 35.0):
        fisher = mu * np.einsum("ixyz,jxyz->ij", w, w / (1 + np.einsum("i,ixyz->xyz", truth, w)))
        bound = np.linalg.inv(fisher)
        images, _, _ = _toy(400, rng, truth, mu)
        values, covs = net.estimate(images)
        spread = np.cov(values.T)
        np.testing.assert_array_less(np.sqrt(np.diag(spread)), 1.2 * np.sqrt(np.diag(bound)))
        assert np.all(np.abs(values.mean(0) - truth) < 0.3 * np.sqrt(np.diag(bound)))
        corr = spread[0, 1] / np.sqrt(spread[0, 0] * spread[1, 1])
        assert corr == pytest.approx(bound[0, 1] / np.sqrt(bound[0, 0] * bound[1, 1]), abs=0.1)
        # the joint 68% region of each image's own covariance covers nominally
        r = values - truth
        d2 = np.einsum("ni,nij,nj->n", r, np.linalg.inv(covs), r)
        assert 0.58 < np.mean(d2 < 2.2789) < 0.78  # chi2(2) 68.27%; 400 sets, and rho's widths learned to ~10%
        assert 0.8 < np.sqrt(np.linalg.det(covs).mean() / np.linalg.det(spread)) < 1.25

"""The score-summary ResNet: shapes, rebuild, and the two stages on a toy whose voxel scores are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.errors import ConfigError
from models.resnet_score import ScoreResNet3d, image_summaries, pretrain_voxel_scores, train_rho
from models.training import TrainConfig, seed_everything

B = 6


def test_shapes_rebuild_and_refusals():
    net = ScoreResNet3d((-1.0, 1.0), bins=B, width=4, blocks=1, head="gaussian")
    again = ScoreResNet3d(**net.hparams)
    again.load_state_dict(net.state_dict())
    x = torch.rand(3, 2, B, B, B)
    assert torch.equal(net.eval()(x), again.eval()(x)) and net(x).shape == (3, 2)
    with pytest.raises(ConfigError, match="shape"):
        net(torch.rand(3, 2, B + 1, B + 1, B + 1))
    with pytest.raises(ConfigError, match="2 reference"):
        ScoreResNet3d((0.0,), bins=B)


def _toy(n, rng, d=None):
    """Images whose voxel counts are Poisson with mean 20 (1 + d w_v); the score of d at d_k is the sum over voxels
    of n_v w_v / (1 + d_k w_v) minus its mean: the labels are each voxel's n_v w_v / (1 + d_k w_v) (local, exact)."""
    c = np.linspace(-1, 1, B)
    w = 0.3 * np.stack(np.meshgrid(c, c, c, indexing="ij")).sum(0) / 3
    d = rng.uniform(-1, 1, n) if d is None else np.full(n, d)
    counts = rng.poisson(20 * (1 + d[:, None, None, None] * w)).astype(np.float32)
    images = np.stack([np.where(counts > 0, 3.0, np.nan).astype(np.float32), counts], axis=1)
    return images, d, w


def test_the_two_stages_learn_a_local_score_and_estimate_near_the_bound(one_torch_thread):
    rng = np.random.default_rng(0)
    points = (-0.8, 0.0, 0.8)
    seed_everything(0)
    net = ScoreResNet3d(points, bins=B, width=8, blocks=1, head="gaussian")
    x, d, w = _toy(600, rng)
    labels = np.stack([x[:, 1] * w / (1 + p * w) for p in points], axis=1)
    hist = pretrain_voxel_scores(net, x[:500], labels[:500], x[500:], labels[500:],
                                 TrainConfig(epochs=15, batch_size=16, lr=3e-3, loss="mse", weight_decay=0.0))
    assert hist["best_val_loss"] < 0.05 * hist["val_loss"][0]  # the exact local labels are learned

    def batches(n, seed):
        yield _toy(n, np.random.default_rng(seed))[:2]

    pooled, dd = image_summaries(net, batches(2000, 1))
    val_pooled, val_d = image_summaries(net, batches(400, 2))
    seed_everything(0)
    train_rho(net, pooled, dd, val_pooled, val_d,
              TrainConfig(epochs=150, batch_size=128, lr=3e-3, loss="gaussian_nll", weight_decay=0.0, patience=30))
    # Fisher information of d at 0: sum_v 20 w_v^2
    bound = 1 / np.sqrt(20 * (w**2).sum())
    for truth in (-0.5, 0.3):
        images, _, _ = _toy(300, rng, truth)
        dev = next(net.parameters()).device  # trained where the trainer chose (the GPU, when there is one)
        mean, width = net.eval()(torch.from_numpy(images).to(dev)).detach().cpu().numpy().T
        assert mean.std(ddof=1) < 1.2 * bound  # near the bound (the toy's information varies little with d)
        assert abs(mean.mean() - truth) < 0.3 * bound
        assert 0.8 < width.mean() / mean.std(ddof=1) < 1.25

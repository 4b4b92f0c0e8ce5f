"""The 3D ResNet: the seed study's layer structure, size-agnostic forward, preprocessing, and it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kernels.errors import ConfigError
from models.data import ImageDataset
from models.estimators import ResNetEstimator
from models.resnet3d import STAGE_BLOCKS, BasicBlock3d, ImagePreprocess, ResNet3d
from models.training import TrainConfig, seed_everything, train


def _convs(net: nn.Module) -> list[nn.Conv3d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv3d)]


def test_resnet34_has_the_seed_studys_layers():
    net = ResNet3d()  # depth 34, width 64
    convs = _convs(net)
    assert len(convs) == 1 + 2 * (3 + 4 + 6 + 3) + 3
    stem = net.stem[0]
    assert stem.kernel_size == (7, 7, 7) and stem.stride == (2, 2, 2) and stem.out_channels == 64
    assert isinstance(net.stem[1], nn.BatchNorm3d) and isinstance(net.stem[2], nn.ReLU)
    pool = net.stem[3]
    assert isinstance(pool, nn.MaxPool3d) and pool.kernel_size == 3 and pool.stride == 2 and pool.padding == 1
    assert [len(stage) for stage in net.stages] == [3, 4, 6, 3]
    assert [stage[0].conv1.out_channels for stage in net.stages] == [64, 128, 256, 512]
    assert [stage[0].conv1.stride for stage in net.stages] == [(1, 1, 1)] + [(2, 2, 2)] * 3
    projections = [m for m in _convs(net) if m.kernel_size == (1, 1, 1)]
    assert len(projections) == 3 and all(p.stride == (2, 2, 2) for p in projections)
    assert isinstance(net.pool, nn.AdaptiveAvgPool3d)
    dense = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(512, 1000), (1000, 1)]
    drops = [m for m in net.head if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.5


def test_resnet34_forward_on_a_small_batch_with_empty_voxels():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 16, 16, 16)
    x[:, 1] = torch.floor(3 * x[:, 1])
    x[:, 0][x[:, 1] == 0] = float("nan")
    out = ResNet3d().eval()(x)
    assert out.shape == (2,) and torch.all(torch.isfinite(out))


@pytest.mark.parametrize("depth", sorted(STAGE_BLOCKS))
def test_depths_have_their_stage_blocks(depth):
    net = ResNet3d(depth=depth, width=4, head_width=8)
    assert tuple(len(s) for s in net.stages) == STAGE_BLOCKS[depth]
    assert len(_convs(net)) == 1 + 2 * sum(STAGE_BLOCKS[depth]) + 3


@pytest.mark.parametrize("bins", [5, 8, 13])
def test_any_bin_count_gives_one_value_per_image(bins):
    net = ResNet3d(depth=10, width=4, head_width=8).eval()
    assert net(torch.rand(3, 2, bins, bins, bins)).shape == (3,)


def test_unknown_depth_is_refused():
    with pytest.raises(ConfigError, match="depth"):
        ResNet3d(depth=50)


def test_hparams_rebuild_the_same_architecture():
    net = ResNet3d(depth=18, width=4, head_width=16, dropout=0.2)
    clone = ResNet3d(**net.hparams)
    clone.load_state_dict(net.state_dict())  # same keys and shapes


def test_preprocess_zeroes_empty_voxels_and_standardises_occupied_ones():
    imgs = np.full((4, 2, 3, 3, 3), np.nan, dtype=np.float32)
    imgs[:, 1] = 0
    imgs[:, 0, 0, 0, :] = [[2.0, 4.0, 6.0]] * 4
    imgs[:, 1, 0, 0, :] = [[1.0, 3.0, 7.0]] * 4
    pre = ImagePreprocess().fit(imgs)
    assert pre.mean[0].item() == pytest.approx(4.0)
    assert pre.std[0].item() == pytest.approx(np.std([2.0, 4.0, 6.0]), rel=1e-6)
    assert pre.mean[1].item() == pytest.approx(np.mean(np.log1p(imgs[:, 1])), rel=1e-6)
    out = pre(torch.from_numpy(imgs))
    assert torch.all(torch.isfinite(out))
    assert torch.all(out[:, 0, 1:] == 0)  # empty voxels
    assert out[0, 0, 0, 0].tolist() == pytest.approx([-1.2247449, 0.0, 1.2247449], rel=1e-5)


def test_preprocess_treats_zero_count_as_empty_when_images_use_fill_zero():
    imgs = np.zeros((2, 2, 2, 2, 2), dtype=np.float32)
    imgs[:, 0, 0, 0, 0] = 5.0
    imgs[:, 1, 0, 0, 0] = 2.0
    pre = ImagePreprocess()
    pre.mean[0], pre.std[0] = 3.0, 2.0
    out = pre(torch.from_numpy(imgs))
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(1.0)
    assert torch.count_nonzero(out[:, 0]).item() == 2


def test_preprocess_buffers_are_saved_with_the_model():
    imgs = np.random.default_rng(0).uniform(1, 6, (3, 2, 4, 4, 4)).astype(np.float32)
    net = ResNet3d(depth=10, width=4, head_width=8).fit_preprocess(imgs)
    state = net.state_dict()
    assert torch.equal(state["preprocess.mean"], net.preprocess.mean)
    assert torch.equal(state["preprocess.std"], net.preprocess.std)


def test_resnet_learns_a_toy_mapping_from_mean_q2_to_label(toy_images):
    x_train, y_train = toy_images(96, seed=0)
    x_val, y_val = toy_images(48, seed=1)
    seed_everything(0)
    net = ResNet3d(depth=10, width=8, head_width=32, dropout=0.0).fit_preprocess(x_train)
    hist = train(net, ImageDataset(x_train, y_train), ImageDataset(x_val, y_val),
                 TrainConfig(lr=3e-3, batch_size=16, epochs=10, loss="mse", patience=0))
    assert hist["val_loss"][hist["best_epoch"]] < 0.3 * hist["val_loss"][0]
    assert hist["train_loss"][-1] < 0.3 * hist["train_loss"][0]
    pred, err = ResNetEstimator(net, bins=8).predict_images(x_val)
    assert err is None
    assert np.corrcoef(pred, y_val)[0, 1] > 0.9


def test_basic_block_keeps_shape_without_projection():
    block = BasicBlock3d(4, 4)
    assert isinstance(block.shortcut, nn.Identity)
    assert block(torch.rand(2, 4, 5, 5, 5)).shape == (2, 4, 5, 5, 5)


@pytest.mark.parametrize("bins", [5, 6, 7, 16])
def test_stem_weight_gradient_is_right_on_small_images(bins):
    """oneDNN's backward of a 7^3 stride-2 padded conv is garbage on 5^3-7^3 inputs; the stem must not be."""
    torch.manual_seed(0)
    net = ResNet3d(depth=10, width=4, head_width=8)
    stem = net.stem[0]
    x = torch.randn(8, 2, bins, bins, bins)
    w64 = stem.weight.detach().double().requires_grad_()
    nn.functional.conv3d(x.double(), w64, stride=2, padding=3).sum().backward()
    for _ in range(3):  # the broken kernel returned different garbage each time
        stem.zero_grad()
        stem(x).sum().backward()
        err = (stem.weight.grad.double() - w64.grad).abs().max() / w64.grad.abs().max()
        assert float(err) < 1e-5
    with torch.no_grad():
        ref = nn.functional.conv3d(x, stem.weight, stride=2, padding=3)
        assert torch.allclose(stem(x), ref, atol=1e-5)


def test_training_on_small_images_is_reproducible_and_finite():
    """Same seed, same images -> the same weights, bit for bit (the broken stem gradient made this random).
    On the CPU: cuDNN's autotuned 3D convolutions on a GPU are not bitwise reproducible."""
    rng = np.random.default_rng(1)
    images = rng.poisson(2.0, size=(24, 2, 6, 6, 6)).astype(np.float32)
    labels = np.repeat([-1.0, 0.0, 1.0], 8).astype(np.float32)

    def once():
        seed_everything(5)
        net = ResNet3d(depth=10, width=4, head_width=8).fit_preprocess(images)
        hist = train(net, ImageDataset(images, labels), None, TrainConfig(epochs=2, batch_size=8, seed=5, device="cpu"))
        return hist, net.state_dict()

    (h1, s1), (h2, s2) = once(), once()
    assert all(np.isfinite(h1["train_loss"]))
    assert h1["train_loss"] == h2["train_loss"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)

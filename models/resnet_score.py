r"""A fully convolutional 3D ResNet with a score summary: the voxel image's own score, voxel by voxel.

Why. The Fisher information of a voxel image is a sum over voxels (the counts are
multinomial, the mean q2 of a voxel depends on that voxel alone), so the image's
score at a shift :math:`d_k` is, to that accuracy, a sum of local terms,

.. math:: T_k(\text{image}) = \sum_v n_v\, g_k(v, \bar q^2_v, n_v),

with :math:`g_k` the mean joint score of the events of voxel v given what the
voxel shows. A ResNet that downsamples to a global average must learn this
position-dependent sum from one number per image, and the CPU-sized one stayed 1.6
times the image's bound. Here, instead:

- the network is fully convolutional at the image's resolution: the input
  channels (mean q2 and occupancy, standardised by :class:`~models.resnet3d.ImagePreprocess`)
  plus three channels of voxel coordinates in [-1, 1] (so that a convolution knows
  where it is), a 3x3x3 stem and ``blocks`` residual blocks
  (:class:`~models.resnet3d.BasicBlock3d`) of ``width`` filters, then a 1x1x1
  convolution to K channels, multiplied by the occupancy: per voxel, K score sums;
- **stage 1** (:func:`pretrain_voxel_scores`) regresses those on the exact per-voxel
  sums of the simulator's joint scores (:func:`kernels.joint.voxel_score_sums`), with
  a squared loss, which learns their conditional mean given the image (SALLY, per
  voxel): an image of 16^3 voxels carries 4,096 labels, not one;
- the summary is the K voxel sums added over the image, standardised
  (``pooled_mean``, ``pooled_std``), and **stage 2** (:func:`models.score_summary.train_rho`)
  fits ``rho`` (an MLP) and the head on the summaries of fresh images at shifts
  spread beyond the evaluation range, everything before it frozen.

With hadronic nuisances (``nuisance_scores=n_u``, ``nuisance_points``) the network has
``n_u`` more output channels per shift of ``nuisance_points``: the voxel sums of the joint
scores in the whitened form factors at u = 0 (:func:`kernels.joint_nuisance.voxel_nuisance_score_sums`),
so the summary also says what the image says about u; rho, trained on images each drawn in
its own world from the prior, marginalises u.

Input and output as :class:`~models.resnet3d.ResNet3d`: raw images ``(batch, 2, B, B, B)``
(B fixed at construction), ``(batch,)`` or, with ``head="gaussian"``, ``(batch, 2)``.

>>> net = ScoreResNet3d((-1.0, 0.0, 1.0), bins=4, width=4, blocks=1, head="gaussian")
>>> net(torch.zeros(2, 2, 4, 4, 4)).shape, net.voxel_scores(torch.zeros(2, 2, 4, 4, 4)).shape
(torch.Size([2, 2]), torch.Size([2, 3, 4, 4, 4]))
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kernels.errors import ConfigError
from kernels.voxels import check_bins
from models import score_summary
from models.features import mlp
from models.heads import GaussianHead, check_head, finish_output, head_units
from models.resnet3d import BasicBlock3d, ImagePreprocess
from models.training import TrainConfig, train

__all__ = ["ScoreResNet3d", "add_voxel_trunk", "voxel_scores", "pretrain_voxel_scores", "image_summaries", "train_rho"]

_COUNT = 1


class ScoreResNet3d(nn.Module):
    """See the module docstring; ``hparams`` rebuilds it: ``ScoreResNet3d(**net.hparams)``."""

    def __init__(self, score_points, bins: int = 16, width: int = 16, blocks: int = 2, rho_hidden: int = 64,
                 rho_layers: int = 2, head: str = "gaussian", nuisance_scores: int = 0,
                 nuisance_points: tuple[float, ...] | None = None) -> None:
        super().__init__()
        points = tuple(float(d) for d in score_points)
        if len(points) < 2:
            raise ConfigError(f"a score summary needs at least 2 reference shifts, got {len(points)}")
        if width < 1 or blocks < 0:
            raise ConfigError(f"width must be >= 1 and blocks >= 0, got {width}, {blocks}")
        bins = check_bins(bins)
        nuisance_scores, u_points = score_summary.check_nuisance_scores(nuisance_scores, nuisance_points)
        self.hparams = dict(score_points=points, bins=bins, width=width, blocks=blocks, rho_hidden=rho_hidden,
                            rho_layers=rho_layers, head=check_head(head))
        if nuisance_scores:
            self.hparams.update(nuisance_scores=int(nuisance_scores), nuisance_points=u_points)
        self.nuisance_scores = int(nuisance_scores)
        self.nuisance_points = u_points or None
        self.score_points = points
        self.head_kind = head
        self.outputs = 1
        self.gaussian = GaussianHead() if head == "gaussian" else None
        k = self.n_scores = len(points) + self.nuisance_scores * len(u_points)
        add_voxel_trunk(self, bins, width, blocks, k)
        self.register_buffer("pooled_mean", torch.zeros(k))
        self.register_buffer("pooled_std", torch.ones(k))
        self.rho = mlp(k, rho_hidden, rho_layers, head_units(head, 1))

    @property
    def trunk(self) -> nn.ModuleList:
        """Everything stage 2 freezes."""
        return nn.ModuleList([self.stem, self.blocks, self.out])

    def fit_preprocess(self, images, max_images: int = 1024) -> ScoreResNet3d:
        self.preprocess.fit(images, max_images=max_images)
        return self

    def voxel_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel score sums ``(batch, K, B, B, B)``, in units of ``score_scale``."""
        return voxel_scores(self, x)

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """The image's K score sums ``(batch, K)`` (raw: before ``pooled_mean``/``pooled_std``)."""
        return self.voxel_scores(x).sum(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.summary(x) - self.pooled_mean) / self.pooled_std
        return finish_output(self.rho(p.float()), self.head_kind, self.outputs, self.gaussian)


def add_voxel_trunk(net: nn.Module, bins: int, width: int, blocks: int, k: int) -> None:
    """Register on ``net`` the fully convolutional trunk of the module docstring, with ``k`` output channels:
    ``preprocess``, ``coords``, ``stem``, ``blocks``, ``out`` and the labels' unit ``score_scale`` (the per-event
    rms of each joint score), in that order (the order of the state dict). :func:`voxel_scores` runs it."""
    net.preprocess = ImagePreprocess(2)
    c = torch.linspace(-1.0, 1.0, bins)
    net.register_buffer("coords", torch.stack(torch.meshgrid(c, c, c, indexing="ij"))[None])
    net.stem = nn.Sequential(nn.Conv3d(5, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True))
    net.blocks = nn.Sequential(*[BasicBlock3d(width, width) for _ in range(blocks)])
    net.out = nn.Conv3d(width, k, 1)
    net.register_buffer("score_scale", torch.ones(k))


def voxel_scores(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trunk of :func:`add_voxel_trunk` on raw images ``(batch, 2, B, B, B)``: per-voxel score sums
    ``(batch, K, B, B, B)``, in units of ``score_scale`` (the output channels times the occupancy)."""
    if x.ndim != 5 or x.shape[1] != 2 or tuple(x.shape[2:]) != tuple(net.coords.shape[2:]):
        raise ConfigError(f"expected images of shape (batch, 2, {', '.join(map(str, net.coords.shape[2:]))}), "
                          f"got {tuple(x.shape)}")
    h = torch.cat([net.preprocess(x), net.coords.expand(x.shape[0], -1, -1, -1, -1).to(x.dtype)], dim=1)
    counts = torch.nan_to_num(x[:, _COUNT : _COUNT + 1])
    y = net.out(net.blocks(net.stem(h)))
    bias = getattr(net, "voxel_bias", None)  # models.resnet_joint: each voxel's mean score per event
    return (y if bias is None else y + bias) * counts


class _Voxels(nn.Module):
    def __init__(self, net: ScoreResNet3d) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.voxel_scores(x)


def _tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float32).clone()
    return torch.from_numpy(np.array(a, dtype=np.float32))


def pretrain_voxel_scores(net: ScoreResNet3d, images, labels, val_images, val_labels, config: TrainConfig,
                          on_epoch=None) -> dict:
    """Stage 1: fit the input standardisation and ``score_scale`` (the per-event rms of each score, from the
    labels' squares over the events), then regress the voxel sums ``labels`` ``(n, K, B, B, B)`` (from
    :func:`kernels.joint.voxel_score_sums`) of ``images`` ``(n, 2, B, B, B)`` with ``config`` (loss "mse")."""
    x, t = _tensor(images), _tensor(labels)
    k = net.n_scores
    if t.ndim != 5 or t.shape[0] != x.shape[0] or t.shape[1] != k or t.shape[2:] != x.shape[2:]:
        raise ConfigError(f"labels must have shape ({x.shape[0]}, {k}, {', '.join(map(str, x.shape[2:]))}), "
                          f"got {tuple(t.shape)}")
    net.fit_preprocess(x.numpy())
    with torch.no_grad():
        events = torch.nan_to_num(x[:, _COUNT]).double().sum().clamp_min(1.0)
        net.score_scale.copy_(((t.double() ** 2).sum(dim=(0, 2, 3, 4)) / events).sqrt().clamp_min(1e-12))
    scale = net.score_scale.float()[None, :, None, None, None]
    if hasattr(net, "fit_voxel_bias"):  # a per-voxel table of the mean score per event (models.resnet_joint)
        net.fit_voxel_bias(x, t / scale)
    return train(_Voxels(net), TensorDataset(x, t / scale), TensorDataset(_tensor(val_images), _tensor(val_labels) / scale),
                 config, on_epoch=on_epoch)


@torch.no_grad()
def image_summaries(net: ScoreResNet3d, batches: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int = 32
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw summaries ``(M, K)`` and shifts ``(M,)`` of every image in ``batches`` (``(images, d)`` pairs)."""
    net.eval()
    dev = next(net.parameters()).device
    out, labels = [], []
    for x, d in batches:
        x = _tensor(x)
        for i in range(0, x.shape[0], batch_size):
            out.append(net.summary(x[i : i + batch_size].to(dev)).double().cpu())
        labels.append(_tensor(d))
    if not out:
        raise ConfigError("no images to summarise")
    return torch.cat(out), torch.cat(labels)


def train_rho(net: ScoreResNet3d, pooled, d, val_pooled, val_d, config: TrainConfig, on_epoch=None) -> dict:
    """Stage 2 (:func:`models.score_summary.train_rho`): rho on the summaries, the convolutions frozen."""
    return score_summary.train_rho(net, pooled, d, val_pooled, val_d, config, frozen=net.trunk, on_epoch=on_epoch)

r"""A 3D ResNet that regresses delta C9 from voxel images (the seed study's network).

Input: images of :mod:`kernels.voxels`, float32 ``(batch, C, B, B, B)`` with
channel 0 the mean q2 per voxel (NaN, or the fill value, where the voxel is
empty) and channel 1 the event count. Output: one value per image, shape
``(batch,)`` (or ``(batch, outputs)`` for ``outputs > 1``); with ``head="gaussian"``
a mean and a width :math:`(\mu, \sigma)` per image, ``(batch, 2)`` (see :mod:`models.heads`).

Architecture (He et al., arXiv:1512.03385, in 3D; ``depth=34`` is the seed study):

- :class:`ImagePreprocess`: empty voxels -> 0 in the q2 channel, channels
  standardised with statistics of the training images (buffers);
- stem: ``Conv3d(C, w, 7, stride 2, padding 3)``, BatchNorm3d, ReLU,
  ``MaxPool3d(3, stride 2, padding 1)``. On the CPU the stem pads its input
  explicitly (:class:`StemConv3d`): oneDNN's weight gradient of this
  convolution is garbage, from run to run, on 5^3 to 7^3 inputs (torch 2.13);

- four stages of basic blocks (two 3x3x3 convolutions with BatchNorm, a residual
  shortcut), ``[1,1,1,1]`` / ``[2,2,2,2]`` / ``[3,4,6,3]`` blocks for depth
  10 / 18 / 34, with ``w, 2w, 4w, 8w`` filters; the first block of stages 2-4
  has stride 2 and a 1x1x1 projection shortcut (Conv3d + BatchNorm);
- global average pooling (so any bin count works), then
  ``Linear(8w, 1000)``, ReLU, ``Dropout(0.5)``, ``Linear(1000, 1)`` (``Linear(1000, 2)``
  then :class:`models.heads.GaussianHead` for the Gaussian head).

The seed's training choices (MAE loss, SGD, lower the LR on a plateau, early
stopping) are :class:`models.training.TrainConfig` options, not part of the module.

>>> import torch
>>> net = ResNet3d(depth=10, width=4, head_width=8)
>>> net(torch.zeros(3, 2, 8, 8, 8)).shape
torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.heads import GaussianHead, check_head, finish_output, head_units

__all__ = ["STAGE_BLOCKS", "ImagePreprocess", "StemConv3d", "BasicBlock3d", "ResNet3d"]

#: Basic blocks per stage for each supported depth.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

_Q2, _COUNT = 0, 1


class ImagePreprocess(nn.Module):
    r"""Voxel images -> network input: empty voxels zeroed, channels standardised.

    - q2 channel (0): ``(q2 - mean) / std`` over occupied voxels, and 0 (the
      training mean) in empty ones. A voxel is empty where the q2 value is NaN or,
      when there is a count channel, where the count is 0, so images made with
      ``fill=0`` work too. The count channel tells empty voxels apart.
    - count channel (1): ``(log1p(count) - mean) / std`` (``log_counts=True``) or
      ``(count - mean) / std``.
    - any further channel: ``(x - mean) / std``.

    ``mean`` and ``std`` are buffers (saved with the model), fitted by :meth:`fit`
    on training images; before that they are 0 and 1.
    """

    def __init__(self, channels: int = 2, log_counts: bool = True) -> None:
        super().__init__()
        if channels < 1:
            raise ConfigError(f"images need at least one channel, got {channels}")
        self.channels = int(channels)
        self.log_counts = bool(log_counts)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, images, max_images: int = 1024, chunk: int = 16) -> ImagePreprocess:
        """Fit the channel statistics on training images.

        ``images``: an array ``(n, C, B, B, B)`` (a memory map is fine; it is read in
        chunks of ``chunk`` images) or a sequence of such arrays (e.g. one per scan
        point). At most ``max_images`` images in all are read, evenly strided.
        """
        arrays = [images] if hasattr(images, "shape") else list(images)
        if not arrays:
            raise ConfigError("cannot fit image statistics on no images")
        for a in arrays:
            if a.ndim != 5 or a.shape[1] != self.channels:
                raise ConfigError(f"expected images of shape (n, {self.channels}, B, B, B), got {a.shape}")
        total = sum(a.shape[0] for a in arrays)
        if total == 0:
            raise ConfigError("cannot fit image statistics on zero images")
        stride = max(1, math.ceil(total / max_images))
        s1 = np.zeros(self.channels)
        s2 = np.zeros(self.channels)
        n = np.zeros(self.channels)
        for a in arrays:
            idx = np.arange(0, a.shape[0], stride)
            for s in range(0, idx.size, chunk):
                x = np.asarray(a[idx[s : s + chunk]], dtype=np.float64)
                for c in range(self.channels):
                    v = x[:, c]
                    if c == _Q2:
                        occupied = ~np.isnan(v)
                        if self.channels > _COUNT:
                            occupied &= x[:, _COUNT] > 0
                        v = v[occupied]
                    elif c == _COUNT and self.log_counts:
                        v = np.log1p(v)
                    s1[c] += v.sum()
                    s2[c] += np.square(v).sum()
                    n[c] += v.size
        if n[_Q2] == 0:
            raise ConfigError("every voxel of the fitting images is empty: no q2 statistics")
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        self.mean.copy_(torch.as_tensor(mean))
        self.std.copy_(torch.as_tensor(np.maximum(std, 1e-6)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ConfigError(f"expected images of shape (batch, {self.channels}, B, B, B), got {tuple(x.shape)}")
        mean = self.mean.to(x.dtype)
        std = self.std.to(x.dtype)
        q2 = x[:, _Q2]
        empty = torch.isnan(q2)
        out = []
        if self.channels > _COUNT:
            counts = x[:, _COUNT]
            empty = empty | (counts <= 0)
        out.append(torch.where(empty, torch.zeros_like(q2), (q2 - mean[_Q2]) / std[_Q2]))
        if self.channels > _COUNT:
            c = torch.log1p(counts) if self.log_counts else counts
            out.append((c - mean[_COUNT]) / std[_COUNT])
        for c in range(2, self.channels):
            out.append((x[:, c] - mean[c]) / std[c])
        return torch.stack(out, dim=1)


class StemConv3d(nn.Conv3d):
    """The stem's ``Conv3d``; on the CPU, its zero padding is applied to the input before the convolution.

    The same function either way (the padding is zeros), but on the CPU oneDNN's
    backward for a 7^3, stride-2, padding-3 convolution returns an uninitialised
    weight gradient (and sometimes crashes) on inputs of 5^3 to 7^3 voxels
    (torch 2.13.0): training on such images gave NaN losses at random. With the
    padding made explicit, the convolution it runs has none, and its gradient
    is right. Parameter names are those of ``nn.Conv3d``, so checkpoints load either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.padding_mode != "zeros" or not any(self.padding):
            return super().forward(x)
        pad = [p for p in reversed(self.padding) for _ in range(2)]  # (W, W, H, H, D, D)
        return nn.functional.conv3d(nn.functional.pad(x, pad), self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convolutions with BatchNorm and a residual shortcut (1x1x1 projection when shapes change)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet3d(nn.Module):
    """3D ResNet regressor; see the module docstring. ``hparams`` rebuilds it: ``ResNet3d(**net.hparams)``.

    Parameters: ``depth`` (10, 18 or 34), ``width`` (filters of the stem and the
    first stage, default 64), ``in_channels`` (2: mean q2 and count),
    ``head_width`` (1000) and ``dropout`` (0.5) of the dense head, ``outputs``
    (1), ``log_counts`` (preprocess counts with log1p), ``zero_init_residual``
    (start every block as the identity: last BatchNorm weight 0), ``head`` ("point", or
    "gaussian": a mean and a sigma per output, :mod:`models.heads`; recorded in ``hparams``
    only when it is not "point").
    """

    def __init__(
        self,
        depth: int = 34,
        width: int = 64,
        in_channels: int = 2,
        head_width: int = 1000,
        dropout: float = 0.5,
        outputs: int = 1,
        log_counts: bool = True,
        zero_init_residual: bool = False,
        head: str = "point",
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ConfigError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth!r}")
        if width < 1 or head_width < 1 or outputs < 1:
            raise ConfigError(f"width, head_width and outputs must be >= 1, got {width}, {head_width}, {outputs}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.hparams = dict(
            depth=depth, width=width, in_channels=in_channels, head_width=head_width,
            dropout=dropout, outputs=outputs, log_counts=log_counts, zero_init_residual=zero_init_residual,
        )
        if check_head(head) != "point":
            self.hparams["head"] = head
        self.head_kind = head
        self.gaussian = GaussianHead() if head == "gaussian" else None
        self.outputs = outputs
        self.preprocess = ImagePreprocess(in_channels, log_counts=log_counts)
        self.stem = nn.Sequential(
            StemConv3d(in_channels, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages = []
        c_in = width
        for i, blocks in enumerate(STAGE_BLOCKS[depth]):
            c_out = width * 2**i
            layers = [BasicBlock3d(c_in, c_out, stride=1 if i == 0 else 2)]
            layers += [BasicBlock3d(c_out, c_out) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in, head_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_width, head_units(head, outputs)),
        )
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock3d):
                    nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector ``(batch, 8 * width)`` of raw images."""
        return self.pool(self.stages(self.stem(self.preprocess(x)))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return finish_output(self.head(self.features(x)), self.head_kind, self.outputs, self.gaussian)

    def fit_preprocess(self, images: np.ndarray | Sequence[np.ndarray], max_images: int = 1024) -> ResNet3d:
        """Fit the input standardisation on training images (see :meth:`ImagePreprocess.fit`)."""
        self.preprocess.fit(images, max_images=max_images)
        return self

r"""The 3D ResNet in several Wilson coefficients: per-voxel joint scores and a multivariate Gaussian head.

The fully convolutional trunk of :mod:`models.resnet_score` (:func:`~models.resnet_score.add_voxel_trunk`), plus a
learned table of each voxel's mean score per event (``voxel_bias``, started at its training mean:
:meth:`JointScoreResNet3d.fit_voxel_bias`, the trunk's last layer at zero), reads a voxel image of N events and
gives, per voxel, K x n score sums: the voxel's events' joint scores
:math:`\partial_c \ln q(z, c_k)` at K reference points :math:`c_k` of the coefficient space
(:func:`models.event_ratio.ratio_scores`), as well as the voxel's occupancy and mean q2 tell them. Their sum
over the image, over N, is the image's estimate of the set's log-likelihood gradient at every :math:`c_k`, per
event, whatever N; with ln N it goes to ``rho``, whose :class:`models.heads.MultivariateGaussianHead` gives the
estimate vector and the Cholesky factor of its covariance over :math:`\sqrt N`, as
:class:`models.deepsets_joint.JointDeepSets` does for sets of events:

.. math::

    s(\text{image}) = \frac1N \sum_v n_v\, g(v, \text{image}), \qquad
    (\hat c, L) = \rho\big(s, \ln N\big), \qquad \hat\Sigma = L L^T / N .

Training reuses the two stages of the delta C9 score ResNet: :func:`models.resnet_score.pretrain_voxel_scores`
regresses the exact per-voxel sums (:func:`kernels.joint.voxel_sums`), then
:func:`models.score_summary.train_rho` fits rho with the Gaussian NLL on the summaries of fresh images
(:func:`models.resnet_score.image_summaries`), the convolutions frozen. Unlike Deep Sets' summary, an image's
is not a sum over events (a voxel's mean q2 is a ratio), so rho's images are simulated, not synthetic.

>>> net = JointScoreResNet3d(2, [[0.0, 0.0], [1.0, -1.0]], bins=4, width=4, blocks=1, rho_hidden=8)
>>> images = set_images(np.random.default_rng(0).uniform([1.1, -1, -1, 0], [6, 1, 1, 6], (3, 500, 4)), 4)
>>> values, covs = net.estimate(images)
>>> images.shape, values.shape, covs.shape, bool(np.all(np.linalg.eigvalsh(covs) > 0))
((3, 2, 4, 4, 4), (3, 2), (3, 2, 2), True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from kernels.voxels import check_bins, voxelize
from models.features import mlp
from models.heads import MultivariateGaussianHead, multivariate_estimates
from models.resnet_score import add_voxel_trunk, voxel_scores
from models.summary_fit import emulator_model, gauss_newton

__all__ = ["JointScoreResNet3d", "set_images"]

_COUNT = 1


def set_images(sets, bins: int) -> np.ndarray:
    """Voxel images ``(M, 2, B, B, B)`` of sets of events ``(M, N, 4)`` (columns q2, cos_theta_mu, cos_theta_k,
    chi: :data:`kernels.event_store.COLUMNS`), one image per set (:func:`kernels.voxels.voxelize`)."""
    s = np.asarray(sets)
    if s.ndim != 3 or s.shape[-1] != 4:
        raise ConfigError(f"sets must have shape (M, N, 4), got {s.shape}")
    return voxelize(s[..., 1].ravel(), s[..., 2].ravel(), s[..., 3].ravel(), s[..., 0].ravel(), bins,
                    n_images=s.shape[0])


class JointScoreResNet3d(nn.Module):
    """The network of the module docstring; ``hparams`` rebuilds it: ``JointScoreResNet3d(**net.hparams)``.

    ``score_points`` (K, n): the reference shifts of the voxel scores; ``bins`` the images' (fixed);
    ``width`` / ``blocks`` of the trunk; ``rho_hidden`` / ``rho_layers`` of rho.
    """

    head_kind = "mvn"

    def __init__(self, n_coefficients: int, score_points, bins: int = 16, width: int = 16, blocks: int = 2,
                 rho_hidden: int = 128, rho_layers: int = 3) -> None:
        super().__init__()
        n = int(n_coefficients)
        pts = np.asarray(score_points, dtype=np.float64)
        if n < 1 or pts.ndim != 2 or pts.shape[1] != n or pts.shape[0] < 1:
            raise ConfigError(f"score_points must have shape (K >= 1, {n}), got {pts.shape}")
        if width < 1 or blocks < 0:
            raise ConfigError(f"width must be >= 1 and blocks >= 0, got {width}, {blocks}")
        bins = check_bins(bins)
        k = self.n_scores = pts.shape[0] * n
        self.hparams = dict(n_coefficients=n, score_points=pts.tolist(), bins=bins, width=width, blocks=blocks,
                            rho_hidden=rho_hidden, rho_layers=rho_layers)
        self.n = n
        self.score_points = pts
        add_voxel_trunk(self, bins, width, blocks, k)
        self.voxel_bias = nn.Parameter(torch.zeros(1, k, bins, bins, bins))
        nn.init.zeros_(self.out.weight)  # at the start, the table alone: each voxel's mean score per event
        nn.init.zeros_(self.out.bias)
        self.register_buffer("pooled_mean", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("pooled_std", torch.ones(k, dtype=torch.float64))
        self.head = MultivariateGaussianHead(n)
        self.rho = mlp(k + 1, rho_hidden, rho_layers, MultivariateGaussianHead.units(n))
        p = (n + 1) * (n + 2) // 2  # the monomials of c; the emulator's rows: m(c), then m(c) / N
        self.register_buffer("emulator_rate", torch.zeros(p, dtype=torch.float64))  # zero: no emulator, rho alone
        self.register_buffer("emulator_mean", torch.zeros(2 * p, k, dtype=torch.float64))
        self.register_buffer("emulator_cov", torch.zeros(2 * p, k, k, dtype=torch.float64))
        self.register_buffer("emulator_ridge", torch.zeros((), dtype=torch.float64))
        self.register_buffer("refine_min_events", torch.zeros((), dtype=torch.float64))
        self.register_buffer("box", torch.zeros(n, 2, dtype=torch.float64))

    @property
    def trunk(self) -> nn.ModuleList:
        """Everything the second stage freezes."""
        return nn.ModuleList([self.stem, self.blocks, self.out])

    def fit_preprocess(self, images, max_images: int = 1024) -> JointScoreResNet3d:
        self.preprocess.fit(images, max_images=max_images)
        return self

    @torch.no_grad()
    def fit_voxel_bias(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Set ``voxel_bias`` to each voxel's mean score per event over training images ``(M, 2, B, B, B)`` and their
        voxel score sums ``(M, K n, B, B, B)`` (in units of ``score_scale``): binned score regression, which the
        trunk then corrects from what the image shows (each voxel's mean q2, its neighbours)."""
        counts = torch.nan_to_num(images[:, _COUNT]).double().sum(dim=0)
        sums = labels.double().sum(dim=0)
        self.voxel_bias.copy_((sums / counts.clamp_min(1.0)).float()[None])

    def set_emulator(self, emulator: dict, box, min_events: int = 1) -> JointScoreResNet3d:
        """Store the summary's emulator (:func:`models.summary_fit.fit_emulator`) and the box ``(n, 2)`` rho was
        trained over: :meth:`estimate` then refines rho's estimates of images of ``min_events`` or more by the
        summary's own fit."""
        for name in ("rate", "mean", "cov", "ridge"):
            getattr(self, f"emulator_{name}").copy_(torch.as_tensor(np.asarray(emulator[name]), dtype=torch.float64))
        self.box.copy_(torch.as_tensor(np.asarray(box), dtype=torch.float64))
        self.refine_min_events.fill_(float(min_events))
        return self

    @property
    def has_emulator(self) -> bool:
        return bool(self.emulator_rate.abs().sum() > 0)

    def emulator(self) -> dict:
        return {name: getattr(self, f"emulator_{name}").cpu().numpy() for name in ("rate", "mean", "cov", "ridge")}

    def voxel_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel score sums ``(batch, K n, B, B, B)``, in units of ``score_scale``."""
        return voxel_scores(self, x)

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """The raw summary ``(batch, K n + 1)``: the voxel sums added over the image, over its N events, and ln N."""
        n_events = torch.nan_to_num(x[:, _COUNT]).double().sum(dim=(1, 2, 3))
        if bool((n_events <= 0).any()):
            raise ConfigError("an image holds no events")
        sums = self.voxel_scores(x).double().sum(dim=(2, 3, 4)) / n_events[:, None]
        return torch.cat([sums, torch.log(n_events)[:, None]], dim=1)

    def finish(self, raw: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """rho's raw outputs -> ``(batch, n, n + 1)``: the mean vector and the Cholesky factor over sqrt(N)."""
        return self.head(raw, torch.exp(-0.5 * pooled[:, -1]))

    def _from_summary(self, s: torch.Tensor) -> torch.Tensor:
        k = self.n_scores
        p = torch.cat([(s[:, :k] - self.pooled_mean) / self.pooled_std, s[:, k:]], dim=1).float()
        return self.finish(self.rho(p), p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._from_summary(self.summary(x))

    @torch.no_grad()
    def estimate(self, images, batch: int = 16, progress=None, refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Estimates ``(M, n)`` and covariances ``(M, n, n)`` of raw images ``(M, 2, B, B, B)`` (``progress(k)`` per
        batch): rho's, refined by the summary's own fit on its emulator when the network holds one and ``refine``,
        for images of its ``refine_min_events`` or more (a set whose fit does not converge inside the box keeps
        rho's)."""
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 5:
            raise ConfigError(f"images must have shape (M, 2, B, B, B), got {arr.shape}")
        if not (refine and self.has_emulator):
            return multivariate_estimates(self, arr, batch, progress)

        def forward(x):
            raw = self.summary(x)
            return self._from_summary(raw), raw

        start, cov, raw = multivariate_estimates(self, arr, batch, progress, forward=forward)
        values, covs = start.copy(), cov.copy()
        sizes = np.rint(np.exp(raw[:, -1]))
        emulator, box = self.emulator(), self.box.cpu().numpy()
        for n in np.unique(sizes[sizes >= float(self.refine_min_events)]):  # the 1/N term: one fit per set size
            rows = sizes == n
            c, c_cov, ok = gauss_newton(lambda c, n=n: emulator_model(emulator, c, n), raw[rows, :-1], n,
                                        start[rows], box)
            idx = np.flatnonzero(rows)[ok]
            values[idx], covs[idx] = c[ok], c_cov[ok]
        return values, covs

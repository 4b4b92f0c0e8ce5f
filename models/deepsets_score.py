r"""Two-stage training of a Deep Sets network with a score summary (``DeepSets(summary="score")``).

End to end, a Deep Set learns its per-event summary phi only through the error
of one number per set: thousands of sets carry little information about a
function of four variables, and the network stays far from the Cramér–Rao
bound. The simulator knows much more. For every simulated event it knows the
exact *joint score* :math:`t(z; d) = \partial_d \ln p(z \mid d)` of the true
kinematics z (:mod:`kernels.joint`), and regressing t on the observed x with a
squared loss learns :math:`E[t \mid x]`, the score of the observed event
(SALLY, Brehmer, Cranmer, Louppe and Pavez 2018). So:

1. **phi, event by event** (:func:`pretrain_phi`): phi's ``K`` outputs regress
   the standardised joint scores at the reference shifts ``score_points``
   :math:`d_1 < \dots < d_K`, on events whose true shifts spread over the
   range. Every event is a labelled example: a million events train phi in
   seconds. The mean of :math:`t(x; d_k)` over a set is the slope of the set's
   log-likelihood at :math:`d_k` over N, and the slopes at K points spanning
   the range carry (to the spacing's accuracy) everything the set says about
   d: the pooled vector is a near-sufficient statistic by construction.
2. **rho, on sets** (:func:`train_rho`): with phi frozen, each training set is
   reduced once to its pooled vector (:func:`pooled_vectors`, no gradient
   through 24,000 events), and rho, a small MLP with the Gaussian head, learns
   the value and the width from many sets, drawn fresh at shifts spread
   beyond the evaluation range so that no estimate is pulled in at the range's
   ends.

The two stages are pure PyTorch; where the events and sets come from is the
caller's business (``orchestrator.jobs.run`` draws them from the simulator,
through Ray).

>>> import torch
>>> from models.deepsets import DeepSets
>>> net = DeepSets(hidden=8, summary="score", score_points=(-1.0, 0.0, 1.0), head="gaussian")
>>> x = torch.randn(2000, 4); t = torch.stack([x[:, 0] * k for k in (1.0, 2.0, 3.0)], 1)
>>> hist = pretrain_phi(net, x, t, x, t, TrainConfig(epochs=2, batch_size=256, loss="mse"))
>>> net.score_std.shape, len(hist["val_loss"])
(torch.Size([3]), 2)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kernels.errors import ConfigError
from models import score_summary
from models.deepsets import DeepSets
from models.training import TrainConfig, train

__all__ = ["pretrain_phi", "pooled_vectors", "train_rho", "profile_moments"]


class _Phi(nn.Module):
    """phi alone, on events ``(n, 4)``: the standardised score predictions ``(n, K)``."""

    def __init__(self, net: DeepSets) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.phi(self.net.features(x))


def _need_score(net: DeepSets) -> None:
    if getattr(net, "summary", "learned") != "score":
        raise ConfigError("two-stage training needs a DeepSets with summary='score'")


def _tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float32).clone()
    return torch.from_numpy(np.array(a, dtype=np.float32))


def pretrain_phi(net: DeepSets, events, scores, val_events, val_scores, config: TrainConfig, on_epoch=None) -> dict:
    """Stage 1: fit the feature scaling and ``score_mean``/``score_std`` on ``events``/``scores``
    ``(n, 4)``/``(n, K)`` (K: phi's outputs, ``hparams["latent"]``), then train phi with ``config`` (its loss: "mse") on the standardised scores."""
    _need_score(net)
    x, t = _tensor(events), _tensor(scores)
    k = net.hparams["latent"]  # the delta C9 scores, then the nuisances' (DeepSets(nuisance_scores=...))
    if t.ndim != 2 or t.shape[1] != k or t.shape[0] != x.shape[0]:
        raise ConfigError(f"scores must have shape ({x.shape[0]}, {k}), got {tuple(t.shape)}")
    net.fit_features(x.numpy())
    with torch.no_grad():
        net.score_mean.copy_(t.double().mean(0))
        net.score_std.copy_(t.double().std(0).clamp_min(1e-12))

    def standard(s):
        return (_tensor(s) - net.score_mean) / net.score_std

    return train(_Phi(net), TensorDataset(x, standard(t)), TensorDataset(_tensor(val_events), standard(val_scores)),
                 config, on_epoch=on_epoch)


@torch.no_grad()
def pooled_vectors(net: DeepSets, sets: Iterable[tuple[np.ndarray, np.ndarray]], event_chunk: int = 1 << 15
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw pooled vectors (before ``pooled_mean``/``pooled_std``) of every set in ``sets``, an iterable of
    ``(x (B, N, 4), d (B,))`` batches; returns ``(pooled (M, K [+ 1]), d (M,))``."""
    _need_score(net)
    net.eval()
    dev = next(net.parameters()).device
    keep_mean, keep_std = net.pooled_mean.clone(), net.pooled_std.clone()
    net.pooled_mean.zero_()
    net.pooled_std.fill_(1.0)
    out, labels = [], []
    try:
        for x, d in sets:
            out.append(net.pooled(torch.from_numpy(np.array(x, dtype=np.float32)).to(dev), event_chunk=event_chunk).cpu())
            labels.append(_tensor(d))
    finally:
        net.pooled_mean.copy_(keep_mean)
        net.pooled_std.copy_(keep_std)
    if not out:
        raise ConfigError("no sets to pool")
    return torch.cat(out), torch.cat(labels)


def train_rho(net: DeepSets, pooled: torch.Tensor, d: torch.Tensor, val_pooled: torch.Tensor, val_d: torch.Tensor,
              config: TrainConfig, on_epoch=None) -> dict:
    """Stage 2: set ``pooled_mean``/``pooled_std`` from the training vectors (raw, from :func:`pooled_vectors`),
    freeze phi, and train rho on ``(pooled, d)`` with ``config`` (:func:`models.score_summary.train_rho`)."""
    _need_score(net)
    return score_summary.train_rho(net, pooled, d, val_pooled, val_d, config, frozen=net.phi, on_epoch=on_epoch)


@torch.no_grad()
def profile_moments(net: DeepSets, chunks: Iterable[tuple[np.ndarray, np.ndarray]], n_c: int = 1, event_chunk: int = 1 << 15
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phi's pooled moments over a pool for the summary's fit in (delta C9, u)
    (:func:`models.summary_fit.nuisance_moments_model`): ``chunks`` of ``(events (m, 4), weights (m, P_c Q))``
    (:func:`kernels.joint_nuisance.nuisance_mixture_weights`). Returns ``(m0 (P_c Q,), m1 (P_c Q, L), m2c
    (P_c, L, L))``, each the mean over the pool's events; ``m2c`` from the weights of ``m(c) (x) 1`` only."""
    _need_score(net)
    net.eval()
    dev = next(net.parameters()).device
    P = (n_c + 1) * (n_c + 2) // 2
    m0 = m1 = m2 = None
    M = 0
    for ev, w in chunks:
        w = np.asarray(w, dtype=np.float64)
        x = np.asarray(ev, dtype=np.float32)
        if x.ndim != 2 or w.ndim != 2 or w.shape[0] != x.shape[0] or w.shape[1] % P:
            raise ConfigError(f"events (m, 4) and weights (m, {P} Q) must match, got {x.shape} and {w.shape}")
        phi = np.concatenate([net.phi(net.features(torch.from_numpy(x[a:a + event_chunk]).to(dev))).double().cpu().numpy()
                              for a in range(0, x.shape[0], event_chunk)])
        wc = w[:, :: w.shape[1] // P]
        parts = (w.sum(0), w.T @ phi, (wc[:, :, None] * phi[:, None, :]).reshape(x.shape[0], -1).T @ phi)
        m0, m1, m2 = parts if m0 is None else (m0 + parts[0], m1 + parts[1], m2 + parts[2])
        M += x.shape[0]
    if not M:
        raise ConfigError("no events for the summary's moments")
    return m0 / M, m1 / M, (m2 / M).reshape(P, phi.shape[1], phi.shape[1])

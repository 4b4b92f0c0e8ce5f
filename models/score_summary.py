r"""The second stage shared by the score-summary networks: rho on frozen, pooled joint-score summaries.

A score-summary network (:class:`models.deepsets.DeepSets` with ``summary="score"``,
:class:`models.resnet_score.ScoreResNet3d`) reduces a set or an image to K numbers,
its estimated log-likelihood slopes at K reference shifts, then standardises them
(buffers ``pooled_mean``, ``pooled_std``) and maps them with ``rho`` (an MLP) and its
head to a value, or a value and a width. :func:`train_rho` fits that map on the
summaries of many fresh sets or images, with everything before it frozen.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from models.heads import finish_output
from models.training import TrainConfig, train

__all__ = ["check_nuisance_scores", "train_rho"]


def check_nuisance_scores(nuisance_scores, nuisance_points) -> tuple[int, tuple[float, ...]]:
    """``(n_u, points)``: the number of nuisances whose joint scores a score summary also regresses, and the shifts
    where it takes them; both given or neither (0, ()). Anything else is a one-line ConfigError.

    >>> check_nuisance_scores(3, [0.5]), check_nuisance_scores(0, None)
    ((3, (0.5,)), (0, ()))
    """
    from kernels.errors import ConfigError

    points = tuple(float(d) for d in (nuisance_points or ()))
    if int(nuisance_scores) < 0 or bool(nuisance_scores) != bool(points):
        raise ConfigError("nuisance scores need both their number (nuisance_scores > 0) and the shifts where they "
                          f"are taken (nuisance_points), got {nuisance_scores}, {nuisance_points}")
    return int(nuisance_scores), points


class _Rho(nn.Module):
    """rho and the head alone, on standardised summaries ``(n, K [+ extra])``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.hparams = {"head": net.head_kind}

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        n = self.net
        if hasattr(n, "finish"):  # a head that reads the summary too (models.deepsets_joint: N)
            return n.finish(n.rho(pooled), pooled)
        return finish_output(n.rho(pooled), n.head_kind, n.outputs, n.gaussian)


def train_rho(net: nn.Module, pooled: torch.Tensor, d: torch.Tensor, val_pooled: torch.Tensor, val_d: torch.Tensor,
              config: TrainConfig, frozen: nn.Module, on_epoch=None) -> dict:
    """Set ``net.pooled_mean``/``pooled_std`` from the raw training summaries (their first K columns, K the
    buffers' size; later columns, e.g. ln N, pass as they are), freeze ``frozen``, and train ``net.rho`` on
    ``(pooled, d)`` with ``config``; returns the training history."""
    k = net.pooled_mean.numel()
    with torch.no_grad():
        net.pooled_mean.copy_(pooled[:, :k].double().mean(0))
        net.pooled_std.copy_(pooled[:, :k].double().std(0).clamp_min(1e-12))

    def scaled(p):  # on the summaries' device (the CPU, usually), whatever the network's
        p = p.clone().double()
        p[:, :k] = (p[:, :k] - net.pooled_mean.to(p.device)) / net.pooled_std.to(p.device)
        return p.float()

    params = list(frozen.parameters())
    for p in params:
        p.requires_grad_(False)
    try:
        return train(_Rho(net), TensorDataset(scaled(pooled), d.float()), TensorDataset(scaled(val_pooled), val_d.float()),
                     config, on_epoch=on_epoch)
    finally:
        for p in params:
            p.requires_grad_(True)

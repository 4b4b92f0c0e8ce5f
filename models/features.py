r"""Per-event input features shared by the event-level networks (Deep Sets, the classifier).

An event is a row ``(q2, cos_theta_mu, cos_theta_k, chi)``, the column order of
:data:`kernels.event_store.COLUMNS` and of the sets ``(M, N, 4)`` that
:func:`kernels.likelihood.fit_sets` takes. The angle chi is periodic, so it is
encoded as ``(cos chi, sin chi)``: chi = 0 and chi = 2 pi are the same event,
and the network never sees the seam. The five features

.. math::

    f(x) = \big(q^2,\ \cos\theta_\mu,\ \cos\theta_K,\ \cos\chi,\ \sin\chi\big)

are then standardised, ``(f - mean) / std``, with statistics fitted on
training events (:meth:`EventFeatures.fit`) and stored as buffers, so they
travel with the model's ``state_dict``.

>>> import torch
>>> enc = EventFeatures()
>>> enc(torch.tensor([[3.0, 0.5, -0.5, 0.0]])).tolist()   # not fitted: mean 0, std 1
[[3.0, 0.5, -0.5, 1.0, 0.0]]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError

__all__ = ["N_EVENT_VARIABLES", "N_FEATURES", "encode_events", "as_events", "EventFeatures", "mlp"]

#: Columns per event: q2, cos_theta_mu, cos_theta_k, chi.
N_EVENT_VARIABLES = 4
#: Features per event after the (cos chi, sin chi) encoding.
N_FEATURES = 5


def encode_events(x: torch.Tensor) -> torch.Tensor:
    """Raw features ``(..., 5)`` of events ``(..., 4)``: chi becomes (cos chi, sin chi)."""
    chi = x[..., 3:4]
    return torch.cat([x[..., :3], torch.cos(chi), torch.sin(chi)], dim=-1)


def as_events(events) -> np.ndarray:
    """Events as a float32 array ``(..., 4)``; a one-line ConfigError on any other last axis."""
    arr = np.asarray(events, dtype=np.float32)
    if arr.ndim < 1 or arr.shape[-1] != N_EVENT_VARIABLES:
        raise ConfigError(
            f"events must have a last axis of {N_EVENT_VARIABLES} (q2, cos_theta_mu, cos_theta_k, chi), "
            f"got shape {arr.shape}; a (4, n) sampler array needs a transpose (arr.T)"
        )
    return arr


class EventFeatures(nn.Module):
    """``(..., 4)`` events -> ``(..., 5)`` standardised features (buffers ``mean``, ``std``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))

    @torch.no_grad()
    def fit(self, events, max_events: int = 1_000_000) -> EventFeatures:
        """Set ``mean`` and ``std`` from training events ``(n, 4)`` (at most ``max_events``, evenly strided)."""
        arr = as_events(events).reshape(-1, N_EVENT_VARIABLES)
        if arr.shape[0] == 0:
            raise ConfigError("cannot fit feature statistics on zero events")
        stride = max(1, arr.shape[0] // max_events)
        f = encode_events(torch.from_numpy(np.ascontiguousarray(arr[::stride])).double())
        self.mean.copy_(f.mean(0))
        self.std.copy_(f.std(0).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (encode_events(x) - self.mean) / self.std


def mlp(n_in: int, hidden: int, layers: int, n_out: int, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` hidden Linear+ReLU(+Dropout) layers of width ``hidden``, then a Linear to ``n_out``."""
    if layers < 0 or hidden < 1:
        raise ConfigError(f"an MLP needs layers >= 0 and hidden >= 1, got layers={layers}, hidden={hidden}")
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout:
            mods.append(nn.Dropout(dropout))
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)

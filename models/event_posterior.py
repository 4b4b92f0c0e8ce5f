r"""A per-event likelihood ratio, quadratic in delta C9, learned from the simulator's joint score.

**The model.** Per event, the pdf of every level is a ratio of quadratics in the
shift d: ``p(x|d) = Q(x; d) / Gamma(d)`` (generator level: ``Q = G``; with acceptance,
smearing and a background fraction f, ``Q = (1 - f) int R eps G + f B Gamma`` is still
quadratic in d, :mod:`kernels.joint`). Relative to a reference value ``d_ref``, with
``delta = d - d_ref``,

.. math::

    r(x, d) = \frac{p(x \mid d)}{p(x \mid d_\text{ref})} = \frac{q(x, d)}{Z(d)},\qquad
    q(x, d) = \big(1 + u(x)\,\delta\big)^2 + \big(v(x)\,\delta\big)^2,

the general positive quadratic in d with ``q(x, d_ref) = 1`` (a network outputs u and v),
and ``Z(d) = Gamma(d) / Gamma(d_ref)``.

**Exact normalisation.** ``r`` must average to 1 over ``p(x|d_ref)`` at every d, so

.. math::

    Z(d) = E_{x \sim p(\cdot|d_\text{ref})}\big[q(x, d)\big]
         = 1 + 2 E[u]\,\delta + E[u^2 + v^2]\,\delta^2,

three pooled means over reference events drawn at ``d_ref``: :meth:`EventLikelihoodNet.calibrate`.
The reference density is ``p(x|d_ref)`` and no other: the head fixes ``q(x, d_ref) = 1``, so
r is a ratio to that density; a sample pooled over many d has a density the head does not
model (using it would need the model's own ratios as importance weights, and its errors
would enter Z). With Z calibrated, ``p(x|d_ref) q(x, d) / Z(d)`` is a normalised density
for every d whatever the network, so the set log-likelihood

.. math::

    \ln L(d) = \sum_{e=1}^{N} \ln q(x_e, d) - N \ln Z(d)

carries no ``N * epsilon(d)`` normalisation error beyond Z's statistics. From M reference
events the slope of ``ln Z`` at d has the standard error
``sqrt(Var_ref[r(x, d) t(x, d)] / M) = sqrt(E_d[r t^2] / M)`` (:attr:`EventLikelihoodNet.z_cov`,
:meth:`EventLikelihoodNet.slope_error`), which moves a set's estimate by ``slope_error / I(d)``:
``sqrt(N / M)`` sigma_CRB at ``d_ref`` (where ``Var_ref[2u] = I``), more where the ratio r
spreads. The simulator's joint quadratic ``q*(z, d)`` of each reference event has the exact
mean ``Gamma(d) / Gamma(d_ref)`` and ``E[q* | x] = q``, so ``Z = Gamma ratio + mean(q - q*)``
(:func:`calibrate_quadratic` with ``control``) is the same expectation with the variance of
``q - q*`` only: about 10 times smaller errors at the same M. Hence :data:`REFERENCE_EVENTS`.

**Training: score regression.** The model's score is analytic,

.. math::

    \hat t(x, d) = \partial_d \ln \hat p(x \mid d)
        = \frac{2u (1 + u\delta) + 2 v^2 \delta}{q(x, d)} - \frac{Z'(d)}{Z(d)},

and :meth:`EventLikelihoodNet.forward` returns it for events x at their own d. A squared
loss against the joint score ``t(z; d)`` of the simulator (:mod:`kernels.joint`; SALLY /
RASCAL) is minimised by ``E[t | x, d]``, the true score. During training Z comes from the
theory tables (:meth:`~EventLikelihoodNet.set_normalisation`, the level's ``Gamma_p``), so
the target is exact; afterwards :meth:`~EventLikelihoodNet.calibrate` replaces it with the
reference mean. d is drawn continuously over a range wider than the one evaluated
(:func:`kernels.joint.sample_joint`); the network sees x only, the d dependence is the
quadratic, so ``ln L(d)`` is defined for every d.

**Posterior.** With a flat prior on ``prior_range`` (wide: no cut at the training range),
:meth:`~EventLikelihoodNet.continuous_moments` returns the mean and standard deviation of
``exp(ln L(d))``, evaluated on a grid over the whole range, then on a fine grid of +-12
widths around the first pass's mean.

>>> import torch
>>> net = EventLikelihoodNet(hidden=4, layers=1)
>>> _ = net.set_normalisation([1.0, 0.2, 0.1])      # Gamma(d) = 1 + 0.2 d + 0.1 d^2, d_ref = 0
>>> [round(float(c), 3) for c in net.z_coef]          # Z(d) = Gamma(d) / Gamma(0)
[1.0, 0.2, 0.1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from kernels import angular
from kernels.errors import ConfigError
from models.features import N_EVENT_VARIABLES, N_FEATURES, EventFeatures, as_events, encode_events, mlp

__all__ = [
    "REFERENCE_EVENTS",
    "Calibration",
    "quadratic_log_q",
    "quadratic_dlog_q",
    "calibrate_quadratic",
    "smooth_moments",
    "EventLikelihoodNet",
]

#: Reference events for :meth:`EventLikelihoodNet.calibrate`, with the joint quadratics as control
#: variate (:func:`kernels.joint.reference_sample`). Measured at the generator level with a trained net:
#: slope errors of ln Z that move a 24k-event estimate by 0.007 (d = 0) to 0.015 (d = -2) sigma_CRB.
#: Without the control variate the error is about sqrt(N / M) sigma_CRB at d_ref and grows away from
#: it (0.08 to 0.10 at M = 4M): use M >= 10M then.
REFERENCE_EVENTS = 1_000_000

_Q_EPS = 1e-12


def quadratic_log_q(uv: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``ln q = ln((1 + u delta)^2 + (v delta)^2)`` for head outputs ``uv`` (..., 2) and ``delta`` broadcastable to (...,)."""
    u, v = uv[..., 0], uv[..., 1]
    return torch.log((1 + u * delta) ** 2 + (v * delta) ** 2 + _Q_EPS)


def quadratic_dlog_q(uv: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``d/dd ln q = (2u (1 + u delta) + 2 v^2 delta) / q``, same shapes as :func:`quadratic_log_q`."""
    u, v = uv[..., 0], uv[..., 1]
    a = 1 + u * delta
    q = a * a + (v * delta) ** 2 + _Q_EPS
    return 2 * (u * a + v * v * delta) / q


class Calibration(NamedTuple):
    """Z(d) = 1 + c1 delta + c2 delta^2 from M reference events: ``coef`` (1, c1, c2), ``cov`` (2, 2) of (c1, c2)."""

    coef: np.ndarray
    cov: np.ndarray
    n_events: int


@torch.no_grad()
def calibrate_quadratic(uv_of: Callable[[torch.Tensor], torch.Tensor], reference, chunk: int = 1 << 16,
                        device: torch.device | None = None, control=None, control_mean=None) -> Calibration:
    r"""Pooled means ``c1 = E[2u]``, ``c2 = E[u^2 + v^2]`` (float64) and their covariance over reference events (M, 4).

    ``uv_of`` maps a float32 tensor of events (n, 4) to head outputs (n, 2); ``reference`` is
    an array (or memory map) of events drawn at the reference value, read ``chunk`` at a time.

    ``control`` (M, 2) with exactly known mean ``control_mean`` (2,): a control variate, e.g. the
    simulator's joint quadratic of each reference event (:func:`kernels.joint.joint_quadratic`);
    then ``c = control_mean + mean(y - control)``, the same expectation with the variance of
    ``y - control`` (tiny when the network is close to the truth) instead of that of y.
    """
    ref = reference
    if getattr(ref, "ndim", None) != 2 or ref.shape[1] != N_EVENT_VARIABLES or ref.shape[0] < 2:
        raise ConfigError(f"reference events must have shape (M >= 2, 4), got {getattr(ref, 'shape', None)}")
    m = ref.shape[0]
    if (control is None) != (control_mean is None):
        raise ConfigError("give both control and control_mean, or neither")
    if control is not None:
        control = np.asarray(control, dtype=np.float64)
        control_mean = np.asarray(control_mean, dtype=np.float64).ravel()
        if control.shape != (m, 2) or control_mean.shape != (2,):
            raise ConfigError(f"control must have shape ({m}, 2) and control_mean (2,), got {control.shape}, {control_mean.shape}")
    s = torch.zeros(2, dtype=torch.float64)
    ss = torch.zeros(2, 2, dtype=torch.float64)
    for a in range(0, m, max(1, int(chunk))):
        x = torch.as_tensor(np.ascontiguousarray(ref[a : a + chunk], dtype=np.float32))
        uv = uv_of(x.to(device) if device is not None else x).double().cpu()
        y = torch.stack([2 * uv[:, 0], uv[:, 0] ** 2 + uv[:, 1] ** 2], dim=1)
        if control is not None:
            y = y - torch.from_numpy(control[a : a + chunk])
        s += y.sum(0)
        ss += y.T @ y
    mean = s / m
    cov = (ss / m - torch.outer(mean, mean)) * (m / (m - 1)) / m
    coef = mean.numpy() + (control_mean if control is not None else 0.0)
    return Calibration(np.r_[1.0, coef], cov.numpy(), int(m))


def _trapezoid_moments(x: np.ndarray, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of densities ``exp(logp)`` sampled on rows ``x`` (M, F) (uniform per row), trapezoid weights."""
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    p[:, [0, -1]] *= 0.5
    z = p.sum(axis=1)
    mean = (p * x).sum(axis=1) / z
    var = (p * (x - mean[:, None]) ** 2).sum(axis=1) / z
    return mean, np.sqrt(np.maximum(var, 0.0))


def smooth_moments(log_likelihood: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, n_sets: int,
                   coarse: int = 221, fine: int = 201, zoom: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std ``(M,)`` for a flat prior on ``[lo, hi]`` of a smooth ``ln L(d)``.

    ``log_likelihood(d (M, F)) -> (M, F)``. First pass: ``coarse`` points over the whole range;
    second: ``fine`` points over ``mean +- zoom * max(std, spacing)`` (clipped to the range).
    """
    x1 = np.tile(np.linspace(lo, hi, coarse), (n_sets, 1))
    mean, std = _trapezoid_moments(x1, log_likelihood(x1))
    half = zoom * np.maximum(std, (hi - lo) / (coarse - 1))
    a, b = np.maximum(mean - half, lo), np.minimum(mean + half, hi)
    x2 = a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, fine)[None, :]
    return _trapezoid_moments(x2, log_likelihood(x2))


class AngularFeatures(nn.Module):
    r"""``(..., 4)`` events -> ``(..., 17)`` standardised features: :class:`EventFeatures`' five and the twelve f_i.

    The rate is linear in the angular functions ``f_i(cos_l, cos_k, chi)`` (:func:`kernels.angular.basis`)
    with q2-dependent coefficients, so u and v are ratios of linear forms in them: the network
    learns smooth functions of q2 instead of products of angles. The basis is computed by
    :mod:`kernels.angular` (numpy, on the CPU; no gradient flows to the events).
    """

    n_out = N_FEATURES + 12

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(self.n_out))
        self.register_buffer("std", torch.ones(self.n_out))

    @staticmethod
    def encode(x: torch.Tensor) -> torch.Tensor:
        ev = x.detach().to("cpu", torch.float32).numpy()
        f = torch.from_numpy(angular.basis(ev[..., 1], ev[..., 2], ev[..., 3], dtype=np.float32)).to(x.device)
        return torch.cat([encode_events(x), f.to(x.dtype)], dim=-1)

    @torch.no_grad()
    def fit(self, events, max_events: int = 1_000_000) -> AngularFeatures:
        """Set ``mean`` and ``std`` from training events ``(n, 4)`` (at most ``max_events``, evenly strided)."""
        arr = as_events(events).reshape(-1, N_EVENT_VARIABLES)
        if arr.shape[0] == 0:
            raise ConfigError("cannot fit feature statistics on zero events")
        f = self.encode(torch.from_numpy(np.ascontiguousarray(arr[:: max(1, arr.shape[0] // max_events)]))).double()
        self.mean.copy_(f.mean(0))
        self.std.copy_(f.std(0).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.encode(x) - self.mean.to(x.dtype)) / self.std.to(x.dtype)


#: Input encodings of :class:`EventLikelihoodNet`.
FEATURES = {"plain": EventFeatures, "angular": AngularFeatures}


class EventLikelihoodNet(nn.Module):
    """MLP over one event's features -> (u, v): the quadratic per-event likelihood ratio (module docstring).

    ``d_ref``: the reference value (q = 1 there); ``train_range``: the d range trained on
    (recorded); ``prior_range``: the flat prior of the set posterior, wider than any evaluation.
    Buffers: ``z_coef`` (1, c1, c2) of Z(d) in powers of d - d_ref, ``z_cov`` (their
    calibration covariance), ``z_state`` (0 unset, 1 from tables, 2 calibrated).
    ``hparams`` rebuilds it: ``EventLikelihoodNet(**net.hparams)``.
    """

    head = "parametrized"

    def __init__(self, hidden: int = 64, layers: int = 3, dropout: float = 0.0, d_ref: float = 0.0,
                 train_range: tuple[float, float] = (-3.0, 2.0), prior_range: tuple[float, float] = (-6.0, 5.0),
                 features: str = "angular") -> None:
        super().__init__()
        lo, hi = (float(v) for v in prior_range)
        if not hi > lo:
            raise ConfigError(f"prior_range must be LO < HI, got {prior_range!r}")
        if features not in FEATURES:
            raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        self.hparams = dict(hidden=hidden, layers=layers, dropout=dropout, d_ref=float(d_ref),
                            train_range=tuple(float(v) for v in train_range), prior_range=(lo, hi), features=features)
        self.d_ref = float(d_ref)
        self.prior_range = (lo, hi)
        self.features = FEATURES[features]()
        n_in = self.features.mean.numel()
        self.net = mlp(n_in, hidden, layers, 2, dropout=dropout)
        with torch.no_grad():  # start flat: q = 1, every d alike
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()
        self.register_buffer("z_coef", torch.tensor([1.0, float("nan"), float("nan")], dtype=torch.float64))
        self.register_buffer("z_cov", torch.zeros(2, 2, dtype=torch.float64))
        self.register_buffer("z_state", torch.tensor(0))

    # --- the head ----------------------------------------------------------------------

    def fit_features(self, events, max_events: int = 1_000_000) -> EventLikelihoodNet:
        """Fit the event standardisation on training events ``(n, 4)``."""
        self.features.fit(events, max_events=max_events)
        return self

    def uv(self, x: torch.Tensor) -> torch.Tensor:
        """Head outputs ``(..., 2)`` (u, v) of events ``(..., 4)``."""
        if x.shape[-1] != N_EVENT_VARIABLES:
            raise ConfigError(f"events must have a last axis of {N_EVENT_VARIABLES}, got {tuple(x.shape)}")
        return self.net(self.features(x))

    def _z(self) -> torch.Tensor:
        if int(self.z_state) == 0:
            raise ConfigError("Z(d) is not set: call set_normalisation(Gamma_p) before training, calibrate(reference) after")
        return self.z_coef

    def log_z(self, d) -> torch.Tensor:
        """``ln Z(d)`` (float64) at values ``d`` (any shape)."""
        c = self._z()
        delta = torch.as_tensor(d, dtype=torch.float64, device=c.device) - self.d_ref
        return torch.log(c[0] + c[1] * delta + c[2] * delta**2)

    def dlog_z(self, d) -> torch.Tensor:
        """``d/dd ln Z(d)`` (float64) at values ``d`` (any shape)."""
        c = self._z()
        delta = torch.as_tensor(d, dtype=torch.float64, device=c.device) - self.d_ref
        return (c[1] + 2 * c[2] * delta) / (c[0] + c[1] * delta + c[2] * delta**2)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The model's score ``d/dd ln p(x|d)`` ``(...)`` of events ``(..., 4)`` at their values ``d`` ``(...)``."""
        uv = self.uv(x)
        d = d.to(uv.dtype)
        return quadratic_dlog_q(uv, d - self.d_ref) - self.dlog_z(d).to(uv.dtype)

    def log_ratio(self, x: torch.Tensor, d) -> torch.Tensor:
        """``ln r(x, d) = ln p(x|d)/p(x|d_ref)`` ``(...)`` (float64) at values ``d`` broadcastable to ``x.shape[:-1]``."""
        uv = self.uv(x).double()
        d = torch.as_tensor(d, dtype=torch.float64, device=uv.device)
        return quadratic_log_q(uv, d - self.d_ref) - self.log_z(d)

    # --- the normalisation ---------------------------------------------------------------

    @torch.no_grad()
    def set_normalisation(self, gamma) -> EventLikelihoodNet:
        """Set Z(d) = Gamma(d) / Gamma(d_ref) from the level's ``Gamma_p`` (coefficients of 1, d, d^2).

        The exact normaliser of the true model, for training (``kernels.joint.normalisation``).
        """
        g = np.asarray(gamma, dtype=np.float64).ravel()
        if g.shape != (3,) or not np.all(np.isfinite(g)):
            raise ConfigError(f"Gamma_p must hold 3 finite coefficients (1, d, d^2), got {g.tolist()}")
        r = self.d_ref
        at_ref = g[0] + g[1] * r + g[2] * r * r
        self.z_coef.copy_(torch.tensor([1.0, (g[1] + 2 * g[2] * r) / at_ref, g[2] / at_ref], dtype=torch.float64))
        self.z_cov.zero_()
        self.z_state.fill_(1)
        return self

    @torch.no_grad()
    def calibrate(self, reference, chunk: int = 1 << 16, control=None, control_mean=None) -> Calibration:
        """Fix Z(d) by the pooled means over ``reference`` events (M, 4) drawn at ``d_ref`` (module docstring).

        ``control``, ``control_mean``: the reference events' joint quadratics and their exact
        mean (:func:`kernels.joint.reference_sample`), a control variate that shrinks the
        calibration's statistical error many times (:func:`calibrate_quadratic`).
        Sets ``z_coef``, ``z_cov``; returns the :class:`Calibration`. Runs in eval mode on the model's device.
        """
        was = self.training
        self.eval()
        try:
            cal = calibrate_quadratic(self.uv, reference, chunk, device=self.z_coef.device,
                                      control=control, control_mean=control_mean)
        finally:
            self.train(was)
        self.z_coef.copy_(torch.as_tensor(cal.coef))
        self.z_cov.copy_(torch.as_tensor(cal.cov))
        self.z_state.fill_(2)
        return cal

    def slope_error(self, d) -> np.ndarray:
        """Standard error of ``d/dd ln Z(d)`` from the calibration statistics, at values ``d``.

        It shifts the estimate of a set by about ``slope_error / I(d)`` (I per event), i.e. by
        ``slope_error * sqrt(N / I)`` sigma_CRB for sets of N events.
        """
        c = self.z_coef.cpu().numpy()
        x = np.asarray(d, dtype=np.float64) - self.d_ref
        z = c[0] + c[1] * x + c[2] * x * x
        dz = c[1] + 2 * c[2] * x
        g = np.stack([1 / z - dz * x / z**2, 2 * x / z - dz * x * x / z**2])  # d(Z'/Z)/d(c1, c2)
        return np.sqrt(np.einsum("i...,ij,j...->...", g, self.z_cov.cpu().numpy(), g))

    # --- sets ------------------------------------------------------------------------------

    @torch.no_grad()
    def set_uv(self, sets: torch.Tensor, event_chunk: int = 1 << 16) -> torch.Tensor:
        """Head outputs ``(M, N, 2)`` (float64) of sets ``(M, N, 4)``, ``event_chunk`` events per set at a time."""
        if sets.ndim != 3:
            raise ConfigError(f"sets must have shape (M, N, 4), got {tuple(sets.shape)}")
        step = max(1, int(event_chunk))
        return torch.cat([self.uv(sets[:, s : s + step]).double() for s in range(0, sets.shape[1], step)], dim=1)

    @staticmethod
    def _ell(uv: torch.Tensor, delta: torch.Tensor, chunk: int = 1 << 13) -> torch.Tensor:
        """``sum_e ln q(x_e, d)`` ``(M, D)`` from ``uv`` (M, N, 2) at ``delta`` (M, D) or (D,)."""
        dl = delta if delta.ndim == 2 else delta.expand(uv.shape[0], -1)
        out = torch.zeros(dl.shape, dtype=torch.float64, device=uv.device)
        for s in range(0, uv.shape[1], chunk):
            out += quadratic_log_q(uv[:, s : s + chunk, None, :], dl[:, None, :]).sum(dim=1)
        return out

    @torch.no_grad()
    def log_likelihood_at(self, sets: torch.Tensor, d, event_chunk: int = 1 << 16) -> torch.Tensor:
        """Set log-likelihood ``sum_e ln q(x_e, d) - N ln Z(d)`` ``(M, D)`` at values ``d`` (D,) or (M, D)."""
        uv = self.set_uv(sets, event_chunk)
        d = torch.as_tensor(d, dtype=torch.float64, device=uv.device)
        return self._ell(uv, d - self.d_ref) - sets.shape[1] * self.log_z(d)

    @torch.no_grad()
    def continuous_moments(self, sets: torch.Tensor, coarse: int = 221, fine: int = 201,
                           event_chunk: int = 1 << 16, prior_range: tuple[float, float] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and width ``(M,)`` for a flat prior on ``prior_range`` (default: the net's; :func:`smooth_moments`)."""
        uv = self.set_uv(sets, event_chunk)
        n = sets.shape[1]

        def ell(d: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(d, dtype=torch.float64, device=uv.device)
            return (self._ell(uv, t - self.d_ref) - n * self.log_z(t)).cpu().numpy()

        lo, hi = self.prior_range if prior_range is None else (float(v) for v in prior_range)
        return smooth_moments(ell, lo, hi, sets.shape[0], coarse, fine)

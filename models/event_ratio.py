r"""The event-by-event estimator in several Wilson coefficients: a learned per-event ratio, exact in form.

At generator level an event's density is a ratio of quadratic forms in the shifts c (:mod:`kernels.theory`):
``p(x | c) = G(x; c) / Gamma(c)`` with ``G(x; c) = a(x) . m(c)`` over the monomials
``m(c) = (1, c_i, c_i c_j (i <= j))``. So the ratio to the Standard Model is

.. math::

    \frac{p(x \mid c)}{p(x \mid 0)} = \frac{q(x, c)}{Z(c)},\qquad
    q(x, c) = \frac{G(x; c)}{G(x; 0)},\quad Z(c) = E_{x \sim p(\cdot \mid 0)}[q(x, c)],

with q a positive quadratic form in c equal to 1 at c = 0. :class:`EventRatio` outputs, per event, the
matrix ``W(x)`` ((n + 1) x n) of

.. math::

    q(x, c) = (1 + w_0 \cdot c)^2 + \sum_{r = 1}^{n} (w_r \cdot c)^2,

the general such form (``n = 1``: the event classifier's quadratic head), as its monomial coefficients
(:meth:`EventRatio.coefficients`). It learns them by regression on the simulator's exact per-event
coefficients ``a(z) / a_0(z)`` of events drawn at c = 0 (:func:`ratio_targets`): the least-squares
solution is their conditional mean given the observed x, which is exactly the ratio above for detector
events too (the true kinematics z enter only the targets). :meth:`EventRatio.calibrate` fixes Z from
other events at c = 0 (their mean coefficients: Z is linear in them).

**The set.** For N events, ``ln L(c) = sum_e ln q(x_e, c) - N ln Z(c)``: the unbinned likelihood with the
learned per-event coefficients in place of the theory's projections, so :func:`kernels.likelihood.fit_set`
maximises it (MIGRAD, HESSE) and returns the estimate *vector* and its covariance
(:func:`fit_sets_learned`). One trained model serves every N and every point of the coefficient space.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.event_posterior import FEATURES
from models.features import N_EVENT_VARIABLES, as_events, mlp

__all__ = ["EventRatio", "ratio_targets", "log_ratio_targets", "ratio_scores", "fit_sets_learned"]


def _n_monomials(n: int) -> int:
    return 1 + n + n * (n + 1) // 2


def ratio_targets(projections: np.ndarray) -> np.ndarray:
    """The regression targets: each event's monomial coefficients over its Standard-Model value,
    ``a[..., 1:] / a[..., :1]`` (the constant, 1, dropped). ``projections``: :func:`kernels.likelihood.project`
    of the events' true kinematics, ``(..., P)``.

    >>> ratio_targets(np.array([[2.0, 1.0, 4.0]])).tolist()
    [[0.5, 2.0]]
    """
    a = np.asarray(projections, dtype=np.float64)
    if np.any(a[..., 0] <= 0):
        raise ConfigError("an event has a non-positive Standard-Model density: not events of this table")
    return a[..., 1:] / a[..., :1]


def log_ratio_targets(projections: np.ndarray, points) -> np.ndarray:
    """The targets of the log loss: ``ln q(z, c_k)`` at each of ``points`` (K, n), ``(..., K)``; ``projections``
    as for :func:`ratio_targets`.

    >>> np.round(log_ratio_targets(np.array([[2.0, 1.0, 4.0]]), [[1.0], [-0.5]]), 4).tolist()
    [[1.2528, 0.2231]]
    """
    from kernels.theory import monomials

    a = np.asarray(projections, dtype=np.float64)
    q = a @ monomials(np.asarray(points, dtype=np.float64)).T / a[..., :1]
    if np.any(q <= 0):
        raise ConfigError("an event has a non-positive density at a loss point: not events of this table")
    return np.log(q)


def ratio_scores(projections: np.ndarray, points) -> np.ndarray:
    """Each event's ``d ln q(z, c) / dc`` at each of ``points`` (K, n), ``(..., K, n)``: its joint score there, less
    ``d ln Gamma(c) / dc`` (the same for every event, so irrelevant to a summary that is standardised anyway).

    >>> np.round(ratio_scores(np.array([[2.0, 1.0, 4.0]]), [[1.0]]), 4).tolist()   # (1 + 2 * 4) / (2 + 1 + 4)
    [[[1.2857]]]
    """
    from kernels.theory import monomial_gradient, monomials

    a = np.asarray(projections, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    g = a @ monomials(pts).T
    if np.any(g <= 0):
        raise ConfigError("an event has a non-positive density at a score point: not events of this table")
    grads = monomial_gradient(pts)  # (K, n, P)
    return np.einsum("...p,knp->...kn", a, grads) / g[..., None]


class EventRatio(nn.Module):
    """MLP over one event's features -> the per-event ratio ``q(x, c)`` in ``n`` coefficients (module docstring).

    ``forward(x)`` returns the coefficients of ``q`` without the constant, over ``scale`` (the targets'
    spread, :meth:`fit_scale`), so that a mean-squared error weighs every coefficient alike; with
    ``loss_points`` (K, n), it returns ``ln q(x, c_k)`` at those points instead (targets
    :func:`log_ratio_targets`): a mean-squared error then weighs *relative* errors alike, which is what the
    set's log-likelihood feels. Its minimiser is exact where the targets are a function of the event
    (generator level); at detector level only the coefficient loss is (the log of a conditional mean is not
    the conditional mean of the log). ``hparams`` rebuilds it:
``EventRatio(**net.hparams)``.
    """

    def __init__(self, n_coefficients: int, hidden: int = 128, layers: int = 3, features: str = "angular",
                 loss_points=None) -> None:
        super().__init__()
        n = int(n_coefficients)
        if n < 1:
            raise ConfigError(f"n_coefficients must be >= 1, got {n_coefficients!r}")
        if features not in FEATURES:
            raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        pts = None if loss_points is None else np.asarray(loss_points, dtype=np.float64).reshape(-1, n)
        self.hparams = dict(n_coefficients=n, hidden=hidden, layers=layers, features=features,
                            loss_points=None if pts is None else pts.tolist())

        self.n = n
        self.features = FEATURES[features]()  # angular: the twelve f_i too, in which the rate is linear
        self.net = mlp(self.features.mean.numel(), hidden, layers, (n + 1) * n)
        with torch.no_grad():  # start near q = 1 (no dependence on c)
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()
        iu = torch.triu_indices(n, n)
        self.register_buffer("pair_i", iu[0].clone())
        self.register_buffer("pair_j", iu[1].clone())
        self.register_buffer("scale", torch.ones(_n_monomials(n) - 1))
        self.register_buffer("z", torch.full((_n_monomials(n),), float("nan"), dtype=torch.float64))
        if pts is not None:
            from kernels.theory import monomials

            self.register_buffer("loss_monomials", torch.from_numpy(monomials(pts)).float())  # (K, P)

        else:
            self.loss_monomials = None

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.z).all())

    def fit_features(self, events, max_events: int = 1_000_000) -> EventRatio:
        """Fit the event standardisation on training events ``(n, 4)``."""
        self.features.fit(events, max_events=max_events)
        return self

    @torch.no_grad()
    def fit_scale(self, targets) -> EventRatio:
        """Set ``scale`` to the spread of the training targets ``(n, P - 1)`` (:func:`ratio_targets`)."""
        t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
        if t.ndim != 2 or t.shape[1] != self.scale.numel():
            raise ConfigError(f"targets must have shape (n, {self.scale.numel()}), got {tuple(t.shape)}")
        self.scale.copy_(t.std(dim=0).clamp_min(1e-6).to(self.scale.dtype))
        return self

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """The monomial coefficients of ``q(x, c)`` without the constant 1, ``(..., P - 1)``."""
        if x.shape[-1] != N_EVENT_VARIABLES:
            raise ConfigError(f"events must have a last axis of {N_EVENT_VARIABLES}, got {tuple(x.shape)}")
        n = self.n
        w = self.net(self.features(x)).reshape(*x.shape[:-1], n + 1, n)
        linear = 2.0 * w[..., 0, :]
        gram = torch.einsum("...ri,...rj->...ij", w, w)  # sum over r of w_r w_r^T
        i, j = self.pair_i, self.pair_j
        quad = gram[..., i, j] * torch.where(i == j, 1.0, 2.0).to(gram.dtype)
        return torch.cat([linear, quad], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coef = self.coefficients(x)
        if self.loss_monomials is None:
            return coef / self.scale.to(x.dtype)
        m = self.loss_monomials.to(coef.dtype)
        return torch.log(m[:, 0] + coef @ m[:, 1:].T + 1e-12)

    @torch.no_grad()
    def projections(self, events, chunk: int = 1 << 16) -> np.ndarray:
        """Every event's full coefficient vector ``(1, ...)``, float64 ``(..., P)``: what
        :func:`kernels.likelihood.fit_set` takes as the events' projections."""
        ev = as_events(events)
        flat = torch.from_numpy(np.ascontiguousarray(ev.reshape(-1, N_EVENT_VARIABLES)))
        was = self.training
        self.eval()
        try:
            dev = self.scale.device
            parts = [self.coefficients(flat[s:s + chunk].to(dev)).double().cpu().numpy()
                     for s in range(0, flat.shape[0], chunk)]
        finally:
            self.train(was)
        out = np.concatenate(parts) if parts else np.empty((0, self.scale.numel()))
        out = np.concatenate([np.ones((out.shape[0], 1)), out], axis=1)
        return out.reshape(ev.shape[:-1] + (out.shape[-1],))

    @torch.no_grad()
    def calibrate(self, reference, control=None, control_mean=None) -> np.ndarray:
        """Fix ``Z(c)``'s coefficients as the mean coefficients of ``reference`` events drawn at c = 0 (not the
        training events); return them.

        ``control`` (M, P - 1), ``control_mean`` (P - 1,): the reference events' exact coefficients
        (:func:`ratio_targets` of their true kinematics) and their exact mean (the level's ``Gamma_p / Gamma_0``,
        :func:`kernels.likelihood.normalisation`), a control variate: ``Z = control_mean + mean(a - control)``,
        the same expectation with the variance of the network's error instead of the coefficients'. Without
        it, Z's statistical error (2e-4 in its linear terms from 2M events, in 2D) is a bias of the set's fit
        common to every set, 0.2 of its sigma at 24,000 events and growing as sqrt(N / M)."""
        a = self.projections(reference).reshape(-1, self.z.numel())
        if a.shape[0] < 1000:
            raise ConfigError(f"calibration needs at least 1000 reference events, got {a.shape[0]}")
        if (control is None) != (control_mean is None):
            raise ConfigError("give both control and control_mean, or neither")
        z = a.mean(axis=0)
        if control is not None:
            c = np.asarray(control, dtype=np.float64)
            cm = np.asarray(control_mean, dtype=np.float64).ravel()
            p = self.z.numel() - 1
            if c.shape != (a.shape[0], p) or cm.shape != (p,):
                raise ConfigError(f"control must have shape ({a.shape[0]}, {p}) and control_mean ({p},), "
                                  f"got {c.shape}, {cm.shape}")
            z[1:] = cm + (a[:, 1:] - c).mean(axis=0)
        self.z.copy_(torch.from_numpy(z))
        return self.z.cpu().numpy()


def fit_sets_learned(model: EventRatio, sets, progress=None):
    """Fit every set ``(M, N, 4)`` with the learned likelihood (module docstring): a
    :class:`kernels.likelihood.FitResult` with the estimate vectors ``(M, n)``, HESSE errors and per-set
    covariances ``(M, n, n)``."""
    from kernels.likelihood import FitResult, fit_set, nll
    from kernels.refit import retry_failed

    if not model.calibrated:
        raise ConfigError("the event-ratio model is not calibrated: call calibrate(reference events) first")
    arr = as_events(sets)
    if arr.ndim != 3:
        raise ConfigError(f"sets must have shape (M, N, 4), got {arr.shape}")
    M, n = arr.shape[0], model.n
    z = model.z.cpu().numpy()
    values, errors = np.empty((M, n)), np.empty((M, n))
    valid, covs = np.empty(M, dtype=bool), np.empty((M, n, n))
    for k in range(M):  # one iteration per set; its events go through the network at once
        values[k], errors[k], valid[k], covs[k] = fit_set(model.projections(arr[k]), z)
        if progress is not None:
            progress(1)
    projected = functools.lru_cache(maxsize=1)(lambda j: model.projections(arr[j]))  # once per retried set

    def refit(j, start=None, at=None):  # the fit from ``start``, or the NLL at ``at``
        a = projected(j)
        return nll(at, a, z) if at is not None else fit_set(a, z, start=start)

    retry_failed(values, errors, valid, covs, refit)
    return FitResult(values, errors, valid, covs)

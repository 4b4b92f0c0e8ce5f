r"""The event-by-event classifier: per-event posteriors over a grid of delta C9, combined per set.

A network sees one event x and returns logits over the K training values
``d_1 < ... < d_K`` of delta C9; trained with cross-entropy on events pooled
from every grid value with class frequencies ``pi_k``, its softmax estimates

.. math::

    p(d_k \mid x) = \frac{p(x \mid d_k)\, \pi_k}{\sum_j p(x \mid d_j)\, \pi_j}.

**Set posterior.** For a set of N independent events, Bayes' theorem with the
same prior gives (the per-event normalisations are constant in k)

.. math::

    \ln p(d_k \mid x_1..x_N) = \sum_{e} \ln p(d_k \mid x_e) - (N - 1) \ln \pi_k + \text{const},

:func:`set_log_posterior`, normalised over the grid. ``pi`` comes from the class
frequencies of the training events (:meth:`EventClassifier.set_prior`); with a
balanced training set it is uniform and the correction is a constant. The grid
log-likelihood, flat prior, is

.. math::

    \ell_k = \sum_e \big[\ln p(d_k \mid x_e) - \ln \pi_k\big] = \sum_e \ln \frac{p(x_e \mid d_k)}{p(x_e)},

(:meth:`EventClassifier.set_log_likelihood`), the ML fit's log-likelihood up to a
constant, learned instead of computed. One trained model serves every N.

**Off the grid.** For the seed-size sets the likelihood is far narrower than the
grid spacing (sigma_CRB is about 0.04 at 24k events, the grid about 0.15), so
the grid posterior would put nearly all its mass on one grid value and every
estimate would snap to the grid. :func:`posterior_moments` therefore treats ell
as a smooth function of d: ``method="spline"`` (default) interpolates ell with
a not-a-knot cubic spline through the K grid values (exact when ell is a
cubic, so exact for a Gaussian likelihood), evaluates it on ``fine`` points
over the grid's range, then again on ``fine`` points over +-12 widths around
the first pass's mean (so a narrow posterior is resolved at any N), and returns
the mean and standard deviation of the normalised density ``exp(ell(d))`` there:
the posterior mean and width for a flat prior on ``[d_1, d_K]``. A posterior
that reaches the ends of the grid is truncated there (the network knows nothing
beyond them). ``method="parabola"`` fits a parabola through the grid maximum
and its two neighbours (the Laplace approximation: mean at the vertex, width
``1 / sqrt(-ell'')``), and ``method="grid"`` takes the moments of the grid
posterior itself.

**The quadratic head (default).** Free logits per grid value carry small
class-to-class offsets that a set of N events multiplies by N: at 24k events
they swamp the likelihood's curvature and the estimates snap to grid values.
The physics removes them: per event, ``p(x|d) = G(x; d) / Gamma(d)`` with G and
Gamma *quadratic* in d (:mod:`kernels.theory`). ``head="quadratic"`` therefore
outputs two numbers per event, ``q(x, d) = (1 + u d)^2 + (v d)^2`` (the general
positive quadratic in d up to a factor of x, which the softmax cancels; it
starts flat, q = 1, when u and v start near 0), and learns
``Z(d) = (1 + z1 d)^2 + (z2 d)^2`` for Gamma: the logits are
``ln q(x, d_k) - ln Z(d_k) + ln pi_k``. The set log-likelihood
``sum_e ln q(x_e, d) - N ln Z(d)`` is then smooth in d and defined between grid
values, so :meth:`EventClassifier.continuous_moments` integrates it directly.
``head="grid"`` keeps free logits (one per grid value) and the interpolation below.

**Exact normalisation.** The learned Z carries a slope error that N events multiply
(an error epsilon(d) in ln Z moves ln L by N epsilon(d)). Since ``q(x, 0) = 1``, the head
is the ratio to ``p(x|0)``, and the exact normaliser of the model is the reference mean
``Z(d) = E_{x ~ p(.|0)}[q(x, d)] = 1 + E[2u] d + E[u^2 + v^2] d^2``:
:meth:`EventClassifier.calibrate` sets it from events drawn at delta C9 = 0 (see
:mod:`models.event_posterior`, which also learns the head from the simulator's joint score),
and every likelihood after that uses it. ``continuous_moments(prior_range=...)`` widens the
flat prior beyond the grid: the quadratic defines ``ln L`` at every d.

>>> import numpy as np
>>> grid = np.linspace(-2.0, 1.0, 13)                      # spacing 0.25
>>> ell = -0.5 * ((grid - 0.33) / 0.04) ** 2                # a Gaussian likelihood, narrow
>>> mean, std = posterior_moments(grid, ell[None])
>>> round(float(mean[0]), 4), round(float(std[0]), 4)
(0.33, 0.04)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.event_posterior import Calibration, calibrate_quadratic, smooth_moments
from models.features import N_EVENT_VARIABLES, N_FEATURES, EventFeatures, mlp

__all__ = [
    "METHODS",
    "EventClassifier",
    "grid_index",
    "set_log_posterior",
    "posterior_moments",
]

#: Ways :func:`posterior_moments` turns a grid log-likelihood into a mean and a width.
METHODS = ("spline", "parabola", "grid")

#: Output heads of :class:`EventClassifier` (see the module docstring).
HEADS = ("quadratic", "grid")

_Q_EPS = 1e-6


def _check_grid(grid) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64).ravel()
    if g.size < 2 or not np.all(np.isfinite(g)) or np.any(np.diff(g) <= 0):
        raise ConfigError(f"the grid must hold at least 2 finite, strictly increasing values, got {g.tolist()}")
    return g


def grid_index(grid, values, atol: float = 1e-6) -> np.ndarray:
    """Class index of each value in ``grid`` (int64); a value off the grid is a ConfigError.

    >>> grid_index([-1.0, 0.0, 0.5], [0.5, -1.0, 0.0]).tolist()
    [2, 0, 1]
    """
    g = _check_grid(grid)
    v = np.asarray(values, dtype=np.float64)
    idx = np.clip(np.searchsorted(g, v), 1, g.size - 1)
    idx = np.where(np.abs(v - g[idx - 1]) <= np.abs(v - g[idx]), idx - 1, idx)
    off = np.abs(v - g[idx]) > atol
    if np.any(off):
        raise ConfigError(f"{int(off.sum())} value(s) are not on the training grid, e.g. {v[off].ravel()[0]}")
    return idx.astype(np.int64)


def set_log_posterior(
    event_log_posteriors: torch.Tensor, log_prior: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Normalised grid log-posterior of each set, ``(M, K)``, from per-event ones ``(M, N, K)``.

    ``sum_e ln p(d_k | x_e) - (N - 1) ln pi_k``, normalised with a log-sum-exp;
    ``event_log_posteriors`` are the per-event ``log_softmax`` of the logits,
    ``mask`` ``(M, N)`` marks real events (padding excluded; N is then each set's own count).
    """
    if event_log_posteriors.ndim != 3:
        raise ConfigError(f"per-event log-posteriors must have shape (M, N, K), got {tuple(event_log_posteriors.shape)}")
    lp = event_log_posteriors.double()
    prior = log_prior.to(lp)
    if mask is None:
        total = lp.sum(dim=1)
        n = torch.full((lp.shape[0], 1), float(lp.shape[1]), dtype=lp.dtype, device=lp.device)
    else:
        m = mask.to(lp.dtype)[..., None]
        total = (lp * m).sum(dim=1)
        n = m.sum(dim=1)
    out = total - (n - 1) * prior
    return out - torch.logsumexp(out, dim=1, keepdim=True)


class EventClassifier(nn.Module):
    """MLP over one event's features -> logits over the delta C9 ``grid``; buffers ``grid``, ``log_prior``.

    ``hparams`` rebuilds it: ``EventClassifier(**net.hparams)``.
    """

    def __init__(self, grid: Sequence[float], hidden: int = 128, layers: int = 3, dropout: float = 0.0,
                 head: str = "quadratic") -> None:
        super().__init__()
        g = _check_grid(grid)
        if head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.hparams = dict(grid=g.tolist(), hidden=hidden, layers=layers, dropout=dropout, head=head)
        self.head = head
        self.n_classes = g.size
        self.register_buffer("grid", torch.as_tensor(g, dtype=torch.float64))
        self.register_buffer("log_prior", torch.full((g.size,), -np.log(g.size), dtype=torch.float64))
        self.features = EventFeatures()
        self.net = mlp(N_FEATURES, hidden, layers, g.size if head == "grid" else 2, dropout=dropout)
        if head == "quadratic":
            self.norm = nn.Parameter(torch.tensor([0.0, 0.1]))  # Z(d) = (1 + z1 d)^2 + (z2 d)^2; z2 = 0 is a saddle
        # The calibrated Z(d) = 1 + c1 d + c2 d^2 (calibrate); NaN until then, and the learned Z serves.
        self.register_buffer("z_cal", torch.tensor([1.0, float("nan"), float("nan")], dtype=torch.float64))
        self.register_buffer("z_cov", torch.zeros(2, 2, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before calibration existed lack its buffers: they load uncalibrated.
        state_dict.setdefault(prefix + "z_cal", torch.tensor([1.0, float("nan"), float("nan")], dtype=torch.float64))
        state_dict.setdefault(prefix + "z_cov", torch.zeros(2, 2, dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def calibrated(self) -> bool:
        """True once :meth:`calibrate` has fixed Z(d)."""
        return bool(torch.isfinite(self.z_cal).all())

    @torch.no_grad()
    def calibrate(self, reference, chunk: int = 1 << 16, control=None, control_mean=None) -> Calibration:
        """Fix Z(d) exactly by the reference mean of q over events (M, 4) drawn at delta C9 = 0; quadratic head.

        ``control``/``control_mean``: the reference events' joint quadratics
        (:func:`kernels.joint.reference_sample`), a variance-reducing control variate.
        """
        if self.head != "quadratic":
            raise ConfigError("calibrate needs the quadratic head")
        was = self.training
        self.eval()
        try:
            cal = calibrate_quadratic(lambda x: self.net(self.features(x)), reference, chunk,
                                      device=self.z_cal.device, control=control, control_mean=control_mean)
        finally:
            self.train(was)
        self.z_cal.copy_(torch.as_tensor(cal.coef))
        self.z_cov.copy_(torch.as_tensor(cal.cov))
        return cal

    def fit_features(self, events, max_events: int = 1_000_000) -> EventClassifier:
        """Fit the event standardisation on training events ``(n, 4)``."""
        self.features.fit(events, max_events=max_events)
        return self

    @torch.no_grad()
    def set_prior(self, labels) -> EventClassifier:
        """Set the prior to the class frequencies of the training events' class indices ``labels``."""
        lab = torch.as_tensor(np.asarray(labels)).long().ravel()
        if lab.numel() == 0 or lab.min() < 0 or lab.max() >= self.n_classes:
            raise ConfigError(f"class labels must lie in [0, {self.n_classes - 1}]")
        counts = torch.bincount(lab, minlength=self.n_classes).double()
        if torch.any(counts == 0):
            missing = self.grid[counts == 0].tolist()
            raise ConfigError(f"no training events at grid value(s) {missing}: the prior would be zero there")
        self.log_prior.copy_(torch.log(counts / counts.sum()))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., K)`` of events ``(..., 4)``."""
        if x.shape[-1] != N_EVENT_VARIABLES:
            raise ConfigError(f"events must have a last axis of {N_EVENT_VARIABLES}, got {tuple(x.shape)}")
        out = self.net(self.features(x))
        if self.head == "grid":
            return out
        d = self.grid.to(out.dtype)
        return self._log_q(out, d) - self._log_z(d).to(out.dtype) + self.log_prior.to(out.dtype)

    @staticmethod
    def _log_q(uv: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """ln q(x, d) for head outputs ``uv`` (..., 2) at values ``d`` (D,) or (..., 1, D) -> (..., D)."""
        u, v = uv[..., 0:1], uv[..., 1:2]
        return torch.log((1 + u * d) ** 2 + (v * d) ** 2 + _Q_EPS)

    def _log_z(self, d: torch.Tensor) -> torch.Tensor:
        if self.calibrated:
            c = self.z_cal.to(d.dtype)
            return torch.log(c[0] + c[1] * d + c[2] * d * d)
        z = self.norm.to(d.dtype)
        return torch.log((1 + z[0] * d) ** 2 + (z[1] * d) ** 2 + _Q_EPS)

    @torch.no_grad()
    def log_likelihood_at(self, sets: torch.Tensor, d, event_chunk: int = 1 << 14) -> torch.Tensor:
        """Set log-likelihood ``(M, D)`` at any values ``d`` (D,) or per-set values (M, D); quadratic head only.

        ``sum_e ln q(x_e, d) - N ln Z(d)``, up to a constant per set.
        """
        if self.head != "quadratic":
            raise ConfigError("log_likelihood_at needs the quadratic head; use set_log_likelihood on the grid")
        d = torch.as_tensor(d, dtype=torch.float64, device=sets.device)
        per_set = d.ndim == 2
        total = torch.zeros(sets.shape[0], d.shape[-1], dtype=torch.float64, device=sets.device)
        for s in range(0, sets.shape[1], max(1, int(event_chunk))):
            uv = self.net(self.features(sets[:, s : s + event_chunk])).double()  # (M, n, 2)
            total += self._log_q(uv, d[:, None, :] if per_set else d).sum(dim=1)
        return total - sets.shape[1] * self._log_z(d)

    @torch.no_grad()
    def continuous_moments(self, sets: torch.Tensor, fine: int = 401, event_chunk: int = 1 << 14,
                           prior_range: tuple[float, float] | None = None):
        """Posterior mean and width ``(M,)`` for a flat prior on ``prior_range`` (default: the grid's), quadratic head.

        Two passes of ``fine`` points: over the range, then over +-12 widths around
        the first mean, so a narrow posterior is resolved at any N.
        """
        lo, hi = (float(self.grid[0]), float(self.grid[-1])) if prior_range is None else map(float, prior_range)
        return smooth_moments(lambda d: self.log_likelihood_at(sets, d, event_chunk).cpu().numpy(),
                              lo, hi, sets.shape[0], fine, fine)

    @torch.no_grad()
    def set_log_likelihood(
        self, sets: torch.Tensor, mask: torch.Tensor | None = None, event_chunk: int = 1 << 16
    ) -> torch.Tensor:
        """Grid log-likelihood ``ell`` ``(M, K)`` (float64) of sets ``(M, N, 4)``: sum_e [log softmax - log prior].

        Events are evaluated ``event_chunk`` per set at a time, so memory stays
        bounded at any N. Runs where the sets are; the model must be there too.
        """
        if sets.ndim != 3:
            raise ConfigError(f"sets must have shape (M, N, 4), got {tuple(sets.shape)}")
        total = torch.zeros(sets.shape[0], self.n_classes, dtype=torch.float64, device=sets.device)
        step = max(1, int(event_chunk))
        for s in range(0, sets.shape[1], step):
            lp = torch.log_softmax(self(sets[:, s : s + step]).double(), dim=-1) - self.log_prior
            if mask is not None:
                lp = lp * mask[:, s : s + step, None].to(lp.dtype)
            total += lp.sum(dim=1)
        return total

    @torch.no_grad()
    def set_posterior(self, sets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised grid log-posterior ``(M, K)``: ``ell + ln pi``, i.e. :func:`set_log_posterior`."""
        out = self.set_log_likelihood(sets, mask) + self.log_prior
        return out - torch.logsumexp(out, dim=1, keepdim=True)


# --- from a grid log-likelihood to a mean and a width ---------------------------------------


def _moments(x: np.ndarray, logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of densities ``exp(logp)`` sampled at rows ``x`` (M, F), trapezoid weights."""
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    dx = np.diff(x, axis=1)
    w = np.zeros_like(x)
    w[:, :-1] += dx / 2
    w[:, 1:] += dx / 2
    pw = p * w
    z = pw.sum(axis=1)
    mean = (pw * x).sum(axis=1) / z
    var = (pw * (x - mean[:, None]) ** 2).sum(axis=1) / z
    return mean, np.sqrt(np.maximum(var, 0.0))


def _spline_eval(grid: np.ndarray, coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evaluate per-set cubic pieces ``coef`` (4, K-1, M) at per-set points ``x`` (M, F)."""
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
    t = x - grid[i]
    rows = np.arange(x.shape[0])[:, None]
    c = coef[:, i, rows]  # (4, M, F)
    return ((c[0] * t + c[1]) * t + c[2]) * t + c[3]


def _spline_moments(grid: np.ndarray, ell: np.ndarray, fine: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.interpolate import CubicSpline

    coef = CubicSpline(grid, ell, axis=1, bc_type="not-a-knot").c  # (4, K-1, M)
    M = ell.shape[0]
    x = np.broadcast_to(np.linspace(grid[0], grid[-1], fine), (M, fine))
    mean, std = _moments(x, _spline_eval(grid, coef, x))
    # Zoom: a posterior narrower than the first pass's spacing is resolved on a second, finer pass.
    h = (grid[-1] - grid[0]) / (fine - 1)
    half = 12.0 * np.maximum(std, h)
    lo = np.maximum(mean - half, grid[0])
    hi = np.minimum(mean + half, grid[-1])
    x = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, fine)[None, :]
    return _moments(x, _spline_eval(grid, coef, x))


def _parabola_moments(grid: np.ndarray, ell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if grid.size < 3:
        raise ConfigError("method='parabola' needs at least 3 grid values")
    k = np.clip(ell.argmax(axis=1), 1, grid.size - 2)
    rows = np.arange(ell.shape[0])
    x0, x1, x2 = grid[k - 1], grid[k], grid[k + 1]
    y0, y1, y2 = ell[rows, k - 1], ell[rows, k], ell[rows, k + 1]
    # Divided differences: ell ~ y0 + b (d - x0) + a (d - x0)(d - x1).
    b01 = (y1 - y0) / (x1 - x0)
    b12 = (y2 - y1) / (x2 - x1)
    a = (b12 - b01) / (x2 - x0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = (x0 + x1) / 2 - b01 / (2 * a)
        width = np.sqrt(-1.0 / (2 * a))
    ok = a < 0
    g_mean, g_std = _moments(np.broadcast_to(grid, ell.shape), ell)
    mean = np.where(ok, np.clip(vertex, grid[0], grid[-1]), g_mean)
    std = np.where(ok, width, g_std)
    return mean, std


def posterior_moments(grid, log_likelihood, method: str = "spline", fine: int = 2001) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and width ``(M,)`` from a grid log-likelihood ``(M, K)`` (see the module docstring).

    ``method``: "spline" (interpolated ell, flat prior on the grid's range),
    "parabola" (Laplace approximation around the grid maximum) or "grid" (the
    grid posterior's own moments, which snap to the grid for narrow likelihoods).
    """
    g = _check_grid(grid)
    ell = np.asarray(log_likelihood, dtype=np.float64)
    if ell.ndim == 1:
        ell = ell[None]
    if ell.ndim != 2 or ell.shape[1] != g.size:
        raise ConfigError(f"log-likelihood must have shape (M, {g.size}), got {ell.shape}")
    if not np.all(np.isfinite(ell)):
        raise ConfigError("the grid log-likelihood has non-finite values")
    if method == "spline":
        if fine < 3:
            raise ConfigError(f"fine must be >= 3, got {fine}")
        return _spline_moments(g, ell, int(fine))
    if method == "parabola":
        return _parabola_moments(g, ell)
    if method == "grid":
        p = np.exp(ell - ell.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean = p @ g
        return mean, np.sqrt(np.maximum(p @ g**2 - mean**2, 0.0))
    raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")

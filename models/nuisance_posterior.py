r"""The event posterior with the form factors: a per-event ratio in (delta C9, u), profiled at the set level.

The nuisance u (whitened BSZ form factors) is shared by every event of a set, so the set's
likelihood is not a product of per-event likelihoods marginalised over u (that averages u away
event by event and under-covers: ``tests/kernels/test_set_likelihood.py``). It is the product of
the per-event *conditional* ratios at a common u, with u then profiled against its prior. This
model learns that conditional ratio per event, to first order in u about the prior's centre:

.. math::

    \frac{p(x \mid d, u)}{p(x \mid d_\text{ref}, 0)} = \frac{q(x, \delta) + u \cdot b(x, \delta)}{Z(\delta) + u \cdot \zeta(\delta)},
    \qquad b_k(x, \delta) = \beta_{k0}(x) + \beta_{k1}(x)\,\delta + \beta_{k2}(x)\,\delta^2,

with ``q`` the trained :class:`~models.event_posterior.EventLikelihoodNet`'s quadratic (frozen) and
β a second network's ``(n_u, 3)`` outputs. At the generator level the exact ratio has exactly this
form to first order (G is quadratic in d at every order in u), so β can be exact.

**Training: the joint score in u.** The model's u-score at ``u = 0`` is
``b(x, delta) / q(x, delta) - zeta(delta) / Z(delta)``; a squared loss against the simulator's exact
joint score (:func:`kernels.joint_nuisance.nuisance_scores`) over events at continuous d is minimised by the
true score (SALLY in u). During training ``zeta`` is the tables' ``grad_u Gamma / Gamma(d_ref)``
(:meth:`NuisanceScoreNet.set_normalisation`); afterwards :meth:`~NuisanceScoreNet.calibrate` sets it
to the mean of β over reference events at ``(d_ref, 0)``, with the joint slopes
(:func:`kernels.joint_nuisance.nuisance_quadratic`) as control variate, so that the model's density stays
normalised at first order in u whatever the network. The sets need it to about 1e-5, so millions of
reference events stream through in chunks.

**The set.** Each event's coefficient matrix over ``(1, delta, delta^2) x (1, u)`` goes to
:func:`kernels.set_likelihood.fit_sets` (degree 1, the prior ``N(0, s^2)`` as constraint): the mode
in (delta C9, u) and the profiled error of delta C9. Measured on exact tables cut to first order in
u, this estimator is within a few per cent of the full bi-quadratic profiled fit's spread at 2,000
to 24,000 events (the second-order terms in u matter little where the data see u).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.event_posterior import EventLikelihoodNet
from models.features import N_EVENT_VARIABLES, mlp

__all__ = ["NuisanceScoreNet"]


def _powers(delta: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.ones_like(delta), delta, delta * delta], dim=-1)


class NuisanceScoreNet(nn.Module):
    """β(x): the u-slopes of the per-event ratio, beside a trained (frozen) ``base`` event posterior.

    ``n_nuisances``: the whitened nuisances; buffers ``zeta_coef`` ``(n_u, 3)`` (the normalisation's
    u-slopes in powers of ``delta``) and ``zeta_state`` (0 unset, 1 from tables, 2 calibrated).
    """

    head = "nuisance"

    def __init__(self, base: EventLikelihoodNet, n_nuisances: int, hidden: int = 64, layers: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if int(n_nuisances) < 1:
            raise ConfigError(f"need at least one nuisance, got {n_nuisances}")
        self.n_u = int(n_nuisances)
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.d_ref = base.d_ref
        self.net = mlp(base.features.mean.numel(), hidden, layers, 3 * self.n_u, dropout=dropout)
        with torch.no_grad():  # start at b = 0: the events see no form factor
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()
        self.register_buffer("zeta_coef", torch.full((self.n_u, 3), float("nan"), dtype=torch.float64))
        self.register_buffer("zeta_state", torch.tensor(0))
        self.hparams = dict(n_nuisances=self.n_u, hidden=hidden, layers=layers, dropout=dropout)

    def train(self, mode: bool = True) -> NuisanceScoreNet:
        super().train(mode)
        self.base.eval()  # frozen: no dropout, fixed statistics
        return self

    def beta(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., n_u, 3)``: each nuisance's slope coefficients in powers of delta."""
        if x.shape[-1] != N_EVENT_VARIABLES:
            raise ConfigError(f"events must have a last axis of {N_EVENT_VARIABLES}, got {tuple(x.shape)}")
        return self.net(self.base.features(x)).unflatten(-1, (self.n_u, 3))

    def _zeta(self) -> torch.Tensor:
        if int(self.zeta_state) == 0:
            raise ConfigError("the u-slopes of Z are not set: set_normalisation(...) before training, calibrate(...) after")
        return self.zeta_coef

    @torch.no_grad()
    def set_normalisation(self, zeta) -> NuisanceScoreNet:
        """zeta ``(n_u, 3)``: ``grad_u Gamma(d, 0) / Gamma(d_ref, 0)`` in powers of delta (the tables'; for training)."""
        z = np.asarray(zeta, dtype=np.float64)
        if z.shape != (self.n_u, 3) or not np.all(np.isfinite(z)):
            raise ConfigError(f"zeta must be {self.n_u} x 3 finite coefficients, got shape {z.shape}")
        self.zeta_coef.copy_(torch.from_numpy(z))
        self.zeta_state.fill_(1)
        return self

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The model's score in u at u = 0, ``(..., n_u)``, of events ``(..., 4)`` at their values d ``(...)``."""
        b = self.beta(x)
        with torch.no_grad():
            uv = self.base.uv(x)
        delta = (d.to(b.dtype) - self.d_ref)
        m = _powers(delta)  # (..., 3)
        q = (1 + uv[..., 0] * delta) ** 2 + (uv[..., 1] * delta) ** 2
        zc = self.base.z_coef.to(b.dtype)
        Z = m @ zc
        zeta = m @ self._zeta().to(b.dtype).T  # (..., n_u)
        return (b @ m.unsqueeze(-1)).squeeze(-1) / q.unsqueeze(-1) - zeta / Z.unsqueeze(-1)

    @torch.no_grad()
    def calibrate(self, reference, control=None, control_mean=None, chunk: int = 1 << 16) -> np.ndarray:
        r"""Set zeta to the mean of β over reference events at ``(d_ref, 0)``, with the joint slopes b* as
        control variate. Returns the standard errors ``(n_u, 3)`` of the calibrated coefficients.

        ``reference`` events ``(M, 4)`` with ``control`` ``(M, n_u, 3)`` and its exact mean ``control_mean``
        ``(n_u, 3)``; or, with ``control`` None, an iterable of ``(events, control, control_mean)`` chunks
        (:func:`kernels.joint_nuisance.nuisance_reference_chunks`), summed one at a time.

        Each coefficient is the regression estimator ``mean(β) - λ (mean(b*) - E[b*])`` with
        ``λ = cov(β, b*) / var(b*)`` fitted on the same events: never noisier than the plain mean. With
        ``λ = 1`` (the plain difference) it was noisier at the detector level, where b* carries the
        smearing's noise that β has averaged away. The set's fit needs these slopes to about 1e-5: a
        shared error ε in zeta shifts every set's profiled u, and delta C9 with it, by about
        ``N ε / (N I_uu)``.
        """
        chunks = [(reference, control, control_mean)] if control is not None else reference
        dev = self.zeta_coef.device
        was = self.training
        self.eval()
        shape = (self.n_u, 3)
        sums = np.zeros((5, *shape))  # beta, b*, beta^2, b*^2, beta b*, about the first chunk's means
        M, shift, mean_c = 0, None, None
        try:
            for events, ctl, cmean in chunks:
                ev = np.asarray(events, dtype=np.float32)
                ctl = np.asarray(ctl, dtype=np.float64)
                if ev.ndim != 2 or ctl.shape != (ev.shape[0], *shape) or np.shape(cmean) != shape:
                    raise ConfigError(f"reference events (M, 4), control (M, {self.n_u}, 3) and its mean ({self.n_u}, 3) "
                                      f"must match, got {ev.shape}, {ctl.shape}, {np.shape(cmean)}")
                beta = np.concatenate([self.beta(torch.from_numpy(ev[a : a + chunk]).to(dev)).double().cpu().numpy()
                                       for a in range(0, ev.shape[0], chunk)])
                if shift is None:
                    shift, mean_c = (beta.mean(0), ctl.mean(0)), np.asarray(cmean, dtype=np.float64)
                b, c = beta - shift[0], ctl - shift[1]
                sums += np.stack([b.sum(0), c.sum(0), (b * b).sum(0), (c * c).sum(0), (b * c).sum(0)])
                M += ev.shape[0]
        finally:
            self.train(was)
        if M < 2:
            raise ConfigError(f"the calibration needs at least 2 reference events, got {M}")
        mb, mc, bb, cc, bc = sums / M
        var_b, var_c, cov = bb - mb * mb, cc - mc * mc, bc - mb * mc
        lam = np.divide(cov, var_c, out=np.zeros(shape), where=var_c > 0)
        zeta = (mb + shift[0]) - lam * (mc + shift[1] - mean_c)
        self.zeta_coef.copy_(torch.from_numpy(zeta))
        self.zeta_state.fill_(2)
        return np.sqrt(np.maximum(var_b - lam * cov, 0.0) / M)

    # --- the set ---------------------------------------------------------------------------

    @torch.no_grad()
    def coefficients(self, x: torch.Tensor) -> np.ndarray:
        """Per-event coefficient matrices ``(..., 3, 1 + n_u)`` over ``(1, delta, delta^2) x (1, u)`` (float64)."""
        uv = self.base.uv(x).double()
        b = self.beta(x).double()
        u, v = uv[..., 0], uv[..., 1]
        out = torch.empty((*x.shape[:-1], 3, 1 + self.n_u), dtype=torch.float64, device=uv.device)
        out[..., 0, 0] = 1.0
        out[..., 1, 0] = 2 * u
        out[..., 2, 0] = u * u + v * v
        out[..., :, 1:] = b.transpose(-1, -2)
        return out.cpu().numpy()

    def normalisation_matrix(self) -> np.ndarray:
        """``(3, 1 + n_u)``: Z's coefficients, then each nuisance's ``zeta`` (powers of delta down the rows)."""
        z = self.base.z_coef.detach().cpu().numpy().astype(np.float64)
        return np.concatenate([z[:, None], self._zeta().detach().cpu().numpy().T], axis=1)

    def fit_sets(self, sets, prior_scale: float = 1.0, event_chunk: int = 1 << 16, progress=None):
        """Profile each set ``(M, N, 4)``: :func:`kernels.set_likelihood.fit_sets` (degree 1) on the events'
        coefficient matrices. Returns its result with the values in delta C9 (``d_ref`` added back)."""
        from kernels.set_likelihood import fit_sets

        s = np.asarray(sets, dtype=np.float32)
        dev = self.zeta_coef.device
        was = self.training
        self.eval()

        def coefficients(j: int) -> np.ndarray:
            x = s[j]
            return np.concatenate([self.coefficients(torch.from_numpy(x[a : a + event_chunk]).to(dev))
                                   for a in range(0, x.shape[0], event_chunk)])

        try:
            res = fit_sets(coefficients, self.normalisation_matrix(), 1, self.n_u, degree=1, prior_scale=prior_scale,
                           n_sets=s.shape[0], progress=progress)
        finally:
            self.train(was)
        res.values = np.asarray(res.values) + self.d_ref
        return res

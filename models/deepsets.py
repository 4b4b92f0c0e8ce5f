r"""Deep Sets (Zaheer et al., arXiv:1703.06114): a permutation-invariant regressor on sets of events.

.. math::

    \hat d = \rho\Big(\operatorname{pool}_{e=1}^{N} \phi(f(x_e)),\ \ln N\Big)

- ``f``: :class:`models.features.EventFeatures` (q2, cos_theta_mu, cos_theta_k,
  cos chi, sin chi, standardised on training events);
- ``phi``: an MLP per event, to a ``latent``-dimensional vector;
- pool: the mean (default) or the sum over the events of the set. The mean is
  bounded whatever N; ``ln N`` is appended to the pooled vector (``log_n=True``)
  so that one network can know how many events it averaged, i.e. how much to
  trust the mean, across set sizes;
- ``rho``: an MLP to one output (``head="point"``), or to a mean and a width
  :math:`(\mu, \sigma)` of a Gaussian predictive density (``head="gaussian"``,
  output ``(batch, 2)``; see :mod:`models.heads`).

The summary phi learns (``summary="learned"``, the default) is whatever end-to-end
training on sets makes of it. With ``summary="score"`` phi instead ends in
``len(score_points)`` outputs, meant to be regressed event by event on the
simulator's joint scores :math:`t(z; d_k)` at fixed reference shifts :math:`d_k`
(standardised by the buffers ``score_mean``, ``score_std``), and the pooled means
are standardised again (``pooled_mean``, ``pooled_std``) before rho. The mean of the
scores at :math:`d_k` over a set is its log-likelihood's slope there, divided by N,
so the pooled vector is a near-sufficient summary of the set by construction;
:mod:`models.deepsets_score` trains it in two stages. With hadronic nuisances
(``nuisance_scores=n_u``) phi has ``n_u`` more outputs per reference shift in
``nuisance_points``: the joint scores in the whitened form factors u at u = 0,
so the pooled vector also carries what the set says about u, and rho, trained on
sets each drawn in its own world from the prior, marginalises u. Once the network
holds the summary's moments reweighted to any (delta C9, u) (:meth:`DeepSets.set_profile`),
:meth:`~DeepSets.profiled_estimate` takes rho's estimate as the start of the summary's own
fit in (delta C9, u) under the nuisances' prior (:func:`models.summary_fit.gauss_newton`):
the profiled, prior-constrained estimate and error of delta C9.

Sets come as a tensor ``(batch, N, 4)``: equal-size sets need no mask. Sets of
different sizes are padded to the longest and passed with a boolean ``mask``
``(batch, N)`` (True = real event); padded rows never reach the result
(:func:`models.data.collate_sets` builds both). For inference on large sets,
:meth:`DeepSets.forward` takes ``event_chunk``: phi then runs over chunks of
events and the pooled sums are accumulated, which bounds memory at any N.

>>> import torch
>>> net = DeepSets(hidden=8, latent=4).eval()
>>> x = torch.randn(2, 10, 4)
>>> torch.allclose(net(x), net(x[:, torch.randperm(10)]), atol=1e-5)   # permutation invariant
True
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.features import N_EVENT_VARIABLES, N_FEATURES, EventFeatures, mlp
from models.heads import GaussianHead, check_head, finish_output, head_units

__all__ = ["POOLS", "SUMMARIES", "DeepSets"]

POOLS = ("mean", "sum")
SUMMARIES = ("learned", "score")


class DeepSets(nn.Module):
    """Deep Sets regressor; ``hparams`` rebuilds it: ``DeepSets(**net.hparams)``.

    Parameters: ``hidden`` width and ``phi_layers`` hidden layers of phi,
    ``latent`` size of the pooled vector, ``rho_hidden`` / ``rho_layers`` of rho
    (``rho_hidden`` defaults to ``hidden``), ``pool`` ("mean" or "sum"),
    ``log_n`` (append ln N to the pooled vector), ``dropout`` in rho, ``outputs`` (1),
    ``head`` ("point", or "gaussian": a mean and a sigma per output, :mod:`models.heads`;
    recorded in ``hparams`` only when it is not "point"); ``summary`` ("learned", or "score"
    with the reference shifts ``score_points``: phi's outputs are joint scores there, ``latent``
    is then ``len(score_points)``; recorded only when it is "score"); ``nuisance_scores`` (the number of
    nuisances, 0 for none) and ``nuisance_points`` (the shifts of their scores): a score summary's outputs
    then go on with the nuisances' scores at each of those shifts, and ``latent`` grows by their number.
    """

    def __init__(
        self,
        hidden: int = 128,
        phi_layers: int = 3,
        latent: int = 128,
        rho_hidden: int | None = None,
        rho_layers: int = 3,
        pool: str = "mean",
        log_n: bool = True,
        dropout: float = 0.0,
        outputs: int = 1,
        head: str = "point",
        summary: str = "learned",
        score_points: tuple[float, ...] | None = None,
        nuisance_scores: int = 0,
        nuisance_points: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if summary not in SUMMARIES:
            raise ConfigError(f"summary must be one of {', '.join(SUMMARIES)}, got {summary!r}")
        if summary == "score":
            if not score_points:
                raise ConfigError("summary 'score' needs score_points, the reference shifts of phi's joint scores")
            score_points = tuple(float(d) for d in score_points)
            from models.score_summary import check_nuisance_scores

            nuisance_scores, nuisance_points = check_nuisance_scores(nuisance_scores, nuisance_points)
            latent = len(score_points) + nuisance_scores * len(nuisance_points)
        elif nuisance_scores:
            raise ConfigError("nuisance scores are a score summary's: they need summary='score'")
        if pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if latent < 1 or outputs < 1:
            raise ConfigError(f"latent and outputs must be >= 1, got {latent}, {outputs}")
        rho_hidden = hidden if rho_hidden is None else rho_hidden
        self.hparams = dict(
            hidden=hidden, phi_layers=phi_layers, latent=latent, rho_hidden=rho_hidden,
            rho_layers=rho_layers, pool=pool, log_n=log_n, dropout=dropout, outputs=outputs,
        )
        if check_head(head) != "point":
            self.hparams["head"] = head
        self.summary = summary
        self.score_points = score_points if summary == "score" else None
        if summary == "score":
            self.hparams.update(summary=summary, score_points=score_points)
            if nuisance_scores:
                self.hparams.update(nuisance_scores=int(nuisance_scores), nuisance_points=nuisance_points)
        self.nuisance_scores = int(nuisance_scores)
        self.nuisance_points = nuisance_points if self.nuisance_scores else None
        self.head_kind = head
        self.gaussian = GaussianHead() if head == "gaussian" else None
        self.pool = pool
        self.log_n = bool(log_n)
        self.outputs = outputs
        self.features = EventFeatures()
        # phi ends in a nonlinearity so that the pooled vector is a sum of features, not of a linear map
        # (a linear last layer would commute with the pooling and waste capacity).
        # A score summary ends linearly: its outputs are regression targets, and their means are the summary.
        self.phi = (mlp(N_FEATURES, hidden, phi_layers, latent) if summary == "score"
                    else nn.Sequential(mlp(N_FEATURES, hidden, phi_layers, latent), nn.ReLU()))
        if summary == "score":
            for name in ("score_mean", "pooled_mean"):
                self.register_buffer(name, torch.zeros(latent))
            for name in ("score_std", "pooled_std"):
                self.register_buffer(name, torch.ones(latent))
        self.rho = mlp(latent + int(self.log_n), rho_hidden, rho_layers, head_units(head, outputs), dropout=dropout)
        if self.nuisance_scores:  # the summary's moments in (delta C9, u); zero: none, rho alone
            from kernels.theory import n_monomials

            pq = 3 * n_monomials(self.nuisance_scores)
            self.register_buffer("profile0", torch.zeros(pq, dtype=torch.float64))
            self.register_buffer("profile1", torch.zeros(pq, latent, dtype=torch.float64))
            self.register_buffer("profile2", torch.zeros(3, latent, latent, dtype=torch.float64))
            self.register_buffer("profile_box", torch.zeros(1 + self.nuisance_scores, 2, dtype=torch.float64))
            self.register_buffer("profile_prior", torch.ones((), dtype=torch.float64))

    def set_profile(self, moments, box, prior_scale: float = 1.0) -> DeepSets:
        """Store phi's pooled moments reweighted to any (delta C9, u) (``(m0, m1, m2c)``,
        :func:`models.summary_fit.nuisance_moments_model`), the fit's box ``(1 + n_u, 2)`` and the prior's
        scale s (u ~ N(0, s^2)): :meth:`profiled_estimate` then fits each set's summary."""
        if not self.nuisance_scores:
            raise ConfigError("the summary's profile needs the nuisances' scores (nuisance_scores > 0)")
        if not (np.isfinite(prior_scale) and prior_scale > 0):
            raise ConfigError(f"prior_scale must be > 0, got {prior_scale!r}")
        for name, value in zip(("profile0", "profile1", "profile2", "profile_box"), (*moments, box)):
            buf = getattr(self, name)
            v = torch.as_tensor(np.asarray(value), dtype=torch.float64)
            if v.shape != buf.shape:
                raise ConfigError(f"{name} must have shape {tuple(buf.shape)}, got {tuple(v.shape)}")
            buf.copy_(v)
        self.profile_prior.fill_(float(prior_scale))
        return self

    @property
    def has_profile(self) -> bool:
        return bool(self.nuisance_scores) and bool(self.profile0.abs().sum() > 0)

    @torch.no_grad()
    def profiled_estimate(self, sets, batch: int = 8, event_chunk: int | None = 1 << 15):
        """``(values (M,), errors (M,), converged (M,))`` of sets ``(M, N, 4)``: rho's estimate refined by the
        summary's fit in (delta C9, u) (module docstring); a set whose fit does not converge keeps rho's."""
        from models.summary_fit import gauss_newton, nuisance_moments_model

        if not self.has_profile or self.head_kind != "gaussian":
            raise ConfigError("profiled_estimate needs a Gaussian head and the summary's moments (set_profile)")
        arr = torch.as_tensor(np.asarray(sets, dtype=np.float32))
        self._check(arr, None)
        dev = self.pooled_mean.device
        was = self.training
        self.eval()
        rho, raw = [], []
        try:
            for a in range(0, arr.shape[0], batch):
                p = self.pooled(arr[a:a + batch].to(dev), event_chunk=event_chunk)
                rho.append(finish_output(self.rho(p), self.head_kind, self.outputs, self.gaussian).double().cpu())
                raw.append((p[:, : self.pooled_mean.numel()] * self.pooled_std + self.pooled_mean).double().cpu())
        finally:
            self.train(was)
        rho, raw = torch.cat(rho).numpy().reshape(-1, 2), torch.cat(raw).numpy()
        n_u = self.nuisance_scores
        start = np.zeros((raw.shape[0], 1 + n_u))
        start[:, 0] = rho[:, 0]
        prior = np.zeros((1 + n_u, 1 + n_u))
        prior[1:, 1:] = np.eye(n_u) / float(self.profile_prior) ** 2
        model = nuisance_moments_model(tuple(b.cpu().numpy() for b in (self.profile0, self.profile1, self.profile2)),
                                       1, n_u)
        phi, cov, ok = gauss_newton(model, raw, arr.shape[1], start, self.profile_box.cpu().numpy(), prior=prior)
        if not ok.all():
            logging.getLogger(__name__).info("deepsets: %d of %d sets' profiled fits did not converge in the box; "
                                             "they keep rho's estimate", int((~ok).sum()), ok.size)
        values = np.where(ok, phi[:, 0], rho[:, 0])
        errors = np.where(ok, np.sqrt(np.abs(cov[:, 0, 0])), rho[:, 1])
        return values, errors, ok

    def fit_features(self, events, max_events: int = 1_000_000) -> DeepSets:
        """Fit the event standardisation on training events ``(n, 4)``."""
        self.features.fit(events, max_events=max_events)
        return self

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        if x.ndim != 3 or x.shape[-1] != N_EVENT_VARIABLES:
            raise ConfigError(f"sets must have shape (batch, N, {N_EVENT_VARIABLES}), got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ConfigError(f"mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")

    def pooled(self, x: torch.Tensor, mask: torch.Tensor | None = None, event_chunk: int | None = None) -> torch.Tensor:
        """The pooled set representation ``(batch, latent [+ 1])`` that rho reads."""
        self._check(x, mask)
        n_events = x.shape[1]
        step = n_events if not event_chunk else max(1, int(event_chunk))
        total = None
        for s in range(0, n_events, step):
            h = self.phi(self.features(x[:, s : s + step]))
            if mask is not None:
                h = h * mask[:, s : s + step, None].to(h.dtype)
            part = h.sum(dim=1)
            total = part if total is None else total + part
        if mask is None:
            n = torch.full((x.shape[0], 1), float(n_events), dtype=total.dtype, device=total.device)
        else:
            n = mask.sum(dim=1, keepdim=True).to(total.dtype)
            if bool((n < 1).any()):
                raise ConfigError("every set needs at least one event (a mask row is all False)")
        pooled = total / n if self.pool == "mean" else total
        if self.summary == "score":
            pooled = (pooled - self.pooled_mean) / self.pooled_std
        if self.log_n:
            pooled = torch.cat([pooled, torch.log(n)], dim=1)
        return pooled

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, event_chunk: int | None = None) -> torch.Tensor:
        return finish_output(self.rho(self.pooled(x, mask, event_chunk)), self.head_kind, self.outputs, self.gaussian)

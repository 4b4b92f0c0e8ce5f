r"""Deep Sets in several Wilson coefficients: a pooled joint-score summary and a multivariate Gaussian head.

.. math::

    s(X) = \frac1N \sum_{e=1}^{N} \phi(x_e), \qquad
    (\hat c, L) = \rho\big(s(X), \ln N\big), \qquad \hat\Sigma = L L^T / N

- ``phi`` regresses each event's joint scores :math:`\partial_c \ln q(z, c_k)` at K reference points
  :math:`c_k` of the coefficient space (K x n outputs; :func:`models.event_ratio.ratio_scores`), standardised,
  on events of the scan with their exact scores (SALLY, Brehmer, Cranmer, Louppe and Pavez 2018). The mean over
  a set is the gradient of its log-likelihood at every :math:`c_k`, over N (up to a constant per point): a
  near-sufficient summary of the whole vector c by construction, whatever N.
- ``rho`` reads the standardised means with ln N and outputs the estimate vector and the lower Cholesky factor
  of its covariance, divided by :math:`\sqrt N` (:class:`models.heads.MultivariateGaussianHead`): the widths'
  1/sqrt(N) is built in, so one network serves every set size. It is trained by the Gaussian NLL
  (:class:`models.heads.MultivariateGaussianNLLLoss`) on sets drawn fresh at shifts spread over a box wider than
  the evaluation's and sizes spread over the range of N (log-uniformly), so the covariance is each set's own,
  correlations included, not only widths.

**rho's training sets, synthetic.** rho must invert the summary's mean to far better than its noise at the
largest N (0.1 sigma at 70,000 events is 1/2,000 of the box): thousands of simulated sets are too few. But
the summary's distribution is known for any c from one pool of events: with weights ``w_e(c) = b_e . m(c)``
(each event's density at c over the pool's, linear in the monomials ``m(c)``; :func:`summary_moments`), the
mean and covariance of phi under c are ratios of the pooled moments ``sum_e b_e phi_e`` and
``sum_e b_e phi_e phi_e^T``, exact polynomials in c; a set of N events has a summary close to
``Normal(mean(c), cov(c) / N)`` (the central limit), so :func:`synthetic_pooled` draws as many training sets
as wanted, at any c and N, at no simulation cost. Sets simulated in full validate rho.

**The summary's own fit.** The same moments give the summary's mean ``mu(c)`` and covariance ``Sigma(c)`` at any
c, exactly in form. Once they are stored in the network (:meth:`JointDeepSets.set_moments`), :meth:`~JointDeepSets.estimate`
starts from rho's estimate and takes Gauss-Newton steps on the set's Gaussian likelihood of its summary,
``N (s - mu(c))^T Sigma(c)^{-1} (s - mu(c))`` (:func:`summary_fit`); the covariance is then the inverse of the
summary's Fisher matrix ``N J^T Sigma^{-1} J`` (``J = d mu / d c``) at the estimate. So rho need only land near
the answer: the last step is not learned. A set whose steps do not converge, or leave the box rho trained over,
keeps rho's estimate and covariance.

Training reuses the two stages of :mod:`models.deepsets_score` (:func:`~models.deepsets_score.pretrain_phi`,
:func:`~models.deepsets_score.pooled_vectors`, :func:`~models.deepsets_score.train_rho`). Where the events and
sets come from is the caller's business (:mod:`orchestrator.jobs.joint_deepsets`).

>>> net = JointDeepSets(2, [[0.0, 0.0], [1.0, -1.0]], hidden=8, rho_hidden=8)
>>> values, covs = net.estimate(torch.randn(3, 50, 4).numpy())
>>> values.shape, covs.shape, bool(np.all(np.linalg.eigvalsh(covs) > 0))
((3, 2), (3, 2, 2), True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kernels.errors import ConfigError
from models.event_posterior import FEATURES
from models.features import N_EVENT_VARIABLES, as_events, mlp
from models.heads import MultivariateGaussianHead, multivariate_estimates
from models.summary_fit import gauss_newton

__all__ = ["JointDeepSets", "summary_moments", "synthetic_pooled", "summary_fit"]


class JointDeepSets(nn.Module):
    """The network of the module docstring; ``hparams`` rebuilds it: ``JointDeepSets(**net.hparams)``.

    ``score_points`` (K, n): the reference shifts of phi's scores; ``hidden`` / ``phi_layers`` of phi,
    ``rho_hidden`` / ``rho_layers`` of rho; ``features``: phi's input encoding (:data:`models.event_posterior.FEATURES`).
    ``latent`` is K n and need not be given (it is recorded for :func:`models.deepsets_score.pretrain_phi`).
    """

    summary = "score"  # for models.deepsets_score's two stages
    head_kind = "mvn"

    def __init__(self, n_coefficients: int, score_points, hidden: int = 128, phi_layers: int = 3,
                 rho_hidden: int = 128, rho_layers: int = 3, features: str = "angular", latent: int | None = None) -> None:
        super().__init__()
        n = int(n_coefficients)
        pts = np.asarray(score_points, dtype=np.float64)
        if n < 1 or pts.ndim != 2 or pts.shape[1] != n or pts.shape[0] < 1:
            raise ConfigError(f"score_points must have shape (K >= 1, {n}), got {pts.shape}")
        if features not in FEATURES:
            raise ConfigError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        k = pts.shape[0] * n
        if latent is not None and int(latent) != k:
            raise ConfigError(f"latent is K n = {k} for these score points, got {latent}")
        self.hparams = dict(n_coefficients=n, score_points=pts.tolist(), hidden=hidden, phi_layers=phi_layers,
                            rho_hidden=rho_hidden, rho_layers=rho_layers, features=features, latent=k)
        self.n = n
        self.score_points = pts
        self.features = FEATURES[features]()
        self.phi = mlp(self.features.mean.numel(), hidden, phi_layers, k)  # linear end: regression targets
        for name in ("score_mean", "pooled_mean"):
            self.register_buffer(name, torch.zeros(k, dtype=torch.float64))
        for name in ("score_std", "pooled_std"):
            self.register_buffer(name, torch.ones(k, dtype=torch.float64))
        self.head = MultivariateGaussianHead(n)
        self.rho = mlp(k + 1, rho_hidden, rho_layers, MultivariateGaussianHead.units(n))
        p = (n + 1) * (n + 2) // 2  # the monomials of c
        self.register_buffer("moment0", torch.zeros(p, dtype=torch.float64))  # zero: no moments, rho alone
        self.register_buffer("moment1", torch.zeros(p, k, dtype=torch.float64))
        self.register_buffer("moment2", torch.zeros(p, k, k, dtype=torch.float64))
        self.register_buffer("box", torch.zeros(n, 2, dtype=torch.float64))

    def set_moments(self, moments, box) -> JointDeepSets:
        """Store the summary's pooled moments (:func:`summary_moments`) and the box ``(n, 2)`` rho was trained
        over: :meth:`estimate` then refines rho's estimates by the summary's own fit (module docstring)."""
        for name, value in zip(("moment0", "moment1", "moment2"), moments):
            getattr(self, name).copy_(torch.as_tensor(np.asarray(value), dtype=torch.float64))
        self.box.copy_(torch.as_tensor(np.asarray(box), dtype=torch.float64))
        return self

    @property
    def has_moments(self) -> bool:
        return bool(self.moment0.abs().sum() > 0)

    def fit_features(self, events, max_events: int = 1_000_000) -> JointDeepSets:
        """Fit the event standardisation on training events ``(n, 4)``."""
        self.features.fit(events, max_events=max_events)
        return self

    def pooled(self, x: torch.Tensor, mask=None, event_chunk: int | None = None) -> torch.Tensor:
        """The standardised mean of phi over each set, with ln N: ``(batch, K n + 1)``."""
        if mask is not None:
            raise ConfigError("JointDeepSets takes sets of equal size (no mask)")
        if x.ndim != 3 or x.shape[-1] != N_EVENT_VARIABLES:
            raise ConfigError(f"sets must have shape (batch, N, {N_EVENT_VARIABLES}), got {tuple(x.shape)}")
        n_events = x.shape[1]
        step = n_events if not event_chunk else max(1, int(event_chunk))
        total = sum(self.phi(self.features(x[:, s:s + step])).double().sum(dim=1) for s in range(0, n_events, step))
        pooled = (total / n_events - self.pooled_mean) / self.pooled_std
        log_n = torch.full((x.shape[0], 1), float(np.log(n_events)), dtype=pooled.dtype, device=pooled.device)
        return torch.cat([pooled, log_n], dim=1).float()

    def finish(self, raw: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """rho's raw outputs -> ``(batch, n, n + 1)``: the mean vector and the covariance's Cholesky factor over
        sqrt(N) (N from the pooled vector's last column)."""
        return self.head(raw, torch.exp(-0.5 * pooled[:, -1]))

    def forward(self, x: torch.Tensor, mask=None, event_chunk: int | None = None) -> torch.Tensor:
        p = self.pooled(x, mask, event_chunk)
        return self.finish(self.rho(p), p)

    @torch.no_grad()
    def estimate(self, sets, batch: int = 8, event_chunk: int = 1 << 15, progress=None,
                 refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Estimates ``(M, n)`` and covariances ``(M, n, n)`` of sets ``(M, N, 4)`` (``progress(k)`` per batch):
        rho's, refined by the summary's own fit when the network holds its moments and ``refine``."""
        arr = as_events(sets)
        if arr.ndim != 3:
            raise ConfigError(f"sets must have shape (M, N, 4), got {arr.shape}")
        if not (refine and self.has_moments):
            return multivariate_estimates(self, arr, batch, progress, event_chunk=event_chunk)

        def forward(x):
            p = self.pooled(x, event_chunk=event_chunk)
            return self.finish(self.rho(p), p), p

        start, cov, p = multivariate_estimates(self, arr, batch, progress, forward=forward)
        raw = p[:, :-1] * self.pooled_std.cpu().numpy() + self.pooled_mean.cpu().numpy()
        moments = tuple(m.cpu().numpy() for m in (self.moment0, self.moment1, self.moment2))
        c, c_cov, ok = summary_fit(moments, raw, arr.shape[1], start, self.box.cpu().numpy())
        return np.where(ok[:, None], c, start), np.where(ok[:, None, None], c_cov, cov)


@torch.no_grad()
def summary_moments(net: JointDeepSets, events, weights, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled moments of phi's raw outputs over a pool of ``events`` (M, 4) with per-event monomial weights
    ``weights`` (M, P) (module docstring): ``(sum_e b_e (P,), sum_e b_e phi_e (P, L), sum_e b_e phi_e phi_e^T
    (P, L, L))``, float64, each over M."""
    ev = as_events(events)
    b = np.asarray(weights, dtype=np.float64)
    if ev.ndim != 2 or b.ndim != 2 or b.shape[0] != ev.shape[0]:
        raise ConfigError(f"events (M, 4) and weights (M, P) must match, got {ev.shape} and {b.shape}")
    was = net.training
    net.eval()
    dev = net.pooled_mean.device
    p, k = b.shape[1], net.pooled_mean.numel()
    chunk = max(1024, min(int(chunk), (1 << 27) // (8 * p * k)))  # the (rows, P L) product within ~128 MB
    m1, m2 = np.zeros((p, k)), np.zeros((p * k, k))
    try:
        for s in range(0, ev.shape[0], chunk):
            phi = net.phi(net.features(torch.from_numpy(ev[s:s + chunk]).to(dev))).double().cpu().numpy()
            bw = b[s:s + chunk]
            m1 += bw.T @ phi
            m2 += (bw[:, :, None] * phi[:, None, :]).reshape(phi.shape[0], -1).T @ phi
    finally:
        net.train(was)
    n = ev.shape[0]
    return b.sum(axis=0) / n, m1 / n, m2.reshape(p, k, k) / n


def synthetic_pooled(moments, shifts, sizes, seed, chunk: int = 2048) -> torch.Tensor:
    """Raw pooled vectors ``(S, L + 1)`` (the layout of :func:`models.deepsets_score.pooled_vectors`) of sets of
    ``sizes`` (S,) events at ``shifts`` (S, n): ``Normal(mean(c), cov(c) / N)`` from :func:`summary_moments`, with
    ln N last; ``chunk`` sets at a time (each holds an L x L covariance).

    >>> mom = (np.array([1.0, 0, 0]), np.array([[0.0], [1], [0]]), np.array([[[1.0]], [[0]], [[1]]]))  # mean c, var 1
    >>> x = synthetic_pooled(mom, np.full((4000, 1), 0.5), np.full(4000, 100), 0)
    >>> round(float(x[:, 0].mean()), 2), round(float(x[:, 0].std() * 10), 1), round(float(x[0, 1]), 3)
    (0.5, 1.0, 4.605)
    """
    from kernels.theory import monomials

    m0, m1, m2 = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in moments)
    c_all = np.asarray(shifts, dtype=np.float64)
    n_all = torch.as_tensor(np.asarray(sizes), dtype=torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    k = m1.shape[1]
    out = []
    for s in range(0, c_all.shape[0], chunk):
        m = torch.from_numpy(monomials(c_all[s:s + chunk]))  # (S, P)
        z = m @ m0
        if bool((z <= 0).any()):
            raise ConfigError("a shift has no weight in the pool (the pool's events do not cover it)")
        mean = (m @ m1) / z[:, None]
        cov = torch.einsum("sp,pkl->skl", m, m2) / z[:, None, None] - mean[:, :, None] * mean[:, None, :]
        cov = cov + 1e-9 * torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(k, dtype=cov.dtype)
        n = n_all[s:s + chunk]
        noise = torch.randn(mean.shape, generator=g, dtype=torch.float64)
        draws = mean + torch.einsum("skl,sl->sk", torch.linalg.cholesky(cov), noise) / torch.sqrt(n)[:, None]
        out.append(torch.cat([draws, torch.log(n)[:, None]], dim=1).float())
    return torch.cat(out)


def _summary_model(c: np.ndarray, m0, m1, m2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The summary's mean ``mu`` (S, L), its gradient ``J = d mu / d c`` (S, n, L) and covariance (S, L, L) per event
    at the shifts ``c`` (S, n), from the pooled moments; NaN where the pool gives a shift no weight."""
    from kernels.theory import monomial_gradient, monomials

    m, g = monomials(c), monomial_gradient(c)
    z, zg = m @ m0, g @ m0  # (S,), (S, n)
    z = np.where(z > 0, z, np.nan)
    mu = (m @ m1) / z[:, None]
    J = ((g @ m1) - zg[:, :, None] * mu[:, None, :]) / z[:, None, None]
    sigma = np.einsum("sp,pkl->skl", m, m2) / z[:, None, None] - mu[:, :, None] * mu[:, None, :]
    k = mu.shape[1]
    sigma += 1e-9 * np.einsum("skk->s", sigma)[:, None, None] / k * np.eye(k)
    bad = ~np.isfinite(sigma).all(axis=(1, 2))
    sigma[bad] = np.eye(k)  # keeps the solves finite; the set's chi-square is NaN through mu
    return mu, J, sigma


def summary_fit(moments, summaries, n_events: int, start, box, iterations: int = 30,
                tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The summary's own fit (module docstring): Gauss-Newton from ``start`` (S, n) on the Gaussian likelihood of
    each set's raw summary ``summaries`` (S, L) of ``n_events`` events, under the pooled ``moments``
    (:func:`summary_moments`). Returns the estimates (S, n), their covariances (S, n, n) and whether each
    converged inside ``box`` (n, 2) widened by half its width.

    >>> rng = np.random.default_rng(1)   # a summary of mean (c, 2c) and unit covariance per event, at c = 0.3
    >>> m0, m1 = np.array([1.0, 0, 0]), np.array([[0.0, 0], [1, 2], [0, 0]])
    >>> m2 = np.array([np.eye(2), np.zeros((2, 2)), [[1.0, 2], [2, 4]]])  # E[s s^T] = 1 + mu mu^T
    >>> s = np.array([0.3, 0.6]) + rng.normal(size=(4000, 2)) / 100      # sets of 10,000 events
    >>> c, cov, ok = summary_fit((m0, m1, m2), s, 10000, np.full((4000, 1), 0.1), np.array([[-1.0, 1.0]]))
    >>> bool(ok.all()), round(float(c.mean()), 3), round(float(np.sqrt(cov[0, 0, 0]) * np.sqrt(5e4)), 3)
    (True, 0.3, 1.0)
    >>> round(float(c.std() / np.sqrt(cov[:, 0, 0]).mean()), 1)   # the spread is the bound's, 1 / sqrt(5 N)
    1.0
    """
    m0, m1, m2 = (np.asarray(a, dtype=np.float64) for a in moments)
    return gauss_newton(lambda c: _summary_model(c, m0, m1, m2), summaries, n_events, start, box,
                        iterations=iterations, tol=tol)

r"""The yardstick: the unbinned, shape-only maximum-likelihood fit and the Cramér–Rao bound.

The pdf of one event x = (q2, cos_l, cos_k, chi) at shifts d is

.. math::

    p(x \mid d) = \frac{\epsilon(x)\, G(x; d)}{\Gamma_\epsilon(d)},\qquad
    G(x; d) = \frac{9}{32\pi} \sum_i J_i(q^2; d) f_i(x) = \sum_p m_p(d)\, a_p(x)

with the monomials m(d) of :mod:`kernels.theory`. Because J is a quadratic form
in d, each event reduces once to its projections ``a_p(x)`` (:func:`project`),
and the negative log-likelihood of a set of N events is

.. math::

    -\ln L(d) = -\sum_e \ln\big(a_e \cdot m(d)\big) + N \ln\big(\Gamma \cdot m(d)\big) + \text{const},

a handful of flops per event and evaluation, whatever the theory cost was. The efficiency ``epsilon``
does not depend on d, so it enters only through ``Gamma`` (:func:`normalisation`); at generator level it is 1.

The Fisher information per event, ``I_ab(d) = E[d_a ln p  d_b ln p]``, is computed by quadrature
(:func:`fisher_information`), and ``sigma_CRB(N, d) = sqrt((I^-1)_aa / N)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels import angular
from kernels.errors import ConfigError
from kernels.refit import retry_failed
from kernels.theory import JTable, monomial_gradient, monomial_hessian, monomials

PROJECT_BATCH_EVENTS = 1 << 19
"""Events projected together in :func:`fit_sets` (bounds memory to ~50 MB)."""

_BASIS_BLOCK = 1 << 14

Efficiency = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""epsilon(q2, cos_l, cos_k, chi) -> efficiency in [0, 1] (vectorised)."""


@dataclass(frozen=True)
class PdfModel:
    """What the pdf needs besides the theory table.

    ``p(x|d) = (1 - f) eps(x) G(x; d) / Gamma_eps(d) + f B(x)``: ``efficiency`` is eps
    (None: 1), ``background`` the normalised B (None: no background) and
    ``bkg_fraction`` is f. The default is the generator level. ``q2_factor``, when given, is a
    factor of eps that depends on q2 alone and may vary fast (the window edges' loss of the q2
    smearing, :meth:`kernels.detector.DetectorConfig.window_efficiency`): eps stays the whole
    efficiency, and quadratures that interpolate eps in q2 (:mod:`kernels.image_information`)
    take this factor into their q2 weights instead.
    """

    efficiency: Efficiency | None = None
    background: Efficiency | None = None
    bkg_fraction: float = 0.0
    q2_factor: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def has_background(self) -> bool:
        return self.background is not None and self.bkg_fraction > 0

    def mixture(self, events: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-event (w, c) with ``p = w G / Gamma + c``, or None when p is G / Gamma alone."""
        if not self.has_background:
            return None
        x = [np.asarray(events[..., i], dtype=np.float64) for i in range(4)]
        eps = self.efficiency(*x) if self.efficiency is not None else np.ones_like(x[0])
        return (1 - self.bkg_fraction) * eps, self.bkg_fraction * self.background(*x)


GEN = PdfModel()


def project(table: JTable, events: np.ndarray) -> np.ndarray:
    """Per-event projections ``a[..., e, p]`` so that ``G(x_e; d) = a[e] @ m(d)``.

    ``events`` has shape ``(..., N, 4)`` with columns q2, cos_theta_mu,
    cos_theta_k, chi. Returns float64 of shape ``(..., N, P)``.
    """
    ev = np.asarray(events)
    basis = EventBasis(table, ev.reshape(-1, 4))
    a = basis.project(*table.node_rows)
    return a.reshape(ev.shape[:-1] + (a.shape[-1],))


class EventBasis:
    """The per-event work of a projection, done once: each event's q2 cell and fraction and its angular
    basis, grouped by cell. :meth:`project` then applies any stack of tables (``G_e`` and its gradient
    for the profiled fit), and :meth:`adjoint` sums weighted events back onto the nodes."""

    def __init__(self, table: JTable, events: np.ndarray):
        cols = np.ascontiguousarray(np.asarray(events).reshape(-1, 4).T, dtype=np.float64)  # (4, E), one pass
        k, t = table.locate(cols[0])
        K = table.q2.size
        # Group the events by q2 cell, then one (P x 12) @ (12 x n_c) product per cell, instead of
        # materialising a (12 x P) table per event: 4x faster, and exact. Sorting the four input
        # columns (not the twelve basis values) keeps the gathers small.
        order = np.argsort(k.astype(np.int16) if K < 2**15 else k, kind="stable")  # radix sort
        self.counts = np.bincount(k, minlength=K)
        self.ends = np.cumsum(self.counts)
        self.order, self.ks, self.ts, self.n_nodes = order, k[order], t[order], K
        cl, ck, chi = cols[1][order], cols[2][order], cols[3][order]
        F = np.empty((12, k.size))  # term-major basis of the sorted events, built in cache-sized blocks
        for s in range(0, k.size, _BASIS_BLOCK):
            e = s + _BASIS_BLOCK
            angular.basis(cl[s:e], ck[s:e], chi[s:e], axis=0, out=F[:, s:e])
        self.F = F
        self.FT = np.ascontiguousarray(F.T)

    def project(self, rows: np.ndarray, diff: np.ndarray) -> np.ndarray:
        """``(E, P)``: ``G_e`` of each of P tables given as :attr:`JTable.node_rows` ``(K, 12, P)``."""
        F, ts = self.F, self.ts
        out = np.empty((rows.shape[2], F.shape[1]))
        for c in np.flatnonzero(self.counts):  # a loop over q2 cells (a few hundred), not events
            s, e = self.ends[c] - self.counts[c], self.ends[c]
            Fc = F[:, s:e]
            out[:, s:e] = rows[c].T @ Fc + (diff[c].T @ Fc) * ts[s:e]
        a = np.empty((F.shape[1], rows.shape[2]))
        a[self.order] = out.T
        a *= angular.PREFACTOR
        return a

    def adjoint(self, weights: np.ndarray) -> np.ndarray:
        """``H (K, 12)`` with ``sum_e w_e G_e = sum_ki H_ki J_ki`` for any table J: the weighted events on the nodes."""
        w = np.asarray(weights, dtype=np.float64)[self.order] * angular.PREFACTOR
        hi = w * self.ts
        cells = np.flatnonzero(self.counts)
        starts = self.ends[cells] - self.counts[cells]
        H = np.zeros((self.n_nodes, 12))
        # events are sorted by cell: one segmented sum per node side, not a loop over events
        wt = np.add.reduceat(self.F * w, starts, axis=1)  # sum of w f over each cell
        ht = np.add.reduceat(self.F * hi, starts, axis=1)  # sum of w t f
        H[cells] += (wt - ht).T
        H[cells + 1] += ht.T
        return H

    @property
    def cell_features(self) -> np.ndarray:
        """``(E, 24)``, events in cell order: ``PREFACTOR * ((1 - t) f, t f)``, so that an event of cell k has
        ``G_e = cell_features[e] . (J[k], J[k + 1])`` (the two nodes' 12 coefficients each)."""
        if not hasattr(self, "_cell_features"):
            fw = np.empty((self.ts.size, 24))
            np.multiply(self.FT, (angular.PREFACTOR * (1.0 - self.ts))[:, None], out=fw[:, :12])
            np.multiply(self.FT, (angular.PREFACTOR * self.ts)[:, None], out=fw[:, 12:])
            self._cell_features = fw
        return self._cell_features

    def cell_apply(self, rows: np.ndarray) -> np.ndarray:
        """``(E, R)`` in **cell order** (``order``): ``G_e`` of R tables ``rows`` ``(K, 12, R)``. One
        ``(n_k x 24) @ (24 x R)`` product per q2 cell; for sums over a set's events, where the order is moot."""
        fw = self.cell_features
        R = rows.shape[2]
        out = np.empty((fw.shape[0], R))
        for c in np.flatnonzero(self.counts):  # a loop over q2 cells (a few hundred), not events
            s, e = self.ends[c] - self.counts[c], self.ends[c]
            np.matmul(fw[s:e], rows[c:c + 2].reshape(24, R), out=out[s:e])
        return out

    def cell_adjoint(self, weights: np.ndarray) -> np.ndarray:
        """:meth:`adjoint` of weights given in **cell order**: ``H (K, 12)`` with ``sum_e w_e G_e = sum H J``."""
        w = np.asarray(weights, dtype=np.float64) * angular.PREFACTOR
        cells = np.flatnonzero(self.counts)
        starts = self.ends[cells] - self.counts[cells]
        wt = np.add.reduceat(self.F * w, starts, axis=1)  # sum of w f over each cell
        ht = np.add.reduceat(self.F * (w * self.ts), starts, axis=1)  # sum of w t f
        H = np.zeros((self.n_nodes, 12))
        H[cells] += (wt - ht).T
        H[cells + 1] += ht.T
        return H


def normalisation(table: JTable, model: PdfModel = GEN, **quad) -> np.ndarray:
    """``Gamma_p`` such that ``Gamma(d) = m(d) @ Gamma_p`` = integral of eps * G over the phase space."""
    if model.efficiency is None:
        return table.rate_integral()
    return _Quadrature(table, model, **quad).normalisation()


def nll(d, a: np.ndarray, norm: np.ndarray, mix=None) -> float:
    """Negative log-likelihood (up to a constant) of a set with projections ``a`` (N, P).

    Without background (``mix=None``) this is ``-sum ln(a m) + N ln(Gamma m)``; with
    ``mix = (w, c)`` it is ``-sum ln(w (a m) / (Gamma m) + c)``.
    """
    m = monomials(d)
    g = a @ m
    gn = norm @ m
    if mix is None:
        if np.any(g <= 0) or gn <= 0:
            return np.inf
        return float(-np.sum(np.log(g)) + a.shape[0] * np.log(gn))
    p = mix[0] * g / gn + mix[1]
    if np.any(p <= 0) or gn <= 0:
        return np.inf
    return float(-np.sum(np.log(p)))


def _scores(d, a, norm, mix):
    """Per-event d ln p / dd, shape (N, n)."""
    m = monomials(d)
    dm = monomial_gradient(d)
    g = a @ m
    gn = norm @ m
    dg = a @ dm.T  # (N, n)
    dgn = dm @ norm  # (n,)
    if mix is None:
        return dg / g[:, None] - dgn / gn
    w, c = mix
    p = w * g / gn + c
    return (w / p)[:, None] * (dg / gn - g[:, None] * dgn / gn**2)


def nll_grad(d, a: np.ndarray, norm: np.ndarray, mix=None) -> np.ndarray:
    """Gradient of :func:`nll` in d, shape (n,)."""
    return -_scores(d, a, norm, mix).sum(axis=0)


def _newton(a: np.ndarray, norm: np.ndarray, d0: np.ndarray, mix=None, iters: int = 8):
    """Newton (exact Hessian without background, BHHH with it) to start MIGRAD next to the minimum.

    Returns the point and the last Hessian of the NLL (None if it never got one).
    """
    d = d0.copy()
    hess = None
    n = d.size
    N = a.shape[0]
    d2m = monomial_hessian(n)  # second derivatives of the monomials: constant
    for _ in range(iters):
        m = monomials(d)
        dm = monomial_gradient(d)
        g = a @ m
        Gn = norm @ m
        if mix is None:  # one pass over the events: scores, gradient and exact Hessian
            if np.any(g <= 0) or Gn <= 0:
                break
            s_ev = (a @ dm.T) / g[:, None]  # d ln G per event
            sn = dm @ norm / Gn
            grad = -s_ev.sum(0) + N * sn
            hess = s_ev.T @ s_ev - np.einsum("abp,ep->ab", d2m, a / g[:, None]) + N * (
                np.einsum("abp,p->ab", d2m, norm) / Gn - np.outer(sn, sn)
            )
        else:
            if Gn <= 0 or np.any(mix[0] * g / Gn + mix[1] <= 0):
                break
            s = _scores(d, a, norm, mix)
            grad = -s.sum(0)
            hess = s.T @ s  # outer product of scores: positive definite, good near the optimum
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        step = np.clip(step, -1.0, 1.0)
        d = d - step
        if np.max(np.abs(step)) < 1e-6:  # MIGRAD polishes from here
            break
    return d, hess


@dataclass
class FitResult:
    """ML fits of many sets: estimates (M, n), HESSE errors (M, n), validity (M,) and each set's covariance
    (M, n, n; NaN where a fit failed), for the joint coverage (:func:`kernels.coverage.joint_coverage`)."""

    values: np.ndarray
    errors: np.ndarray
    valid: np.ndarray
    covariances: np.ndarray | None = None

    def __post_init__(self):
        if self.values.ndim == 2 and self.values.shape[1] == 1:  # one coefficient: flat arrays
            self.values = self.values[:, 0]
            self.errors = self.errors[:, 0]


def fit_set(a: np.ndarray, norm: np.ndarray, mix=None, start=None, limits: float = 15.0):
    """Fit one set from its projections with iminuit (MIGRAD, then HESSE).

    Returns ``(values (n,), errors (n,), valid, covariance (n, n))``.
    """
    from iminuit import Minuit

    n = next(k for k in range(1, 16) if 1 + k + k * (k + 1) // 2 == norm.size)
    d0 = np.zeros(n) if start is None else np.atleast_1d(np.asarray(start, dtype=np.float64))
    d0, hess = _newton(a, norm, d0, mix)
    step = np.full(n, 0.05)
    if not np.all(np.isfinite(d0)) or np.any(np.abs(d0) > limits):
        d0 = np.zeros(n)
    elif hess is not None and np.all(np.linalg.eigvalsh(hess) > 0):
        step = np.sqrt(np.diag(np.linalg.inv(hess)))  # the expected error: MIGRAD's best first step
    m = Minuit(lambda d: nll(d, a, norm, mix), d0, grad=lambda d: nll_grad(d, a, norm, mix))
    m.errordef = Minuit.LIKELIHOOD
    m.limits = [(-limits, limits)] * n
    m.strategy = 0
    m.errors = step
    m.migrad()
    m.hesse()
    cov = np.array(m.covariance, dtype=np.float64) if m.covariance is not None else np.full((n, n), np.nan)
    return np.array(m.values), np.array(m.errors), bool(m.valid and m.accurate), cov


def fit_sets(table: JTable, sets: np.ndarray, model: PdfModel = GEN, progress=None) -> FitResult:
    """Fit every set of ``sets`` (shape (M, N, 4)) under ``model`` (default: generator level).

    The per-event work (locating q2, the angular basis, the projections, the
    acceptance and background densities) is done once per set; every likelihood
    evaluation after that is a dot product. ``progress(k)`` is called after each set.
    """
    sets = np.asarray(sets)
    if sets.ndim != 3 or sets.shape[-1] != 4:
        raise ConfigError(f"sets must have shape (M, N, 4), got {sets.shape}")
    norm = normalisation(table, model)
    n = table.n_shifts
    M = sets.shape[0]
    values = np.empty((M, n))
    errors = np.empty((M, n))
    valid = np.empty(M, dtype=bool)
    covariances = np.empty((M, n, n))
    per_batch = max(1, PROJECT_BATCH_EVENTS // max(1, sets.shape[1]))
    for s0 in range(0, M, per_batch):  # project a batch of sets at once: the per-cell work amortises
        batch = sets[s0 : s0 + per_batch]
        a_batch = project(table, batch)
        mix_batch = model.mixture(batch)
        for j in range(a_batch.shape[0]):  # one iteration per *set*; events are vectorised
            mix = None if mix_batch is None else (mix_batch[0][j], mix_batch[1][j])
            values[s0 + j], errors[s0 + j], valid[s0 + j], covariances[s0 + j] = fit_set(a_batch[j], norm, mix)
            if progress is not None:
                progress(1)

    @functools.lru_cache(maxsize=1)  # a retried set is fitted and its NLL compared: project it once
    def projected(j):
        m = model.mixture(sets[j:j + 1])
        return project(table, sets[j]), None if m is None else (m[0][0], m[1][0])

    def refit(j, start=None, at=None):  # the fit from ``start``, or the NLL at ``at``
        a, mix = projected(j)
        return nll(at, a, norm, mix) if at is not None else fit_set(a, norm, mix, start=start)

    retry_failed(values, errors, valid, covariances, refit)
    return FitResult(values, errors, valid, covariances)


class _Quadrature:
    """Phase-space quadrature: Gauss-Legendre in q2 (per cell) and cos angles, periodic in chi.

    Exact for the generator-level integrands (polynomials in the cosines, trigonometric
    polynomials in chi, linear in q2 per cell); the Fisher integrand, a ratio, converges fast.
    """

    def __init__(self, table: JTable, model: PdfModel = GEN, n_q2: int = 3, n_cos: int = 14, n_chi: int = 24):
        self.table = table
        self.model = model
        x, w = np.polynomial.legendre.leggauss(n_cos)
        chi = (np.arange(n_chi) + 0.5) * (2 * np.pi / n_chi)
        CL, CK, CH = np.meshgrid(x, x, chi, indexing="ij")
        self.ang = (CL.ravel(), CK.ravel(), CH.ravel())
        self.w_ang = (w[:, None, None] * w[None, :, None] * np.full(n_chi, 2 * np.pi / n_chi)[None, None, :]).ravel()
        self.F = angular.basis(*self.ang)  # (A, 12)
        xq, wq = np.polynomial.legendre.leggauss(n_q2)
        k = table.cells
        lo, hi = table.q2[k], table.q2[k + 1]
        self.q2 = ((lo + hi)[:, None] / 2 + (hi - lo)[:, None] / 2 * xq[None, :]).ravel()
        self.w_q2 = ((hi - lo)[:, None] / 2 * wq[None, :]).ravel()

    def blocks(self, size: int = 64):
        """Yield (a (P, B, A), weights (B, A), eps (B, A), background (B, A) or None) over q2 blocks."""
        for s in range(0, self.q2.size, size):
            q2 = self.q2[s : s + size]
            k, t = self.table.locate(q2)
            Jp = (1 - t)[None, :, None] * self.table.coef[:, k] + t[None, :, None] * self.table.coef[:, k + 1]
            a = angular.PREFACTOR * Jp @ self.F.T  # (P, B, A)
            w = self.w_q2[s : s + size, None] * self.w_ang[None, :]
            grid = (np.broadcast_to(q2[:, None], w.shape), *(np.broadcast_to(v[None, :], w.shape) for v in self.ang))
            eps = self.model.efficiency(*grid) if self.model.efficiency is not None else np.ones_like(w)
            bkg = self.model.background(*grid) if self.model.has_background else None
            yield a, w, eps, bkg

    def normalisation(self) -> np.ndarray:
        return sum(np.einsum("pba,ba->p", a, w * eps) for a, w, eps, _ in self.blocks())

    def fisher(self, d) -> np.ndarray:
        d = self.table.shifts_array(d)
        m = monomials(d)
        dm = monomial_gradient(d)  # (n, P)
        norm = self.normalisation() if self.model.efficiency is not None else self.table.rate_integral()
        Gam = norm @ m
        dGam = dm @ norm
        f = self.model.bkg_fraction if self.model.has_background else 0.0
        acc = np.zeros((d.size, d.size))
        for a, w, eps, bkg in self.blocks():
            G = np.tensordot(m, a, axes=(0, 0))  # (B, A)
            dG = np.tensordot(dm, a, axes=(1, 0))  # (n, B, A)
            acc += _fisher_block(G, dG, Gam, dGam, w, eps, bkg, f)
        return acc

    def fisher_local(self) -> np.ndarray:
        """The Fisher matrix when the table's rows are ``[J, dJ/dtheta_1, ..., dJ/dtheta_n]`` at one point
        (:meth:`kernels.nuisances.NuisanceTable.local`): only J and its gradient enter."""
        norm = self.normalisation() if self.model.efficiency is not None else self.table.rate_integral()
        f = self.model.bkg_fraction if self.model.has_background else 0.0
        n = self.table.coef.shape[0] - 1
        acc = np.zeros((n, n))
        for a, w, eps, bkg in self.blocks():
            acc += _fisher_block(a[0], a[1:], norm[0], norm[1:], w, eps, bkg, f)
        return acc


def _fisher_block(G, dG, Gam, dGam, w, eps, bkg, f) -> np.ndarray:
    """One quadrature block's share of ``E[d ln p d ln p^T]`` from G, its gradient and the normalisation's."""
    S = G / Gam
    dS = dG / Gam - G[None] * dGam[:, None, None] / Gam**2
    p = (1 - f) * eps * S + (f * bkg if bkg is not None else 0.0)
    dp = (1 - f) * eps[None] * dS
    return np.einsum("aij,bij->ab", dp, dp * (w / np.where(p > 0, p, np.inf))[None])


def fisher_information(table: JTable, shifts, model: PdfModel = GEN) -> np.ndarray:
    """Fisher information matrix per event at ``shifts``, shape (n, n), by quadrature."""
    return _Quadrature(table, model).fisher(shifts)


def sigma_crb(table: JTable, shifts, n_events: int, model: PdfModel = GEN) -> np.ndarray | float:
    """Cramér–Rao bound on each shift for sets of ``n_events``: ``sqrt(diag(I^-1) / N)``.

    A float when the table scans one coefficient, else an array (the others free).
    """
    if n_events <= 0:
        raise ConfigError(f"number of events must be positive, got {n_events}")
    I = fisher_information(table, shifts, model)
    s = np.sqrt(np.diag(np.linalg.inv(I)) / n_events)
    return float(s[0]) if s.size == 1 else s


def fisher_information_nuisances(ntable, shifts, nuisances=None, model: PdfModel = GEN) -> np.ndarray:
    """Fisher matrix per event in the whole vector ``(c, u)`` (:mod:`kernels.nuisances`), by quadrature.

    ``nuisances``: the whitened world (default: the prior's centre, 0). The ``c`` block equals
    :func:`fisher_information` of the table contracted at that world.
    """
    u = np.zeros(ntable.n_nuisances) if nuisances is None else ntable.nuisance_array(nuisances)
    J, dJ, _ = ntable.local(ntable.at(u).shifts_array(shifts), u)
    base = ntable.at(u)
    local = JTable(base.coefficients, base.windows, base.q2, base.window_of_node, np.concatenate([J[None], dJ]),
                   base.scale, f"{base.key}-local", base.flavio_version)
    return _Quadrature(local, model).fisher_local()


def profile_information(I: np.ndarray, n_poi: int, prior_precision=None) -> np.ndarray:
    r"""The information on the first ``n_poi`` parameters with the rest profiled (Schur complement),

    .. math:: I_{\rm eff} = I_{cc} - I_{cu} (I_{uu} + \Lambda)^{-1} I_{uc},

    where ``Lambda`` is the nuisances' prior precision (``None``: a flat prior, 0). ``I`` is the total
    information (N times the per-event matrix). As in MadMiner's ``profile_information``
    (Brehmer et al. 2018); with a Gaussian prior it is the inverse of the c-block of
    ``(I + 0 (+) Lambda)^{-1}``.

    >>> I = np.array([[4.0, 2.0], [2.0, 2.0]])
    >>> profile_information(I, 1).tolist(), profile_information(I, 1, np.eye(1) * 1e12).round(6).tolist()
    ([[2.0]], [[4.0]])
    """
    I = np.asarray(I, dtype=np.float64)
    A, B, D = I[:n_poi, :n_poi], I[:n_poi, n_poi:], I[n_poi:, n_poi:]
    if D.size == 0:
        return A.copy()
    if prior_precision is not None:
        D = D + np.asarray(prior_precision, dtype=np.float64)
    return A - B @ np.linalg.solve(D, B.T)


def efficient_bound(I_event: np.ndarray, n_poi: int, n_events: int, prior_precision=None) -> tuple[np.ndarray, np.ndarray]:
    r"""The efficient Cramér–Rao bound of the parameters of interest for sets of ``n_events``:
    ``sigma_CRB,eff = sqrt(diag([(N I + 0 (+) Lambda)^{-1}]_cc))``, and that covariance.

    ``I_event``: the per-event Fisher matrix in ``(c, u)``; ``prior_precision``: Lambda (the nuisances'
    prior, ``s^-2 1`` in whitened coordinates; ``None``: flat). It tends to the fixed-theory bound as
    Lambda -> infinity and to the flat profile as Lambda -> 0. Every report calls this one function.

    >>> I = np.array([[4.0, 2.0], [2.0, 2.0]])
    >>> [round(float(x), 6) for x in efficient_bound(I, 1, 100, np.eye(1))[0]]
    [0.070535]
    """
    if n_events <= 0:
        raise ConfigError(f"number of events must be positive, got {n_events}")
    cov = np.linalg.inv(profile_information(n_events * np.asarray(I_event, dtype=np.float64), n_poi, prior_precision))
    return np.sqrt(np.diag(cov)), cov

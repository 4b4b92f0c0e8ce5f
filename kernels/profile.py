r"""The profiled unbinned ML fit: Wilson-coefficient shifts and the hadronic nuisances together.

For a set of N events sharing one world ``u`` (whitened form factors, :mod:`kernels.nuisances`),
the negative log-likelihood in the whole vector ``phi = (c, u)`` is

.. math::

    -\ln L(c, u) = -\sum_e \ln p(x_e \mid c, u) + \frac{|u|^2}{2 s^2},\qquad
    p = w_e \frac{G(x_e; c, u)}{\Gamma(c, u)} + b_e ,

with the Gaussian prior as the constraint term (``s``: ``prior_scale``) and, at detector
level with background, the per-event weights ``w_e = (1 - f) eps(x_e)`` and ``b_e = f B(x_e)``
(generator level: ``w = 1, b = 0``). G and Gamma are bi-quadratic in ``(c, u)``.

**Newton with the exact Hessian, at a handful of flops per event.** G is linear in the
tables, ``G_e = phi_e . J`` (:class:`kernels.likelihood.EventBasis`), so every sum over events
that is linear in the events' basis collapses onto the q2 nodes: with ``r_e = w_e / (p_e Gamma)``,

.. math::

    \sum_e r_e \nabla G_e = \nabla J \cdot H(r), \qquad \sum_e r_e \nabla^2 G_e = \nabla^2 J \cdot H(r),

where ``H(r) = sum_e r_e phi_e`` (:meth:`~kernels.likelihood.EventBasis.adjoint`) and the
derivative tables come from the monomials (:func:`kernels.nuisances.joint_monomial_derivatives`).
Only the outer-product term ``sum_e v_e v_e^T`` (``v_e = d ln p_e``) needs the per-event gradient:
one projection of ``1 + n`` tables per Hessian. The uncertainty of c is the c-block of the
inverse Hessian of ``-ln L``: the profiled (and prior-constrained) error, the estimate of
:func:`kernels.likelihood.efficient_bound`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.errors import ConfigError
from kernels.likelihood import GEN, EventBasis, FitResult, PdfModel, normalisation
from kernels.nuisances import NuisanceTable, check_prior_scale, joint_monomial_derivatives


@dataclass
class ProfiledFitResult(FitResult):
    """:class:`~kernels.likelihood.FitResult` plus the fitted whitened nuisances ``(M, n_u)`` and iterations."""

    nuisances: np.ndarray | None = None
    iterations: np.ndarray | None = None


class _SetLikelihood:
    """-ln L of one set and its exact derivatives in (c, u)."""

    def __init__(self, table: NuisanceTable, norm: np.ndarray, events: np.ndarray, mix, prior_scale: float):
        self.T = table.flat.coef.reshape(table.flat.coef.shape[0], -1)  # (P, K * 12)
        self.shape = table.flat.coef.shape[1:]
        self.norm = norm
        self.basis = EventBasis(table.flat, events)
        self.mix = mix
        self.nc, self.nu = table.n_shifts, table.n_nuisances
        self.lam = 1.0 / prior_scale**2
        self.calls = [0, 0]  # exact Hessians, gradients

    def _rows(self, tables: np.ndarray):
        """node_rows layout ``(K, 12, R)`` and forward differences of R tables ``(R, K, 12)``."""
        rows = np.ascontiguousarray(tables.transpose(1, 2, 0))
        diff = np.zeros_like(rows)
        diff[:-1] = rows[1:] - rows[:-1]
        return rows, diff

    def __call__(self, phi: np.ndarray, hessian: bool = True):
        """``(nll, gradient, Hessian or None)`` at ``phi``; nll is inf where the pdf is not positive."""
        c, u = phi[: self.nc], phi[self.nc :]
        self.calls[0 if hessian else 1] += 1
        m, g, h = joint_monomial_derivatives(c, u, hessian)
        J = (m @ self.T).reshape(self.shape)
        Gam, dGam = m @ self.norm, g @ self.norm
        if hessian:
            dJ = (g @ self.T).reshape(-1, *self.shape)
            a = self.basis.project(*self._rows(np.concatenate([J[None], dJ])))
            G, dG = a[:, 0], a[:, 1:]
        else:
            G, dG = self.basis.values(J), None
        if self.mix is None:
            if Gam <= 0 or np.any(G <= 0):
                return np.inf, None, None
            p_over = G / Gam  # p
            r = 1.0 / G  # w / (p Gamma)
        else:
            w, b = self.mix
            p_over = w * G / Gam + b
            if Gam <= 0 or np.any(p_over <= 0):
                return np.inf, None, None
            r = w / (p_over * Gam)
        nll = float(-np.sum(np.log(p_over)) + 0.5 * self.lam * (u @ u))
        Hc = self.T @ self.basis.adjoint(r).ravel()  # (P,): sum_e r_e (monomial tables at the events)
        A = g @ Hc  # sum_e r_e grad G_e
        S = float(np.sum(r * G))  # sum_e r_e G_e
        grad = -(A - dGam * S / Gam)
        grad[self.nc :] += self.lam * u
        if not hessian:
            return nll, grad, None
        d2Gam = h @ self.norm
        v = r[:, None] * (dG - G[:, None] * (dGam / Gam)[None, :])  # d ln p_e
        sum_d2p = (h @ Hc) - (np.outer(A, dGam) + np.outer(dGam, A)) / Gam - S * d2Gam / Gam + 2 * S * np.outer(dGam, dGam) / Gam**2
        opg = v.T @ v
        hess = -(sum_d2p - opg)
        prior = np.zeros_like(hess)
        prior[self.nc :, self.nc :] = self.lam * np.eye(self.nu)
        self.opg = opg + prior  # outer product of the scores (BHHH): positive definite, for steps far out
        return nll, grad, hess + prior


def fit_set_profiled(lik: _SetLikelihood, start=None, max_iter: int = 40, tol: float = 1e-4):
    """Damped Newton on one set. Returns ``(phi, covariance, converged, iterations)``.

    The exact Hessian is computed at the start and after the first step; later steps reuse it
    (a chord method: each costs one cheap gradient, and converges fast once the Hessian is that of
    the neighbourhood of the minimum), and it is recomputed whenever a step fails to halve the last.
    The covariance is the inverse of the last exact Hessian.
    """
    n = lik.nc + lik.nu
    phi = np.zeros(n) if start is None else np.asarray(start, dtype=np.float64).copy()
    nll, grad, hess = lik(phi)
    fail = (phi, np.full((n, n), np.nan), False)
    if not np.isfinite(nll):
        return (*fail, 0)
    full, last = 1, np.inf
    for it in range(1, max_iter + 1):
        try:
            step = np.linalg.solve(hess, grad)
            if not grad @ step > 0:  # not a descent direction: the exact Hessian is indefinite out here
                step = np.linalg.solve(lik.opg, grad)
        except np.linalg.LinAlgError:
            return (*fail, it)
        if not np.all(np.isfinite(step)):
            return (*fail, it)
        big = np.max(np.abs(step))
        if big > 1.0:  # a trust region of one unit (delta C9 or one prior sigma)
            step = step / big
        t = 1.0
        for _ in range(30):  # backtracking: never accept a worse point
            trial = phi - t * step
            new, g_new, _ = lik(trial, hessian=False)
            if np.isfinite(new) and new <= nll + 1e-9 * max(1.0, abs(nll)):
                break
            t /= 2
        else:
            return (*fail, it)
        phi, nll, grad = trial, new, g_new
        size = t * np.max(np.abs(step))
        if size < tol:
            ok = bool(np.all(np.linalg.eigvalsh(hess) > 0))
            return phi, np.linalg.inv(hess), ok, it
        if full < 2 or size > 0.5 * last or t < 1.0:
            _, _, hess = lik(phi)
            full += 1
        last = size
    return phi, np.linalg.inv(hess), False, max_iter


def fit_sets_profiled(
    table: NuisanceTable,
    sets: np.ndarray,
    model: PdfModel = GEN,
    prior_scale: float = 1.0,
    progress=None,
    norm: np.ndarray | None = None,
) -> ProfiledFitResult:
    """Profiled fit of every set of ``sets`` ``(M, N, 4)``: estimates of c with their profiled errors.

    ``norm``: the joint monomials' normalisation (:func:`kernels.likelihood.normalisation` of
    ``table.flat`` under ``model``); computed when not given (a quadrature at detector level).
    ``progress(k)`` is called after each set.
    """
    sets = np.asarray(sets)
    if sets.ndim != 3 or sets.shape[-1] != 4:
        raise ConfigError(f"sets must have shape (M, N, 4), got {sets.shape}")
    s = check_prior_scale(prior_scale)
    if norm is None:
        norm = normalisation(table.flat, model)
    M, nc, nu = sets.shape[0], table.n_shifts, table.n_nuisances
    values, errors = np.empty((M, nc)), np.empty((M, nc))
    nuis, valid, iters = np.empty((M, nu)), np.empty(M, dtype=bool), np.empty(M, dtype=int)
    mixes = model.mixture(sets)
    for j in range(M):  # one iteration per *set*; events are vectorised
        mix = None if mixes is None else (mixes[0][j], mixes[1][j])
        lik = _SetLikelihood(table, norm, sets[j], mix, s)
        phi, cov, ok, it = fit_set_profiled(lik)
        values[j], nuis[j], valid[j], iters[j] = phi[:nc], phi[nc:], ok, it
        errors[j] = np.sqrt(np.diag(cov)[:nc]) if ok else np.nan
        if progress is not None:
            progress(1)
    return ProfiledFitResult(values, errors, valid, nuis, iters)

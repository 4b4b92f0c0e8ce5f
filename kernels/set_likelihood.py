r"""Set likelihoods whose events are quadratic in the shifts and polynomial in a shared nuisance.

The nuisance ``u`` (whitened, prior ``N(0, s^2 I)``) is shared by every event of a set, so the
set's likelihood is **not** the product of per-event likelihoods marginalised over u: it is

.. math::

    -\ln L(c, u) = -\sum_e \ln G_e(c, u) + N \ln \Gamma(c, u) + \frac{|u|^2}{2 s^2},\qquad
    G_e(c, u) = m(c)^T A_e\, \mu(u),\quad \Gamma(c, u) = m(c)^T \Gamma_{pq}\, \mu(u),

with the monomials ``m(c)`` of the shifts (:func:`kernels.theory.monomials`) and ``mu(u)`` those
of the nuisances up to ``degree``: ``(1, u)`` (``degree=1``, a per-event model linear in u) or
:func:`~kernels.theory.monomials` (``degree=2``, the bi-quadratic tables of
:mod:`kernels.nuisances` themselves). Each event brings its coefficient matrix ``A_e``
``(P_c, Q)``: the projections of a theory table at the event (exact), or the outputs of a
network that learned them (:mod:`models.nuisance_posterior`). Multiplying per-event posteriors
of a network trained with u drawn per event instead averages the nuisance away event by event:
the width of the set's estimate then shrinks as 1/sqrt(N) although the shared u does not
average out, and the intervals under-cover (``tests/kernels/test_set_likelihood.py`` shows it
on a toy).

:func:`fit_set` minimises ``-ln L`` by Newton with the exact Hessian, which costs little: every
sum over events that is linear in ``1/G_e`` collapses onto one matrix ``W = sum_e A_e / G_e``,

.. math::

    \sum_e \frac{\nabla^2 G_e}{G_e} = \nabla^2\big[m(c)^T W \mu(u)\big]_{W\ \text{fixed}},

so only the outer product ``sum_e v_e v_e^T`` of the per-event gradients ``v_e = grad ln G_e``
needs the events one by one. The error of c is the c-block of the inverse Hessian at the
minimum: the profiled, prior-constrained error. The same Newton driver (:func:`fit_set`) serves the
bi-quadratic profiled fit of :mod:`kernels.profile`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.errors import ConfigError
from kernels.likelihood import FitResult
from kernels.theory import monomial_gradient, monomial_hessian, monomials, n_monomials

__all__ = ["n_nuisance_monomials", "nuisance_monomials", "bilinear_forms", "SetLikelihood", "fit_set", "fit_sets", "BilinearFitResult"]


def n_nuisance_monomials(n_u: int, degree: int) -> int:
    """Q: the number of nuisance monomials of ``degree`` 1 ``(1, u)`` or 2 (all up to quadratic).

    >>> n_nuisance_monomials(19, 1), n_nuisance_monomials(19, 2)
    (20, 210)
    """
    if degree not in (1, 2):
        raise ConfigError(f"the nuisance degree must be 1 or 2, got {degree!r}")
    return 1 + n_u if degree == 1 else n_monomials(n_u)


def nuisance_monomials(u, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mu(u)`` ``(Q,)``, its gradient ``(n_u, Q)`` and Hessian ``(n_u, n_u, Q)``."""
    u = np.atleast_1d(np.asarray(u, dtype=np.float64))
    n = u.size
    if degree == 2:
        return monomials(u), monomial_gradient(u), monomial_hessian(n)
    if degree != 1:
        raise ConfigError(f"the nuisance degree must be 1 or 2, got {degree!r}")
    g = np.zeros((n, 1 + n))
    g[:, 1:] = np.eye(n)
    return np.r_[1.0, u], g, np.zeros((n, n, 1 + n))


def bilinear_forms(M: np.ndarray, mc, gc, hc, mu, gu, hu, hessian: bool = True):
    """Value, gradient ``(n_c + n_u,)`` and Hessian (or None) in ``phi = (c, u)`` of ``m(c)^T M mu(u)``
    for a fixed matrix M ``(P_c, Q)``, from the monomials ``m, mu``, their gradients and Hessians;
    without ever forming the joint monomials' ``(n, n, P_c Q)`` Hessian."""
    Mu, cM = M @ mu, mc @ M
    nc, nu = gc.shape[0], gu.shape[0]
    grad = np.empty(nc + nu)
    grad[:nc], grad[nc:] = gc @ Mu, gu @ cM
    if not hessian:
        return float(mc @ Mu), grad, None
    hess = np.empty((nc + nu, nc + nu))
    hess[:nc, :nc] = np.einsum("abp,p->ab", hc, Mu)
    hess[:nc, nc:] = gc @ M @ gu.T
    hess[nc:, :nc] = hess[:nc, nc:].T
    hess[nc:, nc:] = np.einsum("ijq,q->ij", hu, cM)
    return float(mc @ Mu), grad, hess


class SetLikelihood:
    """``-ln L`` of one set and its exact gradient and Hessian in ``phi = (c, u)`` (module docstring).

    ``A`` ``(N, P_c, Q)``: each event's coefficients; ``norm`` ``(P_c, Q)``: Gamma's;
    ``prior_scale``: s (None: no constraint on u, a flat prior).
    """

    def __init__(self, A: np.ndarray, norm: np.ndarray, n_c: int, n_u: int, degree: int = 1,
                 prior_scale: float | None = 1.0) -> None:
        A = np.asarray(A, dtype=np.float64)
        norm = np.asarray(norm, dtype=np.float64)
        P, Q = n_monomials(n_c), n_nuisance_monomials(n_u, degree)
        if A.ndim != 3 or A.shape[1:] != (P, Q) or A.shape[0] < 1:
            raise ConfigError(f"event coefficients must have shape (N, {P}, {Q}), got {A.shape}")
        if norm.shape != (P, Q):
            raise ConfigError(f"the normalisation must have shape ({P}, {Q}), got {norm.shape}")
        if prior_scale is not None and not (np.isfinite(prior_scale) and prior_scale > 0):
            raise ConfigError(f"prior_scale must be > 0, got {prior_scale!r}")
        self.A, self.norm, self.nc, self.nu, self.degree = A, norm, n_c, n_u, degree
        self.lam = 0.0 if prior_scale is None else 1.0 / float(prior_scale) ** 2
        self.hc = monomial_hessian(n_c)

    @property
    def n(self) -> int:
        return self.nc + self.nu

    def _forms(self, M, mc, gc, mu, gu, hu):
        return bilinear_forms(M, mc, gc, self.hc, mu, gu, hu)

    def __call__(self, phi: np.ndarray, hessian: bool = True):
        """``(nll, gradient, Hessian or None)``; nll is inf where an event's G or Gamma is not positive."""
        phi = np.asarray(phi, dtype=np.float64)
        c, u = phi[: self.nc], phi[self.nc :]
        mc, gc = monomials(c), monomial_gradient(c)
        mu, gu, hu = nuisance_monomials(u, self.degree)
        B = self.A @ mu  # (N, P_c)
        G = B @ mc
        gam, dgam, d2gam = self._forms(self.norm, mc, gc, mu, gu, hu)
        if gam <= 0 or not np.all(G > 0):
            return np.inf, None, None
        N = G.size
        r = 1.0 / G
        nll = float(-np.sum(np.log(G)) + N * np.log(gam) + 0.5 * self.lam * (u @ u))
        W = np.einsum("e,epq->pq", r, self.A)
        _, sgrad, shess = self._forms(W, mc, gc, mu, gu, hu)  # sum_e grad G_e / G_e and sum_e hess G_e / G_e
        grad = -sgrad + N * dgam / gam
        grad[self.nc :] += self.lam * u
        if not hessian:
            return nll, grad, None
        v = np.empty((N, self.n))
        v[:, : self.nc] = (B @ gc.T) * r[:, None]
        v[:, self.nc :] = (np.einsum("epq,p->eq", self.A, mc) @ gu.T) * r[:, None]
        opg = v.T @ v
        hess = -(shess - opg) + N * (d2gam / gam - np.outer(dgam, dgam) / gam**2)
        hess[self.nc :, self.nc :] += self.lam * np.eye(self.nu)
        opg[self.nc :, self.nc :] += self.lam * np.eye(self.nu)
        self.opg = opg  # the outer product of the scores plus the prior (BHHH), for steps far out
        return nll, grad, hess


BHHH_STEPS = 2
"""Steps of :func:`fit_set` that leave the trust region take the BHHH direction for at most this many
iterations from the start (where the observed Hessian says little); later ones, a Newton step cut to the region."""


def fit_set(lik, start=None, max_iter: int = 40, tol: float = 5e-4, trust: float = 2.0):
    """Damped Newton on one set, the exact Hessian at every step. Returns ``(phi, covariance, converged, iterations)``.

    ``lik(phi, hessian)`` returns ``(nll, gradient, Hessian or None)`` and, with the Hessian, sets
    ``lik.opg``; ``lik.nc + lik.nu`` parameters (:class:`SetLikelihood`, and the bi-quadratic
    :class:`kernels.profile._SetLikelihood`).

    Where the Newton step is not a descent direction, or leaves the trust region (steps of at most
    ``trust`` units in every parameter: delta C9, or prior sigmas) in the first :data:`BHHH_STEPS`
    iterations, the step is the BHHH one (the outer product of the scores plus the prior: positive
    definite, close to the information), which from the prior's centre reaches the basin of the
    minimum in a step or two where a far-out Newton step overshoots; later, a Newton step that leaves
    the region is cut to it (BHHH steps there can crawl). Steps backtrack until -ln L does not rise. Once a Newton step is below ``tol`` it is
    taken without another evaluation (what is left is of its square) and the covariance is the inverse
    of that last exact Hessian, ``tol`` from the minimum.
    """
    n = lik.nc + lik.nu
    phi = np.zeros(n) if start is None else np.asarray(start, dtype=np.float64).copy()
    nll, grad, hess = lik(phi)
    fail = (phi, np.full((n, n), np.nan), False)
    if not np.isfinite(nll):
        return (*fail, 0)
    for it in range(1, max_iter + 1):
        try:
            step = np.linalg.solve(hess, grad)
            big = float(np.max(np.abs(step)))
            descent = bool(grad @ step > 0)
            newton = descent and big <= trust
            if not descent or (big > trust and it <= BHHH_STEPS):
                step = np.linalg.solve(lik.opg, grad)
                big = float(np.max(np.abs(step)))
        except np.linalg.LinAlgError:
            return (*fail, it)
        if not np.isfinite(big):
            return (*fail, it)
        if newton and big < tol:
            ev = np.linalg.eigvalsh(hess)
            ok = bool(np.all(ev > 0))
            return phi - step, np.linalg.inv(hess) if ok else np.full((n, n), np.nan), ok, it
        if big > trust:
            step = step * (trust / big)
        t = 1.0
        for _ in range(30):  # backtracking: never accept a worse point; the full step brings its Hessian
            trial = phi - t * step
            new, g_new, h_new = lik(trial, hessian=t == 1.0)
            if np.isfinite(new) and new <= nll + 1e-9 * max(1.0, abs(nll)):
                break
            t /= 2
        else:
            return (*fail, it)
        if h_new is None:
            new, g_new, h_new = lik(trial)
        phi, nll, grad, hess = trial, new, g_new, h_new
    return phi, np.full((n, n), np.nan), False, max_iter


@dataclass
class BilinearFitResult(FitResult):
    """:class:`~kernels.likelihood.FitResult` (covariances: the c-block, profiled) plus the fitted nuisances
    ``(M, n_u)`` and iterations ``(M,)``."""

    nuisances: np.ndarray | None = None
    iterations: np.ndarray | None = None


def fit_sets(coefficients, norm: np.ndarray, n_c: int, n_u: int, degree: int = 1, prior_scale: float | None = 1.0,
             n_sets: int | None = None, progress=None) -> BilinearFitResult:
    """Fit every set: ``coefficients`` ``(M, N, P_c, Q)``, or a callable ``j -> (N, P_c, Q)`` with ``n_sets``
    (one set's coefficients at a time). ``progress(k)`` after each set."""
    if callable(coefficients):
        if n_sets is None:
            raise ConfigError("give n_sets with a callable of the coefficients")
        get, M = coefficients, int(n_sets)
    else:
        arr = np.asarray(coefficients)
        if arr.ndim != 4:
            raise ConfigError(f"coefficients must have shape (M, N, P_c, Q), got {arr.shape}")
        get, M = (lambda j: arr[j]), arr.shape[0]
    values, errors = np.empty((M, n_c)), np.empty((M, n_c))
    nuis, valid, iters = np.empty((M, n_u)), np.empty(M, dtype=bool), np.empty(M, dtype=int)
    covs = np.empty((M, n_c, n_c))
    for j in range(M):  # one iteration per set; the events are vectorised
        phi, cov, ok, it = fit_set(SetLikelihood(get(j), norm, n_c, n_u, degree, prior_scale))
        values[j], nuis[j], valid[j], iters[j], covs[j] = phi[:n_c], phi[n_c:], ok, it, cov[:n_c, :n_c]
        errors[j] = np.sqrt(np.diag(cov)[:n_c]) if ok else np.nan
        if progress is not None:
            progress(1)
    return BilinearFitResult(values, errors, valid, covs, nuisances=nuis, iterations=iters)

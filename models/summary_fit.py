r"""A learned summary's own fit: Gauss-Newton on its Gaussian likelihood, and an emulator of its mean and covariance.

A network that compresses a set of N events to a summary s (Deep Sets' pooled scores, the ResNet's voxel score sums)
has, by the central limit, ``s ~ Normal(mu(c), Sigma(c) / N)``. Where mu and Sigma are known at every shift c, the
set's estimate is the minimiser of ``N (s - mu(c))^T Sigma(c)^{-1} (s - mu(c))`` and its covariance the inverse of
the summary's Fisher matrix ``N J Sigma^{-1} J^T`` (``J = d mu / d c``): :func:`gauss_newton`, started from the
network's own estimate. So the network need only land near the answer: the last step is not learned.

Deep Sets knows mu and Sigma exactly from pooled moments (:func:`models.deepsets_joint.summary_moments`). An image's
summary is not a mean over events, so the ResNet's are learned instead (:func:`fit_emulator`): at generator level
an expectation over events at c is a ratio ``m(c) . a / Gamma(c)`` of the monomials ``m(c)`` (1, c_i, c_i c_j) and
the exact rate ``Gamma(c) = m(c) . rate``; the emulator takes that form, with a 1/N term for what the images' finite
occupancies add, for the mean and for N times the covariance, and regresses both on the summaries of the
network's own training images at their shifts and sizes.

>>> rng = np.random.default_rng(0)  # a summary of mean (c, 2c) / Gamma(c), unit covariance per event
>>> rate = np.array([1.0, 0.2, 0.1])
>>> c = rng.uniform(-1, 1, (20000, 1)); n = rng.integers(1000, 5000, 20000)
>>> m = np.concatenate([np.ones_like(c), c, c * c], 1)
>>> s = (m[:, 1:2] * [1.0, 2.0]) / (m @ rate)[:, None] + rng.normal(size=(20000, 2)) / np.sqrt(n)[:, None]
>>> emu = fit_emulator(s, c, n, rate)
>>> mu, J, sigma = emulator_model(emu, np.array([[0.5]]), 3000)
>>> np.round(mu * 1.125, 2).tolist(), np.round(sigma[0], 1).tolist()   # Gamma(0.5) = 1.125
([[0.5, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
"""

from __future__ import annotations

import numpy as np

from kernels.errors import ConfigError
from kernels.theory import monomial_gradient, monomials

__all__ = ["gauss_newton", "fit_emulator", "emulator_model", "nuisance_moments_model"]


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` per set; a singular ``a`` gives NaN for its set (that set then keeps the network's estimate)."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        out = np.full(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + a.shape[-1:] + b.shape[-1:], np.nan)
        for i in range(a.shape[0]):  # only when some set's matrix is singular: the others one by one
            try:
                out[i] = np.linalg.solve(a[i], b[i])
            except np.linalg.LinAlgError:
                pass
        return out


def gauss_newton(model, summaries, n_events: int, start, box, iterations: int = 30,
                 tol: float = 1e-7, prior=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The summary's own fit (module docstring): Gauss-Newton from ``start`` (S, n) on the Gaussian likelihood of
    each set's summary ``summaries`` (S, L) of ``n_events`` events, where ``model(c)`` gives the mean (S, L), its
    gradient ``J`` (S, n, L) and the covariance per event (S, L, L) at parameters ``c`` (S, n). Steps move no
    parameter by more than a quarter of ``box`` (n, 2): a trust region. ``prior``: the precision matrix (n, n) of
    a Gaussian constraint about 0 (e.g. nuisances' whitened prior, zero rows for the parameters of interest),
    added to the set's information. Returns the estimates (S, n), their covariances (S, n, n) and whether each
    converged inside the box widened by half its width."""
    s = np.asarray(summaries, dtype=np.float64)
    c = np.array(start, dtype=np.float64, copy=True)
    box = np.asarray(box, dtype=np.float64)
    width = box[:, 1] - box[:, 0]
    lo, hi = box[:, 0] - 0.5 * width, box[:, 1] + 0.5 * width
    S, n = c.shape
    lam = np.zeros((n, n)) if prior is None else np.asarray(prior, dtype=np.float64) / float(n_events)
    if lam.shape != (n, n):
        raise ConfigError(f"the prior's precision must be {n} x {n}, got {np.shape(prior)}")
    ok = np.zeros(S, dtype=bool)
    cap = 0.25 * width
    mu, J, sigma = model(c)
    for _ in range(iterations):
        W_J = _solve(sigma, J.transpose(0, 2, 1))  # Sigma^-1 J^T, (S, L, n)
        info = J @ W_J + lam  # J Sigma^-1 J^T per event, and the prior's share of it, (S, n, n)
        rhs = np.einsum("sln,sl->sn", W_J, s - mu) - c @ lam
        step = _solve(info, rhs[:, :, None])[:, :, 0]
        with np.errstate(invalid="ignore"):
            ok = np.all(np.abs(step) <= tol * np.maximum(1.0, width), axis=1)
            scale = np.minimum(1.0, np.min(cap / np.maximum(np.abs(step), 1e-300), axis=1))
        c = c + scale[:, None] * step
        if ok.all():
            break
        mu, J, sigma = model(c)
    info = J @ _solve(sigma, J.transpose(0, 2, 1)) + lam
    with np.errstate(invalid="ignore"):
        inside = np.all((c >= lo) & (c <= hi), axis=1) & np.isfinite(c).all(axis=1)
    cov = _solve(info * n_events, np.broadcast_to(np.eye(n), info.shape))
    good = ok & inside & np.isfinite(cov).all(axis=(1, 2))
    return c, cov, good


def fit_emulator(summaries, shifts, sizes, rate, ridge: float = 0.01, chunk: int = 4096) -> dict:
    """The summary's emulator (module docstring), regressed on summaries ``(M, L)`` of sets of ``sizes`` (M,) events
    at ``shifts`` (M, n), with the exact rate's monomial coefficients ``rate`` (P,): the mean by least squares
    weighted by each summary's precision, then N times the covariance on the residuals' outer products (normal
    equations, ``chunk`` rows at a time). ``ridge`` adds that fraction of each variance to it (a floor for
    directions the regression resolves worst). Returns the arrays :func:`emulator_model` reads."""
    s = np.asarray(summaries, dtype=np.float64)
    c = np.asarray(shifts, dtype=np.float64).reshape(s.shape[0], -1)
    n = np.asarray(sizes, dtype=np.float64).reshape(-1)
    z = np.asarray(rate, dtype=np.float64)
    if s.ndim != 2 or n.size != s.shape[0] or z.size != monomials(c[:1]).shape[1]:
        raise ConfigError(f"summaries (M, L), shifts (M, n), sizes (M,) and a rate of the monomials of n must "
                          f"match, got {s.shape}, {c.shape}, {n.shape} and {z.shape}")
    if not np.all(n > 0):
        raise ConfigError("every summary's set needs events")
    n0 = float(n.min())
    m = monomials(c)
    Z = m @ z
    if not np.all(Z > 0):
        raise ConfigError("the rate is not positive at every shift")
    X = np.concatenate([m, m * (n0 / n)[:, None]], axis=1)  # the 1/N part scaled to O(1)
    w = np.sqrt(n) / Z
    p2, L = X.shape[1], s.shape[1]
    mean_coef = np.linalg.lstsq(X * w[:, None], s * (Z * w)[:, None], rcond=None)[0]
    r = s - (X @ mean_coef) / Z[:, None]
    xtx, xty = X.T @ X, np.zeros((p2, L * L))
    for a in range(0, s.shape[0], chunk):
        rr = r[a:a + chunk]
        outer = (n[a:a + chunk] * Z[a:a + chunk])[:, None, None] * rr[:, :, None] * rr[:, None, :]
        xty += X[a:a + chunk].T @ outer.reshape(rr.shape[0], -1)
    cov_coef = np.linalg.solve(xtx, xty).reshape(p2, L, L)
    scale = np.concatenate([np.ones(p2 // 2), np.full(p2 // 2, n0)])  # back to the coefficients of 1/N
    return {"rate": z, "mean": mean_coef * scale[:, None], "cov": cov_coef * scale[:, None, None],
            "ridge": np.float64(ridge)}


def emulator_model(emulator, c, n_events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The emulated mean (S, L), its gradient (S, n, L) and covariance per event (S, L, L) at shifts ``c`` (S, n)
    for sets of ``n_events``: :func:`gauss_newton`'s model. NaN where the rate is not positive."""
    c = np.atleast_2d(np.asarray(c, dtype=np.float64))
    z, A, V = (np.asarray(emulator[k], dtype=np.float64) for k in ("rate", "mean", "cov"))
    p = z.size
    A = A[:p] + A[p:] / float(n_events)
    V = V[:p] + V[p:] / float(n_events)
    m, g = monomials(c), monomial_gradient(c)
    Z, Zg = m @ z, g @ z
    Z = np.where(Z > 0, Z, np.nan)
    mu = (m @ A) / Z[:, None]
    J = ((g @ A) - Zg[:, :, None] * mu[:, None, :]) / Z[:, None, None]
    sigma = np.einsum("sp,pkl->skl", m, V) / Z[:, None, None]
    sigma = 0.5 * (sigma + sigma.transpose(0, 2, 1))
    diag = np.einsum("skk->sk", sigma)
    sigma = sigma + float(emulator["ridge"]) * diag[:, :, None] * np.eye(mu.shape[1])
    bad = ~np.isfinite(sigma).all(axis=(1, 2))
    sigma[bad] = np.eye(mu.shape[1])  # keeps the solves finite; the set's chi-square is NaN through mu
    return mu, J, sigma


def nuisance_moments_model(moments, n_c: int, n_u: int):
    r""":func:`gauss_newton`'s model in ``phi = (c, u)`` (shifts, then whitened nuisances) of a summary that is a
    mean over events, from pooled moments reweighted to any ``(c, u)``
    (:func:`kernels.joint_nuisance.nuisance_mixture_weights`): ``moments = (m0 (P_c Q,), m1 (P_c Q, L), m2c
    (P_c, L, L))``, with ``mu(c, u) = m . m1 / m . m0`` over the joint monomials ``m = m(c) (x) m(u)`` and the
    covariance per event from the second moments at u = 0 (``m2c``, the rows of ``m(c) (x) 1``): the covariance
    sets only the fit's weights and error, and the nuisances move it little, where its 19 x 19 extra rows would
    cost the moments 200 times as much. Returns ``model(phi (S, n_c + n_u)) -> (mu, J, sigma)``.

    >>> rng = np.random.default_rng(2)   # one shift, one nuisance: the mean (c + u/2) / Gamma, unit variance
    >>> P, Q = 3, 3
    >>> m0 = np.zeros(P * Q); m0[0] = 1.0                     # Gamma = 1
    >>> m1 = np.zeros((P * Q, 1)); m1[1 * Q + 0] = 1.0; m1[0 * Q + 1] = 0.5
    >>> m2 = np.zeros((P, 1, 1)); m2[0] = 1.0; m2[2] = 1.0    # E[s^2] at u = 0: 1 + c^2
    >>> mu, J, sigma = nuisance_moments_model((m0, m1, m2), 1, 1)(np.array([[0.4, 0.2]]))
    >>> round(float(mu[0, 0]), 3), J[0, :, 0].round(3).tolist(), round(float(sigma[0, 0, 0]), 3)
    (0.5, [1.0, 0.5], 1.0)
    """
    m0, m1, m2 = (np.asarray(a, dtype=np.float64) for a in moments)
    P = monomials(np.zeros((1, n_c))).shape[1]
    Q = monomials(np.zeros((1, n_u))).shape[1]
    L = m1.shape[1]
    if m0.shape != (P * Q,) or m1.shape != (P * Q, L) or m2.shape != (P, L, L):
        raise ConfigError(f"moments must be ({P * Q},), ({P * Q}, L) and ({P}, L, L) for {n_c} shifts and {n_u} "
                          f"nuisances, got {m0.shape}, {m1.shape}, {m2.shape}")
    m0c, m1c = m0[::Q], m1[::Q]

    def model(phi):
        phi = np.atleast_2d(np.asarray(phi, dtype=np.float64))
        S = phi.shape[0]
        c, u = phi[:, :n_c], phi[:, n_c:]
        mc, gc, mu_, gu = monomials(c), monomial_gradient(c), monomials(u), monomial_gradient(u)
        m = (mc[:, :, None] * mu_[:, None, :]).reshape(S, P * Q)
        g = np.concatenate([(gc[:, :, :, None] * mu_[:, None, None, :]).reshape(S, n_c, P * Q),
                            (mc[:, None, :, None] * gu[:, :, None, :]).reshape(S, n_u, P * Q)], axis=1)
        z, zg = m @ m0, g @ m0
        z = np.where(z > 0, z, np.nan)
        mean = (m @ m1) / z[:, None]
        J = ((g @ m1) - zg[:, :, None] * mean[:, None, :]) / z[:, None, None]
        zc = mc @ m0c
        zc = np.where(zc > 0, zc, np.nan)
        mean_c = (mc @ m1c) / zc[:, None]
        sigma = np.einsum("sp,pkl->skl", mc, m2) / zc[:, None, None] - mean_c[:, :, None] * mean_c[:, None, :]
        sigma += 1e-9 * np.einsum("skk->s", sigma)[:, None, None] / L * np.eye(L)
        bad = ~np.isfinite(sigma).all(axis=(1, 2))
        sigma[bad] = np.eye(L)  # keeps the solves finite; the set's chi-square is NaN through the mean
        return mean, J, sigma

    return model

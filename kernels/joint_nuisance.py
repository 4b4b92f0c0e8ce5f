r"""The simulator's joint quantities in the form-factor nuisances u, linear in u at the prior's centre.

Beside :mod:`kernels.joint` (the Wilson coefficients' exact per-event scores and ratios): the joint
scores in the whitened nuisances of :mod:`kernels.nuisances` (:func:`nuisance_scores`), the per-event
u-slopes of the ratio with their exact mean, a control variate (:func:`nuisance_quadratic`), reference
samples of them (whole or chunk by chunk), and the weights that reweight a pool drawn at u = 0 to any
``(c, u)`` exactly (:func:`nuisance_mixture_weights`).
"""

from __future__ import annotations

import numpy as np

from kernels import detector as _detector
from kernels import likelihood
from kernels.errors import ConfigError
from kernels.joint import (ReferenceSample, _events, _reference, _reference_chunks, _shifts, _signal, normalisation,
                           true_efficiency, voxel_sums)
from kernels.pool import mixture_density
from kernels.theory import monomials, n_monomials

__all__ = ["nuisance_linear_table", "nuisance_scores", "voxel_nuisance_score_sums", "normalisation_slopes",
           "nuisance_quadratic", "nuisance_reference_sample", "nuisance_reference_chunks", "nuisance_mixture_weights"]


def nuisance_linear_table(ntable) -> JTable:
    """The bi-quadratic tables of :mod:`kernels.nuisances` cut to the terms of degree 0 and 1 in the
    whitened nuisances u: ``m(c) (x) (1, u_1 .. u_n)``, a JTable of ``P_c (1 + n_u)`` tables. At u = 0
    they give G and its exact u-gradient, ``G(z; c, u) = G(z; c, 0) + u . grad_u G(z; c, 0) + O(u^2)``."""
    if hasattr(ntable, "linear_table"):  # a kernels.amplitudes.AmplitudeTable: the power corrections too
        return ntable.linear_table()
    coef = np.ascontiguousarray(ntable.coef[:, : 1 + ntable.n_nuisances]).reshape(-1, *ntable.coef.shape[2:])
    return ntable._jtable(coef, f"{ntable.key}-linear")


def _linear_parts(ntable, a: np.ndarray, d: np.ndarray):
    """``G`` (E,) and ``grad_u G`` (E, n_u) at u = 0 from linear-table projections ``a`` (E, P_c (1 + n_u))."""
    P_c = n_monomials(ntable.n_shifts)
    a = a.reshape(a.shape[0], P_c, -1)
    m = monomials(d)  # (E, P_c)
    both = np.einsum("epq,ep->eq", a, m)
    return both[:, 0], both[:, 1:]


def nuisance_scores(ntable, true_events, d, norm: np.ndarray, is_signal=None) -> np.ndarray:
    """The exact joint score in the whitened nuisances at u = 0, ``d/du ln p(z | d, u)`` ``(n, n_u)``:
    ``grad_u G / G - grad_u Gamma / Gamma`` for signal events, 0 for background (its density does not
    depend on u: the fraction is fixed). ``d``: per-event delta C9 ``(n,)`` or one value; ``norm``:
    :func:`normalisation` of :func:`nuisance_linear_table` at the level."""
    lin = nuisance_linear_table(ntable)
    z = _events(true_events)
    dd = _shifts(ntable.at(np.zeros(ntable.n_nuisances)), d, z.shape[0])
    sig = _signal(is_signal, z.shape[0])
    nrm = np.asarray(norm, dtype=np.float64).reshape(n_monomials(ntable.n_shifts), -1)
    gam = monomials(dd) @ nrm  # (n, 1 + n_u)
    out = np.zeros((z.shape[0], ntable.n_nuisances))
    if sig.any():
        G, dG = _linear_parts(ntable, likelihood.project(lin, z[sig]), dd[sig])
        out[sig] = dG / G[:, None] - gam[sig, 1:] / gam[sig, :1]
    return out


def voxel_nuisance_score_sums(ntable, true_events, observed, d: float, bins: int, norm: np.ndarray,
                              is_signal=None) -> np.ndarray:
    """The sums of the joint scores in the whitened nuisances at ``(d, u = 0)`` (:func:`nuisance_scores`) over the
    events of each voxel, ``(n_u, B, B, B)`` float32, binned as :func:`voxel_score_sums` bins them."""
    return voxel_sums(nuisance_scores(ntable, true_events, d, norm, is_signal), observed, bins)


def _delta_powers(c: np.ndarray, r: float) -> np.ndarray:
    """Coefficients ``(..., 3)`` of a quadratic in d rewritten in powers of ``delta = d - r``."""
    return np.stack([c[..., 0] + c[..., 1] * r + c[..., 2] * r * r, c[..., 1] + 2 * c[..., 2] * r, c[..., 2]], axis=-1)


def normalisation_slopes(norm: np.ndarray, d_ref: float) -> np.ndarray:
    """``grad_u Gamma(d, 0) / Gamma(d_ref, 0)`` ``(n_u, 3)`` in powers of ``delta = d - d_ref``, from the
    normalisation of :func:`nuisance_linear_table` (``(P_c (1 + n_u),)`` or ``(P_c, 1 + n_u)``, one coefficient)."""
    r = float(d_ref)
    nrm = np.asarray(norm, dtype=np.float64).reshape(3, -1)
    at = float(monomials(np.array([r])) @ nrm[:, 0])
    return _delta_powers(nrm[:, 1:].T, r) / at


def nuisance_quadratic(ntable, true_events, d_ref: float, norm: np.ndarray, is_signal=None):
    """The joint u-slopes of the ratio for events drawn at ``(d_ref, u = 0)`` and their exact mean.

    ``b*(z, d) = grad_u G(z; d, 0) / G(z; d_ref, 0)``, quadratic in ``delta = d - d_ref``: ``(n, n_u, 3)``
    coefficients; background events get the normalisation's ``grad_u Gamma(d, 0) / Gamma(d_ref, 0)``.
    Over events drawn at d_ref, ``E[b*] = grad_u Gamma(d, 0) / Gamma(d_ref, 0)`` exactly (the mean,
    ``(n_u, 3)``), and ``E[b* | x]`` is the slope a per-event model of the ratio learns: the control
    variate of its calibration, as :func:`joint_quadratic` is for the delta C9 part.
    """
    z = _events(true_events)
    r = float(d_ref)
    P_c = n_monomials(ntable.n_shifts)
    nrm = np.asarray(norm, dtype=np.float64).reshape(P_c, -1)  # (P_c, 1 + n_u) in powers of d
    mean = normalisation_slopes(nrm, r)
    sig = _signal(is_signal, z.shape[0])
    out = np.broadcast_to(mean, (z.shape[0], *mean.shape)).copy()
    if sig.any():
        a = likelihood.project(nuisance_linear_table(ntable), z[sig]).reshape(-1, P_c, nrm.shape[1])
        g_ref = a[:, :, 0] @ monomials(np.array([r]))  # (E,) G(z; d_ref, 0)
        out[sig] = _delta_powers(np.swapaxes(a[:, :, 1:], 1, 2), r) / g_ref[:, None, None]
    return out, mean


def _nuisance_reference(ntable, n, level, detector, d_ref: float, norm):
    if int(n) != n or n < 2:
        raise ConfigError(f"a reference sample needs at least 2 events, got {n}")
    table = ntable.at(np.zeros(ntable.n_nuisances))
    if norm is None:
        norm = normalisation(nuisance_linear_table(ntable), true_efficiency(level, table.windows, detector))
    return table, (lambda z, sig: nuisance_quadratic(ntable, z, d_ref, norm, sig))


def nuisance_reference_sample(ntable, n: int, seed, level: str = "gen", detector: _detector.DetectorConfig | None = None,
                              d_ref: float = 0.0, norm: np.ndarray | None = None, chunk: int = 1 << 18) -> ReferenceSample:
    """``n`` events at ``(d_ref, u = 0)`` and ``level`` with their joint u-slopes (:func:`nuisance_quadratic`) as
    control ``(n, n_u, 3)``, in chunks (seed ``(*seed, c)``). ``norm``: the level's normalisation of
    :func:`nuisance_linear_table` (computed when None)."""
    table, control = _nuisance_reference(ntable, n, level, detector, d_ref, norm)
    return _reference(table, n, seed, level, detector, d_ref, chunk, (ntable.n_nuisances, 3), control)


def nuisance_reference_chunks(ntable, n: int, seed, level: str = "gen", detector: _detector.DetectorConfig | None = None,
                              d_ref: float = 0.0, norm: np.ndarray | None = None, chunk: int = 1 << 18):
    """:func:`nuisance_reference_sample`'s events one chunk at a time (the same events, chunk by chunk): a
    :class:`ReferenceSample` per chunk, so that millions of reference events never sit in memory at once
    (their controls are ``n_u x 3`` numbers each)."""
    table, control = _nuisance_reference(ntable, n, level, detector, d_ref, norm)
    return _reference_chunks(table, n, seed, level, detector, d_ref, chunk, control)


def nuisance_mixture_weights(ntable, true_events, points, norm_flat: np.ndarray, norm_central: np.ndarray,
                             is_signal=None) -> np.ndarray:
    r"""Per-event weights ``(n, P_c Q)`` that reweight a pool drawn at u = 0, an equal mixture of the shifts
    ``points`` ``(K, n_c)``, to any ``(c, u)`` exactly: ``E_{c,u}[f] = E_pool[f b] . mu / (E_pool[b] . mu)`` with
    ``mu`` the joint monomials (:func:`kernels.nuisances.joint_monomials`).

    A signal event gets ``a(z) / D(z)``, its projections on the bi-quadratic tables (``ntable.flat``) over the
    pool's density ``D(z) = (1/K) sum_k G(z; c_k, 0) / Gamma(c_k, 0)``; a background event, whose density depends
    on neither, the level's normalisation ``norm_flat`` (:func:`kernels.joint.normalisation` of ``ntable.flat``),
    so that ``E_pool[b] . mu = Gamma(c, u)`` in both parts. ``norm_central``: the same of ``ntable.at(0)``.
    """
    z = _events(true_events)
    sig = _signal(is_signal, z.shape[0])
    nf = np.asarray(norm_flat, dtype=np.float64).ravel()
    out = np.broadcast_to(nf, (z.shape[0], nf.size)).copy()
    if sig.any():
        a = likelihood.project(ntable.flat, z[sig])
        Q = a.shape[1] // n_monomials(ntable.n_shifts)  # the columns of m(u) = 1 are the central world's
        dens = mixture_density(a[:, ::Q], np.asarray(norm_central, dtype=np.float64),
                               np.atleast_2d(np.asarray(points, dtype=np.float64)).reshape(-1, ntable.n_shifts))
        out[sig] = a / dens[:, None]
    return out

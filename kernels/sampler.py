r"""A vectorised, exact sampler of the 4D B0 -> K*0 mu mu rate.

The model is the interpolated theory table of :mod:`kernels.theory`: J is
linear in q2 inside each cell of the q2 grid. Per event:

1. q2 is drawn exactly from its marginal (piecewise linear): a cell by its
   integrated rate, then a position in it by the inverse CDF of a linear density;
2. the angles are drawn from the conditional density at that q2 by accept-reject,
   repeated **for the same q2** until accepted (dropping the q2 of a rejected
   event would distort the q2 spectrum). The proposal draws cos(theta_K) from the
   cell's transverse/longitudinal mixture ``(1-phi) 3/4 (1-c^2) + phi 3/2 c^2``,
   the exact cos(theta_K) marginal, and cos(theta_l), chi uniformly; the envelope
   is the cell's maximum of density / proposal, found on a fine grid with a
   safety margin and checked on every candidate.

Everything is numpy on float32 blocks that stay in cache; there is no
per-event Python loop. The random stream is a PCG64 seeded from a
:class:`numpy.random.SeedSequence` of the given seed entropy, e.g.
``(seed, point, chunk)``, so the output depends on that and on nothing else.

:func:`sample_uniform_baseline` is the textbook method (a uniform 4D proposal
under one global maximum), kept as the benchmark's reference.
"""

from __future__ import annotations

import functools

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kernels import angular
from kernels.errors import ConfigError
from kernels.event_store import COLUMNS
from kernels.theory import JTable

BLOCK = 1 << 16
"""Events per vectorised block: large enough to amortise numpy's call overhead, small enough for L2."""

ENVELOPE_MARGIN = 1.03
TWO_PI = np.float32(2 * np.pi)
CHI_MAX = np.nextafter(np.float32(2 * np.pi), np.float32(0))  # float32(2 pi) rounds above 2 pi


class EnvelopeError(RuntimeError):
    """The accept-reject envelope was exceeded: the sample would be biased (a bug, never silent)."""


def _rng(seed) -> np.random.Generator:
    entropy = [int(s) for s in np.atleast_1d(np.asarray(seed, dtype=object))]
    if any(s < 0 for s in entropy):
        raise ConfigError(f"seed must be non-negative, got {seed}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _density32(Jt: np.ndarray, cl, ck, chi) -> np.ndarray:
    """sum_i J_i f_i for float32 arrays; ``Jt`` has shape (12, m). Fused to limit temporaries."""
    cl2 = cl * cl
    ck2 = ck * ck
    sk2 = 1 - ck2
    sl2 = 1 - cl2
    sl = np.sqrt(sl2)
    s2k = 2 * np.sqrt(sk2) * ck
    c2l = 2 * cl2 - 1
    cchi = np.cos(chi)
    schi = np.sin(chi)
    # Group by the cos_k structure: sk2 * [...] + ck2 * [...] + s2k * [...]
    g_s = Jt[0] + Jt[2] * c2l + Jt[7] * cl + sl2 * (Jt[4] * (2 * cchi * cchi - 1) + Jt[11] * (2 * schi * cchi))
    g_c = Jt[1] + Jt[3] * c2l + Jt[8] * cl
    s2l = 2 * sl * cl
    g_x = cchi * (Jt[5] * s2l + Jt[6] * sl) + schi * (Jt[9] * sl + Jt[10] * s2l)
    return sk2 * g_s + ck2 * g_c + s2k * g_x


@dataclass
class _Compiled:
    """Per (table, shifts) sampling tables; building costs tens of milliseconds, so they are memoised."""

    q2_lo: np.ndarray  # (C,) cell lower edge
    width: np.ndarray  # (C,)
    r0: np.ndarray  # (C,) rate at the lower node
    r1: np.ndarray  # (C,) rate at the upper node
    cdf: np.ndarray  # (C,) cumulative cell probabilities
    J0: np.ndarray  # (C, 12) float32 J at lower node
    dJ: np.ndarray  # (C, 12) float32 J(upper) - J(lower)
    phi: np.ndarray  # (C,) float32 longitudinal fraction of the cos_k proposal
    bound: np.ndarray  # (C,) float32 envelope for density / proposal-shape
    g_max: float  # global max of the density (for the baseline)
    q2_windows: tuple


def _proposal_shape(phi, ck):
    """Proposal density in cos_k, times 2 (the uniform cos_l and chi factors are absorbed in the bound)."""
    return (1 - phi) * 0.75 * (1 - ck * ck) + phi * 1.5 * ck * ck


@functools.lru_cache(maxsize=1)
def _envelope_grid():
    """The angular grid of the envelope, its basis ``(G, 12)`` (constant: built once), the cos_k axis and the shape."""
    n_cl, n_ck, n_chi = 41, 41, 72
    cl, ck, chi = np.meshgrid(
        np.linspace(-1, 1, n_cl), np.linspace(-1, 1, n_ck), np.linspace(0, 2 * np.pi, n_chi, endpoint=False), indexing="ij"
    )
    F = angular.basis(cl.ravel(), ck.ravel(), chi.ravel())
    F.flags.writeable = False
    return F, np.ascontiguousarray(ck[0, :, 0]), (n_cl, n_ck, n_chi)


def _compile(table: JTable, shifts) -> _Compiled:
    J = table.at(shifts)  # (K, 12) float64
    r = angular.rate(J)
    if np.any(r <= 0):
        raise ConfigError(f"the rate is not positive everywhere at shifts {list(np.atleast_1d(shifts))}")
    k = table.cells
    q2 = table.q2
    width = q2[k + 1] - q2[k]
    area = width * (r[k] + r[k + 1]) / 2
    cdf = np.cumsum(area)
    cdf /= cdf[-1]
    T, L = angular.cos_k_weights(J)
    phi_node = L / (T + L)
    phi = (phi_node[k] + phi_node[k + 1]) / 2

    # Envelope: max over the angles, at both nodes of a cell, of density / proposal shape.
    # The proposal shape depends on cos_k alone, and x -> x / shape is monotone, so the grid's max of
    # density / shape is the max over cos_k of (the max over cos_l and chi of the density) / shape:
    # the same number, bit for bit, at 1/(n_cl n_chi) of the work.
    F, ck_axis, (n_cl, n_ck, n_chi) = _envelope_grid()
    # One product over all nodes, as before: a blocked product may round differently in the last bit,
    # which would change the sampled events.
    dens = (J @ F.T).reshape(-1, n_cl, n_ck, n_chi)  # sum_i J_i f_i at every grid point
    dk = dens.max(axis=3).max(axis=1)  # (K, n_ck)
    g_max = float(dk.max())  # the density's max over the grid
    shape = _proposal_shape(phi[:, None], ck_axis[None, :])  # (C, n_ck)
    bound = np.maximum(dk[k] / shape, dk[k + 1] / shape).max(axis=1)
    return _Compiled(
        q2_lo=q2[k],
        width=width,
        r0=r[k],
        r1=r[k + 1],
        cdf=cdf,
        J0=J[k].astype(np.float32),
        dJ=(J[k + 1] - J[k]).astype(np.float32),
        phi=phi.astype(np.float32),
        bound=(bound * ENVELOPE_MARGIN).astype(np.float32),
        g_max=g_max * ENVELOPE_MARGIN,
        q2_windows=table.windows,
    )


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 64


def compiled(table: JTable, shifts) -> _Compiled:
    """Memoised :func:`_compile` (keyed by table and shifts; a few dozen entries at most)."""
    key = (table.key, tuple(table.shifts_array(shifts).tolist()))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    c = _compile(table, shifts)
    _CACHE[key] = c
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return c


def _draw_q2(c: _Compiled, rng: np.random.Generator, n: int):
    u = rng.random((2, n))
    cell = np.searchsorted(c.cdf, u[0], side="right")
    np.minimum(cell, len(c.cdf) - 1, out=cell)
    a, b = c.r0[cell], c.r1[cell]
    # Inverse CDF of the linear density a + (b - a) t on [0, 1], in the cancellation-free form.
    t = u[1] * (a + b) / (a + np.sqrt(a * a + u[1] * (b * b - a * a)))
    q2 = c.q2_lo[cell] + t * c.width[cell]
    return cell, t.astype(np.float32), q2


def _block(c: _Compiled, rng: np.random.Generator, n: int) -> np.ndarray:
    """n events, shape (4, n) float32, q2 first."""
    cell, t, q2 = _draw_q2(c, rng, n)
    Jt = (c.J0[cell] + t[:, None] * c.dJ[cell]).T.copy()  # (12, n)
    phi_all = c.phi[cell]
    bound_all = c.bound[cell]
    out = np.empty((4, n), dtype=np.float32)
    out[0] = q2
    pending = np.arange(n)
    while pending.size:
        m = pending.size
        u = rng.random((5, m), dtype=np.float32)
        phi = phi_all[pending]
        # cos_k from the mixture: longitudinal c = cbrt(2u-1) (density 3/2 c^2),
        # transverse c = 2 sin(asin(2u-1)/3) (density 3/4 (1-c^2)).
        v = 2 * u[1] - 1
        ck = np.where(u[0] < phi, np.cbrt(v), 2 * np.sin(np.arcsin(v) / 3))
        cl = 2 * u[2] - 1
        chi = np.minimum(u[3] * TWO_PI, CHI_MAX)
        Jp = Jt[:, pending] if m < n else Jt
        g = _density32(Jp, cl, ck, chi)
        env = bound_all[pending] * _proposal_shape(phi, ck)
        if np.any(g > env):
            worst = float(np.max(g / env))
            raise EnvelopeError(f"accept-reject envelope exceeded by a factor {worst:.4f}; raise ENVELOPE_MARGIN")
        acc = u[4] * env < g
        idx = pending[acc]
        out[1, idx] = cl[acc]
        out[2, idx] = ck[acc]
        out[3, idx] = chi[acc]
        pending = pending[~acc]
    return out


def _to_table(arr: np.ndarray, table: JTable, shifts) -> pa.Table:
    n = arr.shape[1]
    d = table.shifts_array(shifts)
    cols = {name: pa.array(arr[i]) for i, name in enumerate(COLUMNS)}
    for name, v in zip(table.shift_columns, d):
        cols[name] = pa.array(np.full(n, v, dtype=np.float64))
    return pa.table(cols)


def sample_array(table: JTable, shifts, n: int, seed) -> np.ndarray:
    """n events at ``shifts`` as a float32 array of shape (4, n): q2, cos_theta_mu, cos_theta_k, chi."""
    if int(n) != n or n <= 0:
        raise ConfigError(f"number of events must be a positive integer, got {n}")
    n = int(n)
    c = compiled(table, shifts)
    rng = _rng(seed)
    out = np.empty((4, n), dtype=np.float32)
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        out[:, s:e] = _block(c, rng, e - s)
    return out


def sample(table: JTable, shifts, n: int, seed) -> pa.Table:
    """n events at ``shifts`` as an Arrow table with the contract columns.

    Columns ``q2, cos_theta_mu, cos_theta_k, chi`` (float32) and one float64
    column per shift (``dc9``, ...). Memory is bounded by the caller's ``n``:
    generate large samples in chunks, each with its own seed entropy
    ``(seed, point, chunk)``.
    """
    return _to_table(sample_array(table, shifts, n, seed), table, shifts)


def sample_uniform_baseline(table: JTable, shifts, n: int, seed) -> np.ndarray:
    """The textbook sampler: uniform 4D proposal under one global maximum. Shape (4, n).

    Same model and same density code as :func:`sample_array`; only the
    proposal differs. Kept as the reference for ``wcscan bench generate``.
    """
    c = compiled(table, shifts)
    rng = _rng(seed)
    lo = np.array([w[0] for w in c.q2_windows])
    hi = np.array([w[1] for w in c.q2_windows])
    wcdf = np.cumsum(hi - lo) / np.sum(hi - lo)
    cell_edges = c.q2_lo
    out = np.empty((4, n), dtype=np.float32)
    filled = 0
    while filled < n:
        m = BLOCK
        u = rng.random((6, m), dtype=np.float32)
        w = np.minimum(np.searchsorted(wcdf, u[0], side="right"), len(lo) - 1)
        q2 = lo[w] + u[1] * (hi[w] - lo[w])
        cell = np.clip(np.searchsorted(cell_edges, q2, side="right") - 1, 0, len(cell_edges) - 1)
        t = ((q2 - c.q2_lo[cell]) / c.width[cell]).astype(np.float32)
        Jt = (c.J0[cell] + t[:, None] * c.dJ[cell]).T
        cl = 2 * u[2] - 1
        ck = 2 * u[3] - 1
        chi = np.minimum(u[4] * TWO_PI, CHI_MAX)
        g = _density32(Jt, cl, ck, chi)
        acc = u[5] * np.float32(c.g_max) < g
        k = min(int(acc.sum()), n - filled)
        sel = np.flatnonzero(acc)[:k]
        out[0, filled : filled + k] = q2[sel]
        out[1, filled : filled + k] = cl[sel]
        out[2, filled : filled + k] = ck[sel]
        out[3, filled : filled + k] = chi[sel]
        filled += k
    return out

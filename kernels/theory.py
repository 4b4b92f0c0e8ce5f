r"""Theory tables: flavio's angular coefficients as exact quadratic forms in the shifts.

For real shifts ``d`` of n Wilson coefficients, every angular coefficient is a
quadratic form, ``J(q2; d) = sum_p m_p(d) T_p(q2)`` with the monomials
``m(d) = (1, d_1, ..., d_n, d_1 d_1, d_1 d_2, ..., d_n d_n)``. The tables
``T_p`` are built from ``1 + 2n + n(n-1)/2`` flavio evaluations on a q2 grid
over the windows and cached on disk, keyed by their inputs and the flavio
version. Between nodes J is interpolated linearly in q2: the sampler, the
likelihood and the Fisher information all use this same model.

>>> monomials(np.array([2.0]))
array([1., 2., 4.])
"""

from __future__ import annotations

import functools

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kernels import angular
from kernels.errors import TheoryError
from kernels.files import atomic_path

log = logging.getLogger(__name__)

TABLE_VERSION = 1
"""Bump when the table construction changes: it is part of the cache key."""

SHIFT_COLUMNS: dict[str, str] = {
    "C9_bsmumu": "dc9",
    "C10_bsmumu": "dc10",
    "C9p_bsmumu": "dc9p",
    "C10p_bsmumu": "dc10p",
    "C7_bs": "dc7",
    "C7p_bs": "dc7p",
    "CS_bsmumu": "dcs",
    "CSp_bsmumu": "dcsp",
    "CP_bsmumu": "dcp",
    "CPp_bsmumu": "dcpp",
}
"""Scannable Wilson coefficients (flavio basis, WET at 4.8 GeV) -> dataset column of their shift."""

CHARMONIUM = (8.0, 15.0)
"""GeV^2. The theory engine does not model the charmonium resonances here."""

Q2_MIN = 4 * 0.1056583755**2
"""Kinematic lower edge, 4 m_mu^2, GeV^2."""

Q2_MAX = (5.27966 - 0.89555) ** 2
"""Kinematic upper edge, (m_B0 - m_K*0)^2, GeV^2."""

DEFAULT_WINDOWS = ((1.1, 6.0),)

SCAN_COEFFICIENTS = ("C9_bsmumu",)
"""The coefficients that ``wcscan generate``, ``images``, ``fit`` and ``run`` scan: delta C9 alone (joint fits: :mod:`kernels.likelihood`)."""

WC_SCALE = 4.8


def coefficient_for(name: str) -> str:
    """The flavio coefficient for a coefficient or shift-column name (``dc9`` -> ``C9_bsmumu``)."""
    if name in SHIFT_COLUMNS:
        return name
    for coeff, col in SHIFT_COLUMNS.items():
        if col == name:
            return coeff
    known = ", ".join(f"{c} ({s})" for c, s in SHIFT_COLUMNS.items())
    raise TheoryError(f"unknown Wilson coefficient {name!r}; known: {known}")


def validate_windows(windows) -> tuple[tuple[float, float], ...]:
    """Check q2 windows and return them sorted as float pairs.

    Refuses a window that is empty, overlaps the charmonium region (8 to 15
    GeV^2), lies outside the kinematic range, or overlaps another window.

    >>> validate_windows([(15.0, 19.0), (1.1, 6.0)])
    ((1.1, 6.0), (15.0, 19.0))
    >>> validate_windows([(7.0, 9.0)])
    Traceback (most recent call last):
    ...
    kernels.errors.TheoryError: q2 window [7, 9] overlaps the charmonium region [8, 15] GeV^2, which the theory does not model
    """
    out = []
    if not windows:
        raise TheoryError("no q2 window given")
    for w in windows:
        try:
            lo, hi = (float(v) for v in w)
        except (TypeError, ValueError):
            raise TheoryError(f"q2 window {w!r} is not a pair of numbers LO,HI") from None
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            raise TheoryError(f"q2 window [{lo:g}, {hi:g}] is empty or not finite (need LO < HI)")
        if lo < CHARMONIUM[1] and hi > CHARMONIUM[0]:
            raise TheoryError(
                f"q2 window [{lo:g}, {hi:g}] overlaps the charmonium region "
                f"[{CHARMONIUM[0]:g}, {CHARMONIUM[1]:g}] GeV^2, which the theory does not model"
            )
        if lo < Q2_MIN or hi > Q2_MAX:
            raise TheoryError(
                f"q2 window [{lo:g}, {hi:g}] lies outside the kinematic range "
                f"[{Q2_MIN:.4f}, {Q2_MAX:.4f}] GeV^2"
            )
        out.append((lo, hi))
    out.sort()
    for (a_lo, a_hi), (b_lo, b_hi) in zip(out, out[1:]):
        if b_lo < a_hi:
            raise TheoryError(f"q2 windows [{a_lo:g}, {a_hi:g}] and [{b_lo:g}, {b_hi:g}] overlap")
    return tuple(out)


def n_monomials(n: int) -> int:
    return 1 + n + n * (n + 1) // 2


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i, n)]


@functools.lru_cache(maxsize=64)
def _pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``i <= j`` of :func:`_pairs` as two index arrays (cached; read-only)."""
    ij = np.array(_pairs(n), dtype=np.intp).reshape(-1, 2)
    i, j = np.ascontiguousarray(ij[:, 0]), np.ascontiguousarray(ij[:, 1])
    i.flags.writeable = j.flags.writeable = False
    return i, j


def monomials(d) -> np.ndarray:
    """``(1, d_1..d_n, d_i d_j for i <= j)``; ``d`` has shape ``(..., n)``."""
    d = np.atleast_1d(np.asarray(d, dtype=np.float64))
    n = d.shape[-1]
    i, j = _pair_index(n)
    out = np.empty(d.shape[:-1] + (n_monomials(n),))
    out[..., 0] = 1.0
    out[..., 1:1 + n] = d
    np.multiply(d[..., i], d[..., j], out=out[..., 1 + n:])
    return out


def monomial_gradient(d) -> np.ndarray:
    """``dm_p / dd_a``, shape ``(n, P)`` for one point ``d`` of shape ``(n,)``, or ``(..., n, P)`` for points
    ``(..., n)``."""
    d = np.atleast_1d(np.asarray(d, dtype=np.float64))
    n = d.shape[-1]
    g = np.zeros(d.shape[:-1] + (n, n_monomials(n)))
    g[..., np.arange(n), 1 + np.arange(n)] = 1.0
    i, j = _pair_index(n)
    cols = 1 + n + np.arange(i.size)
    g[..., i, cols] += d[..., j]  # d(d_i d_j)/dd_i = d_j, and 2 d_i on the diagonal (i = j), as two adds
    g[..., j, cols] += d[..., i]
    return g


def monomial_hessian(n: int) -> np.ndarray:
    """``d2 m_p / dd_a dd_b``, shape ``(n, n, P)``: constant, the monomials are at most quadratic (cached, read-only)."""
    return _monomial_hessian(int(n))


@functools.lru_cache(maxsize=64)
def _monomial_hessian(n: int) -> np.ndarray:
    h = np.zeros((n, n, 1 + n + n * (n + 1) // 2))
    col = 1 + n
    for i in range(n):
        for j in range(i, n):
            if i == j:
                h[i, i, col] = 2.0
            else:
                h[i, j, col] = h[j, i, col] = 1.0
            col += 1
    h.flags.writeable = False
    return h


def stencil(n: int) -> list[np.ndarray]:
    """The points at which a quadratic form in n variables is evaluated to find its monomial coefficients:
    ``0``, ``+e_a``, ``-e_a`` for each a, then ``e_a + e_b`` for each a < b (:func:`quadratic_coefficients`).

    >>> [p.tolist() for p in stencil(2)]
    [[0.0, 0.0], [1.0, 0.0], [-1.0, -0.0], [0.0, 1.0], [-0.0, -1.0], [1.0, 1.0]]
    """
    eye = np.eye(n)
    pts = [np.zeros(n)]
    for a in range(n):
        pts += [eye[a], -eye[a]]
    pts += [eye[a] + eye[b] for a, b in _pairs(n) if a != b]
    return pts


def quadratic_coefficients(values, n: int) -> np.ndarray:
    """The monomial coefficients ``(P, ...)`` of a quadratic form from its ``values`` on :func:`stencil`'s points.

    Exact for a quadratic form (any trailing shape: the tables are arrays of such forms).

    >>> f = lambda d: 1 + 2 * d[0] - d[1] + 3 * d[0] * d[1] + 0.5 * d[1] ** 2
    >>> quadratic_coefficients([f(p) for p in stencil(2)], 2).tolist()
    [1.0, 2.0, -1.0, 0.0, 3.0, 0.5]
    """
    vals = [np.asarray(v, dtype=np.float64) for v in values]
    J0 = vals[0]
    lin, quad = [], {}
    for a in range(n):
        Jp, Jm = vals[1 + 2 * a], vals[2 + 2 * a]
        lin.append((Jp - Jm) / 2)
        quad[(a, a)] = (Jp + Jm) / 2 - J0
    k = 1 + 2 * n
    for a, b in _pairs(n):
        if a != b:
            quad[(a, b)] = vals[k] - J0 - lin[a] - lin[b] - quad[(a, a)] - quad[(b, b)]
            k += 1
    return np.stack([J0, *lin, *(quad[p] for p in _pairs(n))])


@dataclass(frozen=True, eq=False)
class JTable:
    """Quadratic-form tables of the LHCb-convention, flavour-averaged J_i.

    ``coef[p, k, i]`` multiplies monomial p at q2 node k for term i. Nodes are
    grouped by window; interpolation never crosses a window edge. J is scaled
    so that the SM rate integrates to 1 over the windows (shape is all that
    matters for fixed-N sets); ``scale`` is the factor removed.
    """

    coefficients: tuple[str, ...]
    windows: tuple[tuple[float, float], ...]
    q2: np.ndarray  # (K,) nodes, windows concatenated
    window_of_node: np.ndarray  # (K,) int
    coef: np.ndarray  # (P, K, 12)
    scale: float
    key: str
    flavio_version: str

    @property
    def shift_columns(self) -> tuple[str, ...]:
        return tuple(SHIFT_COLUMNS[c] for c in self.coefficients)

    @property
    def n_shifts(self) -> int:
        return len(self.coefficients)

    @cached_property
    def cells(self) -> np.ndarray:
        """Indices k of the cells [q2[k], q2[k+1]] that lie inside a window."""
        same = self.window_of_node[1:] == self.window_of_node[:-1]
        return np.flatnonzero(same)

    def shifts_array(self, shifts) -> np.ndarray:
        d = np.atleast_1d(np.asarray(shifts, dtype=np.float64))
        if d.shape != (self.n_shifts,):
            raise TheoryError(
                f"expected {self.n_shifts} shift value(s) for {', '.join(self.shift_columns)}, got {d.tolist()}"
            )
        if not np.all(np.isfinite(d)):
            raise TheoryError(f"shift values must be finite, got {d.tolist()}")
        return d

    def at(self, shifts) -> np.ndarray:
        """J at the nodes for these shifts, shape ``(K, 12)``."""
        return np.tensordot(monomials(self.shifts_array(shifts)), self.coef, axes=(0, 0))

    @cached_property
    def _windows_grid(self):
        """Per window: first node, q2 of the first node, node spacing and last cell index."""
        first = np.flatnonzero(np.r_[True, self.window_of_node[1:] != self.window_of_node[:-1]])
        last = np.r_[first[1:], len(self.q2)] - 1
        h = (self.q2[last] - self.q2[first]) / (last - first)
        return first, self.q2[first], h, last - 1

    @cached_property
    def node_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(K, 12, P)`` tables at the nodes and their forward differences, laid out for row gathers."""
        rows = np.ascontiguousarray(self.coef.transpose(1, 2, 0))
        diff = np.zeros_like(rows)
        diff[:-1] = rows[1:] - rows[:-1]
        return rows, diff

    def locate(self, q2) -> tuple[np.ndarray, np.ndarray]:
        """Cell node index k and fraction t in [0, 1] for each q2 (which must lie in a window).

        The nodes are uniform within each window, so this is arithmetic, not a search.
        """
        q2 = np.asarray(q2, dtype=np.float64)
        first, q0, h, last_cell = self._windows_grid
        if len(first) == 1:
            w = np.zeros(q2.shape, dtype=np.intp)
        else:
            w = np.clip(np.searchsorted(q0, q2, side="right") - 1, 0, len(first) - 1)
        x = (q2 - q0[w]) / h[w]
        k = np.clip(np.floor(x).astype(np.intp) + first[w], first[w], last_cell[w])
        t = x - (k - first[w])
        return k, t

    def integral(self, shifts=None, lo: float | None = None, hi: float | None = None) -> np.ndarray:
        """Integral over q2 of the interpolated J (exact trapezoid), restricted to [lo, hi].

        With ``shifts=None`` it returns the integral of every table, shape ``(P, 12)``;
        otherwise of J at those shifts, shape ``(12,)``.
        """
        T = self.coef if shifts is None else self.at(shifts)[None]
        total = np.zeros(T.shape[:1] + T.shape[2:])
        for k in self.cells:
            a, b = self.q2[k], self.q2[k + 1]
            x0 = a if lo is None else max(a, lo)
            x1 = b if hi is None else min(b, hi)
            if x1 <= x0:
                continue
            # J is linear on the cell: integral = width * J(mid-point of the clipped part).
            tm = ((x0 + x1) / 2 - a) / (b - a)
            total += (x1 - x0) * ((1 - tm) * T[:, k] + tm * T[:, k + 1])
        return total if shifts is None else total[0]

    def rate_integral(self) -> np.ndarray:
        """The q2-integrated rate of each monomial's table, shape ``(P,)``: Gamma(d) = m(d) @ this."""
        return angular.rate(self.integral())


def cache_dir() -> Path:
    env = os.environ.get("WCSCAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wcscan"


def _grid(windows, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    q2, which = [], []
    for w, (lo, hi) in enumerate(windows):
        n = max(2, int(np.ceil((hi - lo) / spacing)) + 1)
        q2.append(np.linspace(lo, hi, n))
        which.append(np.full(n, w))
    return np.concatenate(q2), np.concatenate(which)


def _flavio_j(flavio, coeffs: Sequence[str], d: np.ndarray, q2: np.ndarray, par) -> np.ndarray:
    """Flavour-averaged LHCb-convention J at nodes q2 for real shifts d, shape (K, 12)."""
    from flavio.physics.bdecays.bvll.observables import BVllObservable

    wc = flavio.WilsonCoefficients()
    wc.set_initial({c: float(v) for c, v in zip(coeffs, d) if v != 0.0}, scale=WC_SCALE, eft="WET", basis="flavio")
    obs = BVllObservable("B0", "K*0", "mu", wc, par)
    out = np.empty((len(q2), 12))
    for k, q in enumerate(q2):  # flavio evaluates one q2 at a time: this is the theory call, not an event loop
        j, jb = obs.j(float(q)), obs.jbar(float(q))
        out[k] = [(j[key] + jb[key]) / 2 for key in angular.FLAVIO_KEYS]
    return out * angular.LHCB_SIGNS


def jtable(
    coefficients: Sequence[str] = ("C9_bsmumu",),
    windows=DEFAULT_WINDOWS,
    *,
    spacing: float = 0.025,
    cache: Path | None | bool = None,
) -> JTable:
    """Build (or load from the cache) the quadratic J tables for shifts of ``coefficients``.

    ``coefficients`` are flavio names or shift columns (``"dc9"``). ``cache``:
    a directory, ``None`` for the default (``$WCSCAN_CACHE`` or
    ``~/.cache/wcscan``), or ``False`` to skip the disk cache.
    """
    coeffs = tuple(coefficient_for(c) for c in coefficients)
    if not coeffs:
        raise TheoryError("no Wilson coefficient to scan")
    if len(set(coeffs)) != len(coeffs):
        raise TheoryError(f"coefficient listed twice in {list(coefficients)}")
    windows = validate_windows(windows)
    if not (0 < spacing <= 0.5):
        raise TheoryError(f"q2 node spacing {spacing} must be in (0, 0.5] GeV^2")

    from importlib.metadata import version

    flavio_version = version("flavio")
    ident = {
        "coefficients": coeffs,
        "windows": windows,
        "spacing": spacing,
        "flavio": flavio_version,
        "table_version": TABLE_VERSION,
        "wc_scale": WC_SCALE,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    q2, which = _grid(windows, spacing)

    path = None
    if cache is not False:
        path = (cache_dir() if cache is None else Path(cache)) / f"jtable-{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return JTable(coeffs, windows, z["q2"], z["window_of_node"], z["coef"], float(z["scale"]), key, flavio_version)

    log.info("computing J tables for %s over %s with flavio %s", coeffs, windows, flavio_version)
    import flavio

    par = flavio.default_parameters.get_central_all()
    n = len(coeffs)
    coef = quadratic_coefficients([_flavio_j(flavio, coeffs, d, q2, par) for d in stencil(n)], n)

    # The quadratic structure is exact; check it at one more point so a flavio change cannot slip by.
    d_check = np.full(n, -1.7)
    J_check = _flavio_j(flavio, coeffs, d_check, q2, par)
    J_model = np.tensordot(monomials(d_check), coef, axes=(0, 0))
    err = np.max(np.abs(J_model - J_check)) / np.max(np.abs(J_check))
    if err > 1e-9:
        raise TheoryError(f"flavio's J is not quadratic in {coeffs} (relative deviation {err:.2e}); cannot tabulate")

    table = JTable(coeffs, windows, q2, which, coef, 1.0, key, flavio_version)
    scale = float(table.rate_integral()[0])
    table = JTable(coeffs, windows, q2, which, coef / scale, scale, key, flavio_version)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, q2=q2, window_of_node=which, coef=table.coef, scale=scale)
    return table

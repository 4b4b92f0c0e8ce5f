r"""How much information about the shifts a voxel image keeps.

An image (:mod:`kernels.voxels`) bins the events in ``(cos_theta_mu, cos_theta_k, chi)``
(B bins per axis, q2 integrated over the windows) and keeps two channels per voxel v:
the count n_v and the mean q2 m_v. For a set of N events, given the counts the means are
independent (each voxel's q2 values are i.i.d. from the conditional density), so

.. math::

    I_\text{image} = I_\text{counts} + \mathrm{E}_n\Big[\sum_v I_{m_v \mid n_v}\Big]
    \;\le\; N\, I_{(v, q^2)} \;\le\; N\, I_\text{full}.

**Counts** (multinomial with fixed N): ``I_counts = N sum_v (d p_v)^2 / p_v`` with
``p_v = int_v p(x|d) dx``. At generator level every f_i factorises into a function of
cos theta_mu times one of cos theta_K times one of chi, so the voxel integrals are products
of closed-form 1D integrals, ``F_i(v) = L_i[ix] K_i[iy] X_i[iz]``, and

.. math::

    p_v(d) = \frac{9}{32\pi}\,\frac{\sum_i \bar J_i(d) F_i(v)}{\Gamma(d)},\qquad
    \bar J(d) = m(d) \cdot \textstyle\int J_p\,dq^2,

exact up to the table model; ``d p_v`` follows from the quadratic form (``dm/dd``).

**Detector level.** The acceptance eps(q2, angles) breaks the factorisation. Inside each
voxel the angles are integrated by Gauss–Legendre in theta (cos = cos theta: the sin factors
become smooth, so the rule converges spectrally) and in chi; in q2, eps is interpolated on
``n_q2`` Chebyshev nodes per window, ``eps(q2, .) = sum_r l_r(q2) eps(t_r, .)``, and the
``int q2^k l_r(q2) J_p(q2) dq2`` are exact. So a pdf polynomial in q2 of degree < n_q2 (the
toy detector's is linear) is integrated exactly in q2. Background: ``p_v = (1 - f) s_v + f b_v``.

**Mean q2** (the Gaussian approximation, argued). For any statistic T,
``I_T >= (d E[T])^2 / Var T`` (Cramér–Rao applied to T as an estimator of its own mean).
Given n_v >= 1, m_v has mean mu_v = E[q2 | v] and variance Var_v / n_v, so
``I_{m_v|n_v} >= n_v (d mu_v)^2 / Var_v`` and, averaging over the counts,

.. math::

    I_\text{mean} = N \sum_v p_v \frac{(\partial_d \mu_v)^2}{\mathrm{Var}_v}

is a *lower bound* on what the mean channel adds: ``sigma_CRB,image`` computed from it is
conservative. mu_v and Var_v are ratios of q2 moments of the same tables (exact at gen level).
:func:`voxel_q2_information` gives the upper bound ``I_(v, q2)``, reached when no voxel holds
two events; :func:`image_information_mc` checks ``I_counts`` and ``I_mean`` on simulated images.

>>> L, K, X = factor_integrals(2)
>>> [round(float(v[0].sum()), 9) for v in (L, K, X)]   # int 1 dcos_mu, int sin^2 dcos_k, int 1 dchi
[2.0, 1.333333333, 6.283185307]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import angular, likelihood, voxels
from kernels.errors import ConfigError
from kernels.likelihood import GEN, PdfModel
from kernels.theory import JTable, monomial_gradient, monomials

_SQ = lambda x: np.sqrt(np.maximum(1 - x * x, 0.0))  # noqa: E731
_COS_PRIMITIVES = {  # antiderivatives in x = cos(theta) of the cos-axis factors
    "1": lambda x: x,
    "x": lambda x: x * x / 2,
    "x2": lambda x: x**3 / 3,
    "s2": lambda x: x - x**3 / 3,  # sin^2
    "c2": lambda x: 2 * x**3 / 3 - x,  # cos 2theta
    "s": lambda x: (x * _SQ(x) + np.arcsin(x)) / 2,  # sin theta
    "s2x": lambda x: -2 / 3 * _SQ(x) ** 3,  # sin 2theta
}
_COS_FACTORS = {  # the cos-axis factors themselves, for quadrature
    "1": np.ones_like,
    "x": lambda x: x,
    "x2": lambda x: x * x,
    "s2": lambda x: 1 - x * x,
    "c2": lambda x: 2 * x * x - 1,
    "s": _SQ,
    "s2x": lambda x: 2 * x * _SQ(x),
}
_CHI_FACTORS = {
    "1": np.ones_like,
    "c": np.cos,
    "s": np.sin,
    "c2": lambda c: np.cos(2 * c),
    "s2": lambda c: np.sin(2 * c),
}
_CHI_PRIMITIVES = {
    "1": lambda c: c,
    "c": np.sin,
    "s": lambda c: -np.cos(c),
    "c2": lambda c: np.sin(2 * c) / 2,
    "s2": lambda c: -np.cos(2 * c) / 2,
}
FACTORS: dict[str, tuple[str, str, str]] = dict(
    zip(angular.TERMS, (tuple(f.split()) for f in (
        "1 s2 1, 1 x2 1, c2 s2 1, c2 x2 1, s2 s2 c2, s2x s2x c, s s2x c, x s2 1, x x2 1, s s2x s, s2x s2x s, s2 s2 s2"
    ).split(", ")))
)  # fmt: skip
"""f_i = L(cos theta_mu) K(cos theta_K) X(chi): the factor names of each term (physics.md table)."""


def _edges(axis: str, bins: int) -> np.ndarray:
    lo, hi = voxels.RANGES[axis]
    return np.linspace(lo, hi, bins + 1)


def factor_integrals(bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form bin integrals of the factors: ``L, K, X`` of shape (12, B), ``F_i(v) = L_i K_i X_i``."""
    bins = voxels.check_bins(bins)
    out = []
    for axis, col, prims in (
        (voxels.AXES[0], 0, _COS_PRIMITIVES),
        (voxels.AXES[1], 1, _COS_PRIMITIVES),
        (voxels.AXES[2], 2, _CHI_PRIMITIVES),
    ):
        e = _edges(axis, bins)
        out.append(np.stack([np.diff(prims[FACTORS[t][col]](e)) for t in angular.TERMS]))
    return tuple(out)


def _lagrange(q, lo: float, hi: float, n: int) -> np.ndarray:
    """``l_r(q)`` (shape ``q.shape + (n,)``), the Lagrange basis on n Chebyshev nodes of [lo, hi]."""
    y = (2 * np.asarray(q) - lo - hi) / (hi - lo)
    cheb = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    V = np.polynomial.chebyshev.chebvander
    return V(y, n - 1) @ np.linalg.inv(V(cheb, n - 1))


def _q2_rule(table: JTable, n_q2: int, q2_factor=None):
    """Chebyshev nodes t (Q,) per window, ``Lam[k, r, p, i] = int q2^k l_r J_p,i`` and ``lam[k, r] = int q2^k l_r``.

    Exact: per table cell J is linear, and Gauss–Legendre with n_q2 // 2 + 2 nodes
    integrates the degree n_q2 + 2 polynomial exactly. ``q2_factor`` (the signal's fast q2 factor,
    :attr:`kernels.likelihood.PdfModel.q2_factor`) weights ``Lam`` alone, on the table cells' own nodes
    (the background has no such factor).
    """
    cells = table.cells
    a, b = table.q2[cells], table.q2[cells + 1]
    x, w = np.polynomial.legendre.leggauss(n_q2 // 2 + 2)
    q = (a + b)[:, None] / 2 + (b - a)[:, None] / 2 * x
    wq = (b - a)[:, None] / 2 * w
    t = (q - a[:, None]) / (b - a)[:, None]
    J = (1 - t)[None, :, :, None] * table.coef[:, cells, None] + t[None, :, :, None] * table.coef[:, cells + 1, None]
    win = table.window_of_node[cells]
    nodes, ell = [], np.zeros(q.shape + (len(table.windows) * n_q2,))
    for j, (lo, hi) in enumerate(table.windows):  # a loop over q2 windows (one or two)
        nodes.append((lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (np.arange(n_q2) + 0.5) / n_q2))
        ell[win == j, :, j * n_q2 : (j + 1) * n_q2] = _lagrange(q[win == j], lo, hi, n_q2)
    wk = np.stack([wq * q**k for k in range(3)])  # (3, C, m)
    ws = wk if q2_factor is None else wk * q2_factor(q)[None]
    Lam = np.einsum("kcj,cjr,pcji->krpi", ws, ell, J)
    lam = np.einsum("kcj,cjr->kr", wk, ell)
    return np.concatenate(nodes), Lam, lam


def _check_q2_resolution(fn, what: str, windows, t: np.ndarray, n_q2: int, tol: float = 1e-6) -> None:
    """Refuse a weight whose q2 dependence n_q2 Chebyshev nodes do not resolve (tested at a few angles)."""
    rng = np.random.default_rng(0)
    ang = (rng.uniform(-1, 1, 16), rng.uniform(-1, 1, 16), rng.uniform(0, 2 * np.pi, 16))
    for j, (lo, hi) in enumerate(windows):
        q = np.linspace(lo, hi, 101)
        exact = np.broadcast_to(fn(q[:, None], *ang), (q.size, 16))
        approx = _lagrange(q, lo, hi, n_q2) @ np.broadcast_to(fn(t[j * n_q2 : (j + 1) * n_q2, None], *ang), (n_q2, 16))
        err = np.abs(approx - exact).max() / max(np.abs(exact).max(), 1e-300)
        if err > tol:
            raise ConfigError(
                f"the {what} varies too fast in q2 for n_q2={n_q2} nodes (relative error {err:.1e}); raise n_q2"
            )


def _angle_rule(axis: str, bins: int, n_sub: int):
    """Per-bin Gauss–Legendre values and weights (B, n): in theta for the cosines, in chi itself."""
    x, w = np.polynomial.legendre.leggauss(n_sub)
    e = _edges(axis, bins)
    if axis == "chi":
        lo, hi = e[:-1, None], e[1:, None]
        return (lo + hi) / 2 + (hi - lo) / 2 * x, (hi - lo) / 2 * w + 0 * lo
    th = np.arccos(np.clip(e, -1, 1))  # decreasing
    lo, hi = th[1:, None], th[:-1, None]
    theta = (lo + hi) / 2 + (hi - lo) / 2 * x
    return np.cos(theta), (hi - lo) / 2 * w * np.sin(theta)


def _contract(vals, u, v, x):
    """``out[r, i, a, b, c] = sum_jlm vals[r, a, j, b, l, c, m] u[i, a, j] v[i, b, l] x[i, c, m]``: per-voxel sums."""
    Q, k, n, B = vals.shape[:4]
    t = np.matmul(vals.reshape(-1, B, n).transpose(1, 0, 2), x.transpose(1, 2, 0))  # (c, r a j b l, i), in BLAS
    t = np.einsum("crajbli,ibl->riajbc", t.reshape(B, Q, k, n, B, n, -1), v)
    return np.einsum("riajbc,iaj->riabc", t, u)


def _on_grid(fn, q2, cl, ck, chi):
    """``fn`` on the broadcast grid of its arguments: called with the compact broadcastable arrays
    (cheap for products of per-axis factors), and with full arrays if its result does not broadcast."""
    shape = np.broadcast_shapes(q2.shape, cl.shape, ck.shape, chi.shape)
    try:
        return np.broadcast_to(np.asarray(fn(q2, cl, ck, chi), dtype=np.float64), shape)
    except ValueError:
        return np.asarray(fn(*np.broadcast_arrays(q2, cl, ck, chi)), dtype=np.float64)


def _quadrature(table, bins, model: PdfModel, n_sub: int, n_q2: int, signal: bool):
    """Voxel integrals by quadrature: S (3, P, B, B, B) of q2^k eps a_p (if ``signal``), b (3, B, B, B) of q2^k B.

    The weight (eps or B) is evaluated on the q2 nodes x the tensor grid of angle nodes;
    the f_i, being products, are applied one axis at a time (:func:`_contract`).
    """
    t, Lam, lam = _q2_rule(table, n_q2, model.q2_factor if signal else None)
    Q, P = t.size, Lam.shape[2]
    eff = model.efficiency
    if signal and model.q2_factor is not None:  # interpolate the smooth rest; the factor is in Lam's weights
        eff = lambda q2, *ang: model.efficiency(q2, *ang) / model.q2_factor(q2)  # noqa: E731
    if signal:
        _check_q2_resolution(eff, "efficiency", table.windows, t, n_q2)
    if model.has_background:
        _check_q2_resolution(model.background, "background", table.windows, t, n_q2)
    (cl, wl), (ck, wk), (ch, wc) = (_angle_rule(ax, bins, n_sub) for ax in voxels.AXES)
    U, V, X = (
        np.stack([fn[FACTORS[term][col]](val) for term in angular.TERMS]) * w
        for col, fn, val, w in ((0, _COS_FACTORS, cl, wl), (1, _COS_FACTORS, ck, wk), (2, _CHI_FACTORS, ch, wc))
    )
    g = max(1, min(bins, (1 << 22) // (Q * 12 * n_sub * n_sub * bins * bins)))  # cos_mu bins per chunk
    S = np.zeros((3, P, bins, bins, bins)) if signal else None
    b = np.zeros((3, bins, bins, bins)) if model.has_background else None
    for s in range(0, bins, g):  # a loop over slabs of cos_theta_mu bins, vectorised over their voxels
        k = min(g, bins - s)
        shape = (Q, k, n_sub, bins, n_sub, bins, n_sub)
        grid = (
            t[:, None, None, None],
            cl[s : s + k].reshape(1, -1, 1, 1),
            ck.reshape(1, 1, -1, 1),
            ch.reshape(1, 1, 1, -1),
        )
        if signal:
            E = _on_grid(eff, *grid).reshape(shape)
            Ev = _contract(E, U[:, s : s + k], V, X)  # (Q, 12, k, B, B)
            S[:, :, s : s + k] = angular.PREFACTOR * np.tensordot(Lam, Ev, axes=([1, 3], [0, 1]))
        if b is not None:
            Bq = _on_grid(model.background, *grid).reshape(shape)
            Bv = _contract(Bq, wl[None, s : s + k], wk[None], wc[None])[:, 0]  # (Q, k, B, B)
            b[:, s : s + k] = np.tensordot(lam, Bv, axes=(1, 0))
    return S, b


@dataclass(frozen=True, eq=False)
class VoxelModel:
    """The q2 moments of every voxel as quadratic forms in the shifts.

    ``S[k, p, ix, iy, iz] = int_v int q2^k eps(x) a_p(x)`` (``G(x; d) = m(d) . a(x)``) and, with
    background, ``b[k, ...] = int_v int q2^k B(x)``. Built by :func:`voxel_model`.
    """

    table: JTable
    bins: int
    model: PdfModel
    S: np.ndarray
    b: np.ndarray | None

    def moments(self, shifts) -> tuple[np.ndarray, np.ndarray]:
        """``r[k, v] = E[q2^k 1_v]`` (r[0] = p_v) and its gradient ``dr[a, k, v]``, voxels flattened."""
        d = self.table.shifts_array(shifts)
        S = self.S.reshape(3, self.S.shape[1], -1)
        Sd = np.tensordot(monomials(d), S, axes=(0, 1))  # (3, V)
        dSd = np.tensordot(monomial_gradient(d), S, axes=(1, 1))  # (n, 3, V)
        gam, dgam = Sd[0].sum(), dSd[:, 0].sum(axis=-1)
        if gam <= 0:
            raise ConfigError(f"the rate is not positive at shifts {d.tolist()}")
        f = self.model.bkg_fraction if self.b is not None else 0.0
        r = (1 - f) * Sd / gam + (f * self.b.reshape(3, -1) if self.b is not None else 0.0)
        dr = (1 - f) * (dSd / gam - Sd[None] * dgam[:, None, None] / gam**2)
        return r, dr

    def probabilities(self, shifts) -> np.ndarray:
        """``p_v``, shape (B, B, B) on the image axes; sums to 1."""
        return self.moments(shifts)[0][0].reshape((self.bins,) * 3)

    def gradient(self, shifts) -> np.ndarray:
        """``d p_v / d d_a``, shape (n, B, B, B)."""
        return self.moments(shifts)[1][:, 0].reshape((-1,) + (self.bins,) * 3)

    def q2_mean_variance(self, shifts) -> tuple[np.ndarray, np.ndarray]:
        """``mu_v = E[q2 | v]`` and ``Var_v = Var[q2 | v]``, each (B, B, B) (NaN where p_v = 0)."""
        r = self.moments(shifts)[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = r[1] / r[0]
            var = r[2] / r[0] - mu * mu
        return mu.reshape((self.bins,) * 3), var.reshape((self.bins,) * 3)

    def counts_information(self, shifts) -> np.ndarray:
        """Per-event Fisher information of the voxel counts, ``sum_v dp_a dp_b / p_v``, shape (n, n)."""
        r, dr = self.moments(shifts)
        inv = np.where(r[0] > 0, 1 / np.where(r[0] > 0, r[0], 1), 0.0)
        return np.einsum("av,bv,v->ab", dr[:, 0], dr[:, 0], inv)

    def mean_q2_information(self, shifts) -> np.ndarray:
        """Per-event information the mean-q2 channel adds (Gaussian lower bound), ``sum_v p_v dmu_a dmu_b / Var_v``."""
        r, dr = self.moments(shifts)
        ok = r[0] > 0
        p = np.where(ok, r[0], 1.0)
        mu = r[1] / p
        var = r[2] / p - mu * mu
        ok &= var > 1e-12 * np.abs(r[2] / p)
        dmu = (dr[:, 1] - mu * dr[:, 0]) / p  # (n, V)
        w = np.where(ok, p / np.where(ok, var, 1.0), 0.0)
        return np.einsum("av,bv,v->ab", dmu, dmu, w)


def voxel_model(
    table: JTable, bins: int, model: PdfModel = GEN, *, n_sub: int | None = None, n_q2: int = 8
) -> VoxelModel:
    """The voxel moments for ``table`` on a B^3 image under ``model`` (default: generator level, exact).

    With an efficiency the signal is integrated by quadrature (``n_sub`` Gauss–Legendre nodes
    per bin and axis, by default ``max(3, ceil(64 / B))``: relative errors below 1e-7 for the
    toy detector; ``n_q2`` Chebyshev nodes per q2 window); the background likewise.
    """
    bins = voxels.check_bins(bins)
    n_sub = min(32, max(3, -(-64 // bins))) if n_sub is None else n_sub
    if not (1 <= n_sub <= 32 and 2 <= n_q2 <= 64):
        raise ConfigError(f"quadrature orders must be n_sub in [1, 32] and n_q2 in [2, 64], got {n_sub}, {n_q2}")
    if model.has_background and not 0 < model.bkg_fraction < 1:
        raise ConfigError(f"bkg_fraction must be in [0, 1), got {model.bkg_fraction}")
    exact = model.efficiency is None
    S, b = (None, None)
    if not exact or model.has_background:
        S, b = _quadrature(table, bins, model, n_sub, n_q2, signal=not exact)
    if exact:
        _, Lam, _ = _q2_rule(table, 2)
        L, K, X = factor_integrals(bins)
        S = angular.PREFACTOR * np.einsum("kpi,ia,ib,ic->kpabc", Lam.sum(axis=1), L, K, X, optimize=True)
    return VoxelModel(table, bins, model, S, b)


def voxel_probabilities(table: JTable, shifts, bins: int, model: PdfModel = GEN) -> np.ndarray:
    """``p_v(d)``, shape (B, B, B), axes as the image's (cos_theta_mu, cos_theta_k, chi)."""
    return voxel_model(table, bins, model).probabilities(shifts)


def counts_information(table: JTable, shifts, bins: int, model: PdfModel = GEN) -> np.ndarray:
    """Per-event Fisher information of the voxel counts (multinomial, fixed N), shape (n, n)."""
    return voxel_model(table, bins, model).counts_information(shifts)


def full_information(table: JTable, shifts, model: PdfModel = GEN) -> np.ndarray:
    """Per-event Fisher information of the unbinned 4D events (:func:`kernels.likelihood.fisher_information`)."""
    return likelihood.fisher_information(table, shifts, model)


def _sigma(I: np.ndarray) -> np.ndarray:
    return np.sqrt(np.diag(np.linalg.inv(I)))


def image_information(table: JTable, shifts, bins: int, model: PdfModel = GEN, mean_q2: bool = True) -> dict:
    """Per-event information matrices ``counts``, ``mean_q2`` (zeros unless asked), ``image`` (their sum),
    ``full`` (unbinned), and ``ratio_counts``, ``ratio_image``: sigma_CRB,image / sigma_CRB per shift (>= 1)."""
    vm = voxel_model(table, bins, model)
    Ic = vm.counts_information(shifts)
    Im = vm.mean_q2_information(shifts) if mean_q2 else np.zeros_like(Ic)
    If = full_information(table, shifts, model)
    return {
        "counts": Ic,
        "mean_q2": Im,
        "image": Ic + Im,
        "full": If,
        "ratio_counts": _sigma(Ic) / _sigma(If),
        "ratio_image": _sigma(Ic + Im) / _sigma(If),
    }


def sigma_crb_image(table: JTable, shifts, bins: int, n_events: int, model: PdfModel = GEN, mean_q2: bool = True):
    """Cramér–Rao bound of the image for sets of ``n_events``: ``sqrt(diag(I_image^-1) / N)``.

    With ``mean_q2`` the mean-q2 channel's Gaussian lower bound is included (so this is an
    upper bound on the true image bound). A float for one coefficient, else an array.

    A toy table in which the shift d moves the forward-backward asymmetry, J_6s = 0.3 d:

    >>> coef = np.zeros((3, 2, 12)); coef[0, :, :2] = 1.0; coef[1, :, angular.TERMS.index("6s")] = 0.3
    >>> toy = JTable(("C9_bsmumu",), ((1.1, 6.0),), np.array([1.1, 6.0]), np.zeros(2, int), coef, 1.0, "toy", "")
    >>> s_img, s_crb = sigma_crb_image(toy, [0.0], 8, 1000), likelihood.sigma_crb(toy, [0.0], 1000)
    >>> round(s_crb, 4), round(s_img / s_crb, 4)       # the binning loses a little
    (0.25, 1.0144)
    """
    if n_events <= 0:
        raise ConfigError(f"number of events must be positive, got {n_events}")
    vm = voxel_model(table, bins, model)
    I = vm.counts_information(shifts) + (vm.mean_q2_information(shifts) if mean_q2 else 0.0)
    s = _sigma(I) / np.sqrt(n_events)
    return float(s[0]) if s.size == 1 else s


def voxel_q2_information(table: JTable, shifts, bins: int, n_gauss: int = 3) -> np.ndarray:
    """Per-event information of (voxel, q2) at generator level, shape (n, n): ``sum_v int (dp)^2 / p dq2``.

    The most any per-voxel q2 summary can keep (the image reaches it when no voxel holds two
    events). q2 by Gauss–Legendre, ``n_gauss`` nodes per table cell.
    """
    bins = voxels.check_bins(bins)
    d = table.shifts_array(shifts)
    m, dm = monomials(d), monomial_gradient(d)
    norm = table.rate_integral()
    gam, dgam = norm @ m, dm @ norm
    L, K, X = factor_integrals(bins)
    F = np.einsum("ia,ib,ic->iabc", L, K, X).reshape(12, -1)
    cells = table.cells
    a, b = table.q2[cells], table.q2[cells + 1]
    x, w = np.polynomial.legendre.leggauss(n_gauss)
    t, wq = np.tile((1 + x) / 2, cells.size), ((b - a)[:, None] / 2 * w).ravel()
    kk = np.repeat(cells, n_gauss)
    Jq = (1 - t)[None, :, None] * table.coef[:, kk] + t[None, :, None] * table.coef[:, kk + 1]  # (P, Q, 12)
    Jm = angular.PREFACTOR * np.tensordot(m, Jq, axes=(0, 0))
    dJ = angular.PREFACTOR * np.tensordot(dm, Jq, axes=(1, 0))  # (n, Q, 12)
    out = np.zeros((d.size, d.size))
    step = max(1, (1 << 21) // F.shape[1])
    for s in range(0, t.size, step):  # a loop over blocks of q2 nodes, vectorised over voxels
        g = Jm[s : s + step] @ F
        dp = (dJ[:, s : s + step] @ F) / gam - g[None] * (dgam / gam**2)[:, None, None]
        out += np.einsum("aqv,bqv,q->ab", dp, dp / np.where(g > 0, g / gam, np.inf)[None], wq[s : s + step])
    return out


def _mc_estimates(sums, T, h):
    """The estimators of :func:`image_information_mc` from voxel sums (R, 3, 2n + 1, V) of R replicas.

    ``sums[:, j]`` holds C, sum q2 and sum q2^2; samples 2a and 2a + 1 are at d +- h e_a, the last at d.
    """
    C, Sq, S2 = sums[:, 0], sums[:, 1], sums[:, 2]
    n = (C.shape[1] - 1) // 2
    with np.errstate(invalid="ignore", divide="ignore"):
        p = C / T[:, None, None]
        mu = Sq / C
        var = (S2[:, -1] - Sq[:, -1] * mu[:, -1]) / (C[:, -1] - 1)  # Var_v at d, (R, V)
        ok = (C > 1).all(axis=1) & (var > 0)
        wc = np.where(ok, 1 / p[:, -1], 0.0)
        wm = np.where(ok, p[:, -1] / var, 0.0)
        D = (p[:, 0:-1:2] - p[:, 1:-1:2]) / (2 * h)  # (R, n, V)
        varD = (p[:, 0:-1:2] * (1 - p[:, 0:-1:2]) + p[:, 1:-1:2] * (1 - p[:, 1:-1:2])) / T[:, None, None] / (4 * h * h)
        Dm = np.where(ok[:, None], (mu[:, 0:-1:2] - mu[:, 1:-1:2]) / (2 * h), 0.0)
        varDm = np.where(ok[:, None], var[:, None] * (1 / C[:, 0:-1:2] + 1 / C[:, 1:-1:2]) / (4 * h * h), 0.0)
    eye = np.eye(n)
    Ic = np.einsum("rav,rbv,rv->rab", D, D, wc) - np.einsum("rav,rv->ra", varD, wc)[:, :, None] * eye
    Im = np.einsum("rav,rbv,rv->rab", Dm, Dm, wm) - np.einsum("rav,rv->ra", varDm, wm)[:, :, None] * eye
    return Ic, Im


def image_information_mc(table: JTable, shifts, bins: int, n_events: int, n_images: int, *,
                         h: float = 0.5, seed=0, n_batches: int = 16, sample=None) -> dict:  # fmt: skip
    """Monte Carlo estimate of the per-event information of the counts and of the mean-q2 channel.

    ``n_images`` images of ``n_events`` are simulated at d and, for each shift a, at
    ``d +- h e_a`` (``sample(table, shifts, n, seed)``, default :func:`kernels.sampler.sample_array`;
    seeds ``(seed, sample, batch)``). Summed over the images, their channels give per voxel the
    count C = sum n_v and the q2 sum sum n_v m_v, hence p_v = C / T and mu_v; Var_v is the
    within-voxel variance of q2 in the sample at d. With ``D = (p+ - p-) / 2h`` and
    ``Delta = (mu+ - mu-) / 2h``, the squares are corrected by their noise,
    ``Var D = (p+(1 - p+) + p-(1 - p-)) / T / 4h^2`` and ``Var Delta = Var_v (1/C+ + 1/C-) / 4h^2``
    (exact given the counts), so that

        I_counts ~ sum_v (D^2 - Var D) / p_v,    I_mean ~ sum_v p_v (Delta^2 - Var Delta) / Var_v

    (p_v and Var_v from the sample at d) are unbiased up to the O(h^2) of the central difference;
    voxels with fewer than two events in a sample are left out. The errors are the jackknife
    over ``n_batches`` batches of images. Returns ``counts``, ``mean_q2`` (n, n) and
    ``counts_err``, ``mean_q2_err``.
    """
    from kernels import sampler

    bins = voxels.check_bins(bins)
    d = table.shifts_array(shifts)
    if n_batches < 2 or n_images % n_batches or n_events <= 0 or h <= 0:
        raise ConfigError(
            f"need n_images a multiple of n_batches >= 2, n_events > 0 and h > 0; got {n_images}, {n_batches}, {n_events}, {h}"
        )
    sample = sample or sampler.sample_array
    per = n_images // n_batches
    T = per * n_events
    seed = tuple(int(s) for s in np.atleast_1d(seed))
    points = [d + sg * h * e for e in np.eye(d.size) for sg in (1, -1)] + [d]
    acc = np.zeros((n_batches, 3, len(points), bins**3))  # C, sum q2, sum q2^2 per batch and sample
    for j, point in enumerate(points):  # loops over samples and batches: each draws per * n_events events at once
        for bt in range(n_batches):
            ev = sample(table, point, T, (*seed, j, bt))
            img = voxels.make_images(ev, bins, n_events, per, fill=0.0).reshape(per, 2, -1).astype(np.float64)
            cl, ck, chi, q2 = voxels.event_arrays(ev)
            sq2 = voxels.voxelize(cl[:T], ck[:T], chi[:T], np.asarray(q2[:T], np.float64) ** 2, bins, fill=0.0)[0]
            occ = img[:, voxels.OCCUPANCY]
            n_v = occ.sum(0)
            acc[bt, :, j] = n_v, (occ * img[:, voxels.Q2_MEAN]).sum(0), sq2[voxels.Q2_MEAN].ravel() * n_v
    total = acc.sum(0)
    sums = np.concatenate([total[None], total[None] - acc])  # the full sample, then leave one batch out
    Ts = np.r_[n_batches * T, np.full(n_batches, (n_batches - 1) * T)].astype(np.float64)
    Ic, Im = _mc_estimates(sums, Ts, h)
    jack = lambda x: np.sqrt((n_batches - 1) / n_batches * ((x[1:] - x[1:].mean(0)) ** 2).sum(0))  # noqa: E731
    return {"counts": Ic[0], "counts_err": jack(Ic), "mean_q2": Im[0], "mean_q2_err": jack(Im)}

r"""Power corrections as nuisances: theory tables built from flavio's helicity amplitudes.

flavio's B0 -> K*0 mu mu helicity amplitudes ``h`` are affine in the Wilson-coefficient shifts ``c``
and in its power-correction parameters ``d`` (they shift C7, C7' and C9 per helicity,
``kernels.nuisances.power_corrections``), and affine in the BSZ form factors ``theta``; their
products ``d theta`` appear too. So ``h`` is **bilinear** in ``w = (1, c, v)`` and ``a = (1, u)``,

.. math:: h(q^2; c, u, v) = \sum_{ij} w_i\, a_j\, H_{ij}(q^2),

with ``u`` and ``v`` the whitened form factors and power corrections (``theta = mu + L u``,
``d = sigma v``). Each J is a real quadratic form in the amplitudes' real and imaginary parts at
each q2, ``J_t = r^T M_t r`` (flavio's ``angularcoeffs_general_v``), averaged over ``h`` and its CP
conjugate. :func:`amplitude_table` tabulates ``H`` from ``(1 + n_c + n_v)(1 + n_u)`` flavio
amplitude evaluations (280 for delta C9, 12 power corrections and 19 form factors: fewer than the
630 of the bi-quadratic J tables of :mod:`kernels.nuisances`, whose form in ``(c, v) x u`` would
need 22,050), and ``M`` from flavio's angular function on unit amplitudes; it checks J against a
direct flavio call at a random ``(c, u, v)`` to 1e-9 and caches the tables on disk.

:class:`AmplitudeTable` has the interface the bounds read from a
:class:`~kernels.nuisances.NuisanceTable`: ``at(u)`` (an ordinary quadratic
:class:`~kernels.theory.JTable` in c, in the world ``u``) and ``local(c, u)`` (J and its exact first
and second derivatives in the whole vector). Its nuisance vector is ``(u, v)``: form factors first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import angular
from kernels.errors import ConfigError, TheoryError
from kernels.files import atomic_path
from kernels.nuisances import NuisanceTable, Prior, flavio_prior, form_factor_names, map_evaluations
from kernels.theory import (
    DEFAULT_WINDOWS,
    TABLE_VERSION,
    WC_SCALE,
    JTable,
    _flavio_j,
    _grid,
    cache_dir,
    coefficient_for,
    quadratic_coefficients,
    stencil,
    validate_windows,
)

log = logging.getLogger(__name__)

AMPLITUDE_KEYS: tuple = (("0", "V"), ("0", "A"), ("pl", "V"), ("mi", "V"), ("pl", "A"), ("mi", "A"), "P", "S",
                         ("0", "T"), ("0", "Tt"), ("pl", "T"), ("mi", "T"), ("pl", "Tt"), ("mi", "Tt"))
"""flavio's B -> V l l helicity amplitudes, in the order of the tables' last axis."""

AMPLITUDE_TABLE_VERSION = 1

LOW_Q2_CORRECTIONS = tuple(
    f"B0->K*0 delta_C7{p} {ab}_{h} {ri}" for h, p in (("0", ""), ("+", "p"), ("-", "")) for ab in ("a", "b") for ri in ("Re", "Im")
)
"""flavio's power corrections below the charmonium resonances (q2 <= 9 GeV^2): shifts of C7 (helicities 0 and -)
and C7' (+), each ``a + b q2 / mB^2``. Of the other B0 -> K*0 parameters, the K* decay constants and the
Gegenbauer moments leave J unchanged there (to machine precision)."""

HIGH_Q2_CORRECTIONS = tuple(f"B0->K*0 deltaC9 c_{h} {ri}" for h in ("0", "+", "-") for ri in ("Re", "Im"))
"""flavio's power corrections above the charmonium resonances (q2 > 14 GeV^2): constant shifts of C9 per helicity."""


def power_corrections(windows, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The power corrections that act in ``windows`` (default: all of them), or ``names`` checked against them.

    >>> len(power_corrections([(1.1, 6.0)])), len(power_corrections([(1.1, 6.0), (15.0, 19.0)]))
    (12, 18)
    """
    acts = (LOW_Q2_CORRECTIONS if any(lo < 9.0 for lo, _ in windows) else ()) + (
        HIGH_Q2_CORRECTIONS if any(hi > 14.0 for _, hi in windows) else ())
    if names is None:
        return acts
    names = tuple(names)
    for n in names:
        if n not in LOW_Q2_CORRECTIONS + HIGH_Q2_CORRECTIONS:
            raise ConfigError(f"unknown power correction {n!r}; expected flavio's 'B0->K*0 delta_C7...' or 'deltaC9 c_...'")
    if len(set(names)) != len(names):
        raise ConfigError(f"power correction listed twice in {list(names)}")
    return names


def combined_prior(form_factors: Sequence[str] | None, corrections: Sequence[str]) -> Prior:
    """flavio's prior on the form factors (correlated) and the power corrections (each its own B0 marginal),
    block-diagonal: so the whitened vector is ``(u, v)``, ``theta = mu + L u`` and ``d = sigma v``."""
    ff = flavio_prior(form_factors)
    blocks = [ff] + [flavio_prior((name,)) for name in corrections]
    n = sum(len(b.names) for b in blocks)
    cov, k = np.zeros((n, n)), 0
    for b in blocks:
        m = len(b.names)
        cov[k : k + m, k : k + m] = b.cov
        k += m
    return Prior(tuple(p for b in blocks for p in b.names), np.concatenate([b.mean for b in blocks]), cov)


def _evaluate_amplitudes(args) -> np.ndarray:
    """flavio's helicity amplitudes and their CP conjugates at the nodes, ``(2, K, 2 n_keys)`` real."""
    import flavio
    from flavio.physics.bdecays.bvll.observables import BVllObservable

    coeffs, c, q2, par = args
    wc = flavio.WilsonCoefficients()
    wc.set_initial({k: float(v) for k, v in zip(coeffs, c) if v != 0.0}, scale=WC_SCALE, eft="WET", basis="flavio")
    obs = BVllObservable("B0", "K*0", "mu", wc, par)
    n = len(AMPLITUDE_KEYS)
    out = np.zeros((2, len(q2), 2 * n))
    for k, q in enumerate(q2):  # flavio evaluates one q2 at a time: the theory call, not an event loop
        for s, h in enumerate((obs.ha(float(q)), obs.ha_bar(float(q)))):
            extra = set(h) - set(AMPLITUDE_KEYS)
            if extra:
                raise TheoryError(f"flavio returned helicity amplitudes {sorted(map(str, extra))} this table does not know")
            v = np.array([complex(h.get(key, 0.0)) for key in AMPLITUDE_KEYS])
            out[s, k, :n], out[s, k, n:] = v.real, v.imag
    return out


def _angular_forms(q2: np.ndarray, active: np.ndarray) -> np.ndarray:
    """``M (K, 12, R, R)``: each LHCb-signed J at each node as a quadratic form in the ``active`` real
    amplitude components (polarisation of flavio's ``angularcoeffs_general_v``, which is homogeneous
    quadratic in the amplitudes)."""
    import flavio
    from flavio.physics.bdecays.angular import angularcoeffs_general_v
    from flavio.physics.bdecays.bvll.observables import BVllObservable

    obs = BVllObservable("B0", "K*0", "mu", flavio.WilsonCoefficients(), flavio.default_parameters.get_central_all())
    n, R = len(AMPLITUDE_KEYS), len(active)

    def j_of(vec, q):
        h = {key: 0j for key in AMPLITUDE_KEYS}
        for a, x in zip(active, vec):
            if x:
                h[AMPLITUDE_KEYS[a % n]] += x * (1j if a >= n else 1.0)
        j = angularcoeffs_general_v(h, float(q), obs.mB, obs.mV, obs.mb, 0, obs.ml, obs.ml)
        return np.array([float(np.real(j[key])) for key in angular.FLAVIO_KEYS]) * angular.LHCB_SIGNS

    eye = np.eye(R)
    M = np.empty((len(q2), 12, R, R))
    for k, q in enumerate(q2):  # the angular function at unit amplitudes: R (R + 1) / 2 calls per node
        diag = [j_of(eye[a], q) for a in range(R)]
        for a in range(R):
            M[k, :, a, a] = diag[a]
            for b in range(a + 1, R):
                M[k, :, a, b] = M[k, :, b, a] = (j_of(eye[a] + eye[b], q) - diag[a] - diag[b]) / 2
    return M


@dataclass(frozen=True, eq=False)
class AmplitudeTable:
    """Bilinear amplitude tables ``H[s, i, j, k, r]`` (s: the amplitude and its CP conjugate; i: ``w = (1, c,
    v)``; j: ``a = (1, u)``; k: q2 node; r: the active real amplitude components) and the angular forms
    ``M[k, t, r, r']``. J is in units of ``scale`` (the SM rate over the windows), as in every table."""

    coefficients: tuple[str, ...]
    prior: Prior  # over the nuisance vector (u, v): form factors, then power corrections
    n_form_factors: int
    windows: tuple[tuple[float, float], ...]
    q2: np.ndarray
    window_of_node: np.ndarray
    H: np.ndarray
    M: np.ndarray
    scale: float
    key: str
    flavio_version: str

    space = NuisanceTable.space
    n_shifts = NuisanceTable.n_shifts
    n_nuisances = NuisanceTable.n_nuisances
    shift_columns = NuisanceTable.shift_columns
    nuisance_array = NuisanceTable.nuisance_array
    _jtable = NuisanceTable._jtable

    def _wa(self, c, u) -> tuple[np.ndarray, np.ndarray]:
        c = np.atleast_1d(np.asarray(c, dtype=np.float64))
        if c.shape != (self.n_shifts,):
            raise TheoryError(f"expected {self.n_shifts} shift(s), got shape {c.shape}")
        u = self.nuisance_array(u)
        nf = self.n_form_factors
        return np.concatenate([[1.0], c, u[nf:]]), np.concatenate([[1.0], u[:nf]])

    def j(self, c, u) -> np.ndarray:
        """J ``(K, 12)`` at shifts ``c`` in the world ``u`` (whitened ``(u, v)``)."""
        w, a = self._wa(c, u)
        r = np.einsum("i,j,sijkr->skr", w, a, self.H)
        return np.einsum("skr,ktrq,skq->kt", r, self.M, r) / (2 * self.scale)

    def at(self, u) -> JTable:
        """The fixed-theory table (quadratic in c) of the world ``u``."""
        u = self.nuisance_array(u)
        coef = quadratic_coefficients([self.j(c, u) for c in stencil(self.n_shifts)], self.n_shifts)
        return self._jtable(coef, f"{self.key}-u{hashlib.sha256(u.tobytes()).hexdigest()[:12]}")

    def linear_table(self) -> JTable:
        """J and its exact gradient in the nuisances at the prior's centre, as quadratics in c: the JTable of
        ``P_c (1 + n)`` tables ``m(c) (x) (1, u_1 .. u_n)`` (:func:`kernels.joint_nuisance.nuisance_linear_table`)."""
        zero, nc = np.zeros(self.n_nuisances), self.n_shifts
        vals = []
        for c in stencil(nc):
            J, dJ = self.node_values(c, zero)
            vals.append(np.concatenate([J[None], dJ[nc:]]))
        coef = quadratic_coefficients(vals, nc)  # (P_c, 1 + n, K, 12)
        return self._jtable(np.ascontiguousarray(coef.reshape(-1, *coef.shape[2:])), f"{self.key}-linear")

    def _parts(self, c, u):
        """The amplitudes ``r (2, K, R)``, their derivatives ``D (n, 2, K, R)`` in the vector's order (c, u, v),
        ``M r (2, K, 12, R)``, and where (c, v) sit in the vector. The last point's are kept: a Newton step
        asks for the values and the Hessians at the same point."""
        key = (np.asarray(c, dtype=np.float64).tobytes(), np.asarray(u, dtype=np.float64).tobytes())
        cached = self.__dict__.get("_last")
        if cached is not None and cached[0] == key:
            return cached[1]
        w, a = self._wa(c, u)
        nc = self.n_shifts
        Hw = np.tensordot(w, self.H, axes=(0, 1))  # (s, j, k, r)
        r = np.tensordot(a, Hw, axes=(0, 1))  # (s, k, r)
        dw = np.tensordot(a, self.H, axes=(0, 2)).transpose(1, 0, 2, 3)[1:]  # d r / d (c, v): (i, s, k, r)
        da = Hw.transpose(1, 0, 2, 3)[1:]  # d r / d u
        D = np.ascontiguousarray(np.concatenate([dw[:nc], da, dw[nc:]]))
        Mr = np.matmul(self.M[None], r[:, :, None, :, None])[..., 0]  # (s, k, t, r)
        x_side = np.r_[np.arange(nc), nc + self.n_form_factors + np.arange(D.shape[0] - nc - self.n_form_factors)]
        parts = (r, D, Mr, x_side)
        object.__setattr__(self, "_last", (key, parts))
        return parts

    def node_values(self, c, u) -> tuple[np.ndarray, np.ndarray]:
        """J ``(K, 12)`` and its gradient ``(n, K, 12)`` in ``(c, u, v)``, exact."""
        r, D, Mr, _ = self._parts(c, u)
        n, S, K, R = D.shape
        J = np.einsum("skr,sktr->kt", r, Mr)
        # per node: (n, s r) @ (s r, 12)
        grad = np.matmul(D.transpose(2, 0, 1, 3).reshape(K, n, S * R), Mr.transpose(1, 0, 3, 2).reshape(K, S * R, 12))
        return J / (2 * self.scale), grad.transpose(1, 0, 2) / self.scale

    def contracted_hessians(self, c, u, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``sum_kt W_kt d2 J_kt`` ``(n, n)`` for each ``W (K, 12)`` of ``weights``, without forming the
        ``(n, n, K, 12)`` Hessian: each W first folds the angular forms, ``Q_k = sum_t W_kt M_kt``."""
        r, D, _, x_side = self._parts(c, u)
        n, S, K, R = D.shape
        u_side = self.n_shifts + np.arange(self.n_form_factors)
        M2 = self.M.reshape(K, 12, R * R)
        Hx = self.H[:, 1:, 1:]  # d2 r / d(c, v)_i du_j
        out = []
        for W in weights:
            Q = np.matmul(np.asarray(W, dtype=np.float64)[:, None, :], M2).reshape(K, R, R)
            QD = np.matmul(Q, D[..., None])[..., 0]  # (n, s, k, r)
            hess = D.reshape(n, -1) @ QD.reshape(n, -1).T
            Qr = np.matmul(Q, r[..., None])[..., 0]  # (s, k, r)
            cross = np.tensordot(Hx, Qr, axes=([0, 3, 4], [0, 1, 2]))
            hess[np.ix_(x_side, u_side)] += cross
            hess[np.ix_(u_side, x_side)] += cross.T
            out.append(hess / self.scale)
        return out

    def local(self, c, u) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """J ``(K, 12)``, its gradient ``(n, K, 12)`` and Hessian ``(n, n, K, 12)`` in ``(c, u, v)``, exact."""
        r, D, Mr, x_side = self._parts(c, u)
        nf = self.n_form_factors
        J = np.einsum("skr,sktr->kt", r, Mr) / 2
        grad = np.einsum("pskr,sktr->pkt", D, Mr)
        hess = np.einsum("pskr,ktrq,xskq->pxkt", D, self.M, D, optimize=True)
        cross = np.einsum("sijkr,sktr->ijkt", self.H[:, 1:, 1:], Mr)  # d2 r / d(c, v)_i du_j = H_ij
        u_side = self.n_shifts + np.arange(nf)
        hess[np.ix_(x_side, u_side)] += cross
        hess[np.ix_(u_side, x_side)] += cross.transpose(1, 0, 2, 3)
        return J / self.scale, grad / self.scale, hess / self.scale


def amplitude_table(
    coefficients: Sequence[str] = ("C9_bsmumu",),
    windows=DEFAULT_WINDOWS,
    form_factors: str | Sequence[str] = "bsz",
    corrections: Sequence[str] | None = None,
    *,
    spacing: float = 0.025,
    cache: Path | None | bool = None,
    workers: int = 1,
    progress=None,
) -> AmplitudeTable:
    """Build (or load from the cache) the amplitude tables over ``coefficients``, the form factors and the
    power corrections (default: every one that acts in the windows, :func:`kernels.nuisances.power_corrections`).
    ``progress(k)`` is called after each flavio evaluation; ``workers`` > 1 evaluates in processes."""
    coeffs = tuple(coefficient_for(c) for c in coefficients)
    if not coeffs or len(set(coeffs)) != len(coeffs):
        raise TheoryError(f"need distinct Wilson coefficients, got {list(coefficients)}")
    windows = validate_windows(windows)
    if not (0 < spacing <= 0.5):
        raise TheoryError(f"q2 node spacing {spacing} must be in (0, 0.5] GeV^2")
    corr = power_corrections(windows) if corrections is None else power_corrections(windows, corrections)
    prior = combined_prior(form_factor_names(form_factors), corr)
    nf = len(prior.names) - len(corr)

    from importlib.metadata import version

    flavio_version = version("flavio")
    ident = {"coefficients": coeffs, "windows": windows, "spacing": spacing, "flavio": flavio_version,
             "table_version": TABLE_VERSION, "amplitudes": AMPLITUDE_TABLE_VERSION, "wc_scale": WC_SCALE,
             "prior": prior.digest(), "names": prior.names, "n_form_factors": nf}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    q2, which = _grid(windows, spacing)
    path = None
    if cache is not False:
        path = (cache_dir() if cache is None else Path(cache)) / f"atable-{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return AmplitudeTable(coeffs, prior, nf, windows, z["q2"], z["window_of_node"], z["H"], z["M"],
                                      float(z["scale"]), key, flavio_version)

    import flavio

    log.info("computing amplitude tables for %s x %d form factors x %d power corrections with flavio %s", coeffs, nf,
             len(corr), flavio_version)
    central = flavio.default_parameters.get_central_all()
    nc, nv = len(coeffs), len(corr)

    def point(x, u):  # x = (c, v), u: whitened form factors
        p = dict(central)
        p.update(zip(prior.names, prior.theta(np.concatenate([u, x[nc:]])).tolist()))
        return (coeffs, x[:nc], q2, p)

    xs, us = np.vstack([np.zeros(nc + nv), np.eye(nc + nv)]), np.vstack([np.zeros(nf), np.eye(nf)])
    tasks = [point(x, u) for x in xs for u in us]
    rng = np.random.default_rng(20261203)
    x_chk, u_chk = rng.uniform(-1.5, 1.5, nc + nv), rng.uniform(-1.5, 1.5, nf)
    vals = map_evaluations(_evaluate_amplitudes, tasks, workers, progress)
    h = np.stack(vals).reshape(len(xs), len(us), *vals[0].shape)  # (i, j, s, K, 2n): at w = e_i, a = e_j
    H = h.copy()
    H[1:, 0] -= h[0, 0]
    H[0, 1:] -= h[0, 0]
    H[1:, 1:] -= h[1:, :1] + h[:1, 1:] - h[0, 0]
    active = np.flatnonzero(np.any(H != 0, axis=(0, 1, 2, 3)))
    H = np.ascontiguousarray(np.moveaxis(H[..., active], 2, 0))  # (s, i, j, K, R)
    M = _angular_forms(q2, active)
    raw = AmplitudeTable(coeffs, prior, nf, windows, q2, which, H, M, 1.0, key, flavio_version)
    check = _flavio_j(flavio, coeffs, x_chk[:nc], q2, point(x_chk, u_chk)[3])
    model = raw.j(x_chk[:nc], np.concatenate([u_chk, x_chk[nc:]]))
    err = np.max(np.abs(model - check)) / np.max(np.abs(check))
    if err > 1e-9:
        raise TheoryError(f"flavio's amplitudes are not bilinear in {coeffs}, power corrections x form factors "
                          f"(relative deviation of J {err:.2e})")
    scale = float(angular.rate(raw.at(np.zeros(len(prior.names))).integral())[0])
    table = AmplitudeTable(coeffs, prior, nf, windows, q2, which, H, M, scale, key, flavio_version)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, q2=q2, window_of_node=which, H=H, M=M, scale=scale)
    return table


def n_amplitude_evaluations(n_coefficients: int, n_form_factors: int, n_corrections: int) -> int:
    """flavio amplitude evaluations an amplitude table costs (plus one check of J).

    >>> n_amplitude_evaluations(1, 19, 12)
    280
    """
    return (1 + n_coefficients + n_corrections) * (1 + n_form_factors)

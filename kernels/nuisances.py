r"""Hadronic nuisance parameters: the B -> K* form factors, their prior, and bi-quadratic theory tables.

The parameter vector of wcscan has two kinds of entries (``design.md``): the
shifts ``c`` of the Wilson coefficients (of interest, unconstrained) and the
nuisances ``u`` (constrained by a Gaussian prior). The nuisances are flavio's 19
BSZ form-factor parameters ``theta`` in **whitened coordinates**,

.. math::

    \theta = \mu + L u,\qquad \Sigma = L L^T \ (\text{Cholesky}),\qquad u \sim N(0, s^2 I),

with flavio's own correlated prior (its ``MultivariateNormalDistribution``
constraint: ``mu``, ``Sigma``) and ``s`` the config's ``prior_scale``.

flavio's J is exactly quadratic in c at fixed theta, and in theta at fixed c,
so it is **bi-quadratic**:

.. math::

    J(q^2; c, u) = \sum_{p, q} m_p(c)\, m_q(u)\, T_{pq}(q^2),

with the monomials m of :mod:`kernels.theory`. :func:`nuisance_table` builds
``T`` from ``(1 + 2 n_c + n_c(n_c - 1)/2) (1 + 2 n_u + n_u(n_u - 1)/2)``
flavio evaluations (630 for delta C9 and the 19 form factors), checks it
against a direct flavio call at a random ``(c, u)`` and caches it on disk.
:meth:`NuisanceTable.at` contracts it at a ``u``: an ordinary
:class:`~kernels.theory.JTable`, so the sampler, detector, voxels and bootstrap
run unchanged in any world; at ``u = 0`` it is the fixed-theory table, byte for
byte. :meth:`NuisanceTable.local` gives J and its first and second derivatives
in the whole vector ``(c, u)``: what the joint Fisher matrix and the profiled
fit need.

Power corrections (flavio's ``B0->K*0 delta_C7*`` at low q2 and ``deltaC9 c_*``
at high q2) multiply the form factors, so J is not bi-quadratic in both: they are
tabulated from the helicity amplitudes instead (:mod:`kernels.amplitudes`).

>>> space = ParameterSpace(("C9_bsmumu",), ("u0", "u1"))
>>> space.names, space.n_poi, space.poi_slice, space.nuisance_slice
(('C9_bsmumu', 'u0', 'u1'), 1, slice(0, 1, None), slice(1, 3, None))
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kernels import angular
from kernels.errors import ConfigError, TheoryError
from kernels.files import atomic_path
from kernels.theory import (
    DEFAULT_WINDOWS,
    SHIFT_COLUMNS,
    TABLE_VERSION,
    WC_SCALE,
    JTable,
    _flavio_j,
    _grid,
    cache_dir,
    coefficient_for,
    monomial_gradient,
    monomial_hessian,
    monomials,
    n_monomials,
    quadratic_coefficients,
    stencil,
    validate_windows,
)

log = logging.getLogger(__name__)

FORM_FACTOR_PREFIX = "B->K* BSZ "
"""flavio's names of the B -> K* form-factor parameters start with this."""

FORM_FACTOR_SETS = ("none", "bsz")
"""``nuisances.form_factors`` values: none (fixed at flavio's central values) or flavio's 19 BSZ parameters."""


NUISANCE_SEED_OFFSET = 5 * 10**6
"""Worlds (nuisance draws) of a point are seed stream ``(seed, point, 5 * 10**6 + k)`` (:func:`draw_worlds`)."""


@dataclass(frozen=True)
class ParameterSpace:
    """The parameter vector: ``poi`` (Wilson-coefficient shifts) first, then ``nuisances`` (whitened).

    The fits, the Fisher matrix and the bounds read the slices; no stage asks which entry is which.
    """

    poi: tuple[str, ...]
    nuisances: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return self.poi + self.nuisances

    @property
    def n_poi(self) -> int:
        return len(self.poi)

    @property
    def n(self) -> int:
        return len(self.poi) + len(self.nuisances)

    @property
    def poi_slice(self) -> slice:
        return slice(0, self.n_poi)

    @property
    def nuisance_slice(self) -> slice:
        return slice(self.n_poi, self.n)


@dataclass(frozen=True, eq=False)
class Prior:
    """A Gaussian prior on physical parameters ``names``: ``theta = mean + chol @ u``, ``u ~ N(0, I)``."""

    names: tuple[str, ...]
    mean: np.ndarray
    cov: np.ndarray

    def __post_init__(self):
        check_prior(self.names, self.mean, self.cov)

    @cached_property
    def chol(self) -> np.ndarray:
        return np.linalg.cholesky(self.cov)

    def theta(self, u) -> np.ndarray:
        """Physical values at whitened ``u`` (shape ``(..., n)``)."""
        return self.mean + np.asarray(u, dtype=np.float64) @ self.chol.T

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(list(self.names)).encode())
        h.update(np.ascontiguousarray(self.mean, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(self.cov, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]


def check_prior(names, mean, cov) -> None:
    """A one-line ConfigError unless ``cov`` is a finite, symmetric, positive-definite matrix for ``names``.

    >>> check_prior(("a", "b"), np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: the prior covariance of a, b is not positive definite (smallest eigenvalue -1)
    """
    mean, cov = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    n = len(names)
    if mean.shape != (n,) or cov.shape != (n, n):
        raise ConfigError(f"prior of {n} parameter(s) needs a mean ({n},) and covariance ({n}, {n}), got {mean.shape}, {cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))) or not np.allclose(cov, cov.T, rtol=1e-10, atol=0):
        raise ConfigError(f"the prior covariance of {', '.join(names)} is not finite and symmetric")
    low = float(np.linalg.eigvalsh(cov).min())
    if low <= 0:
        raise ConfigError(f"the prior covariance of {', '.join(names)} is not positive definite (smallest eigenvalue {low:.3g})")


def check_prior_scale(s, where: str = "nuisances.prior_scale") -> float:
    """``prior_scale`` must be a finite number > 0.

    >>> check_prior_scale(0)
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: nuisances.prior_scale must be a finite number > 0, got 0
    """
    try:
        v = float(s)
    except (TypeError, ValueError):
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        raise ConfigError(f"{where} must be a finite number > 0, got {s!r}")
    return v


def flavio_prior(names: Sequence[str] | None = None, *, prefix: str = FORM_FACTOR_PREFIX) -> Prior:
    """flavio's own Gaussian prior on its parameters ``names`` (default: every one starting with ``prefix``).

    The names must all be constrained by one ``MultivariateNormalDistribution`` (or normal) of
    ``flavio.default_parameters``; a subset takes its marginal. An unknown name is a one-line ConfigError.
    """
    import flavio

    for dist, pnames in flavio.default_parameters._constraints:
        if names is None and not any(p.startswith(prefix) for p in pnames):
            continue
        if names is not None and not set(names) & set(pnames):
            continue
        want = tuple(p for p in pnames if p.startswith(prefix)) if names is None else tuple(names)
        missing = [p for p in want if p not in pnames]
        if missing:
            known = flavio.default_parameters.get_central_all()
            bad = [p for p in missing if p not in known]
            if bad:
                raise ConfigError(f"unknown nuisance parameter {bad[0]!r} (not a flavio parameter)")
            raise ConfigError(f"nuisance parameters {want} are not constrained by one prior in flavio")
        idx = [list(pnames).index(p) for p in want]
        mean = np.atleast_1d(np.asarray(dist.central_value, dtype=np.float64))[idx]
        cov = getattr(dist, "covariance", None)
        cov = np.atleast_2d(np.asarray(cov if cov is not None else dist.standard_deviation**2, dtype=np.float64))
        return Prior(want, mean, cov[np.ix_(idx, idx)])
    what = names[0] if names else prefix
    raise ConfigError(f"unknown nuisance parameter {what!r}: no flavio prior constrains it")


def joint_monomials(c, u) -> np.ndarray:
    """``m(c) (x) m(u)``, flattened: the monomials of the bi-quadratic tables, shape ``(P_c * P_u,)``."""
    return np.outer(monomials(c), monomials(u)).ravel()


def joint_monomial_derivatives(c, u, hessian: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The joint monomials, their gradient ``(n, P)`` and Hessian ``(n, n, P)`` (None unless ``hessian``)
    in the vector ``(c, u)``."""
    c, u = np.atleast_1d(np.asarray(c, dtype=np.float64)), np.atleast_1d(np.asarray(u, dtype=np.float64))
    nc, nu = c.size, u.size
    mc, mu = monomials(c), monomials(u)
    gc, gu = monomial_gradient(c), monomial_gradient(u) if nu else np.zeros((0, 1))
    hc, hu = monomial_hessian(nc), monomial_hessian(nu) if nu else np.zeros((0, 0, 1))
    n = nc + nu
    P = mc.size * mu.size
    grad = np.empty((n, P))
    grad[:nc] = np.einsum("ap,q->apq", gc, mu).reshape(nc, P)
    grad[nc:] = np.einsum("p,jq->jpq", mc, gu).reshape(nu, P)
    if not hessian:
        return np.outer(mc, mu).ravel(), grad, None
    hess = np.empty((n, n, P))
    hess[:nc, :nc] = np.einsum("abp,q->abpq", hc, mu).reshape(nc, nc, P)
    cross = np.einsum("ap,jq->ajpq", gc, gu).reshape(nc, nu, P)
    hess[:nc, nc:] = cross
    hess[nc:, :nc] = cross.transpose(1, 0, 2)
    hess[nc:, nc:] = np.einsum("p,ijq->ijpq", mc, hu).reshape(nu, nu, P)
    return np.outer(mc, mu).ravel(), grad, hess


FACTOR_RTOL = 1e-12
"""Singular values of the joint-monomial tables kept by :attr:`NuisanceTable.factors` (relative to the largest)."""


@dataclass(frozen=True, eq=False)
class NuisanceTable:
    """Bi-quadratic tables ``coef[p, q, k, i]``: monomial p of the shifts c times monomial q of the
    whitened nuisances u, at q2 node k, for term i (scaled as the fixed-theory table, by its SM rate)."""

    coefficients: tuple[str, ...]
    prior: Prior
    windows: tuple[tuple[float, float], ...]
    q2: np.ndarray
    window_of_node: np.ndarray
    coef: np.ndarray  # (P_c, P_u, K, 12)
    scale: float
    key: str
    flavio_version: str
    base_key: str  # the key of the fixed-theory JTable this contracts to at u = 0

    @property
    def space(self) -> ParameterSpace:
        return ParameterSpace(self.coefficients, tuple(f"u:{n}" for n in self.prior.names))

    @property
    def n_shifts(self) -> int:
        return len(self.coefficients)

    @property
    def n_nuisances(self) -> int:
        return len(self.prior.names)

    @property
    def shift_columns(self) -> tuple[str, ...]:
        return tuple(SHIFT_COLUMNS[c] for c in self.coefficients)

    def nuisance_array(self, u) -> np.ndarray:
        u = np.atleast_1d(np.asarray(u, dtype=np.float64))
        if u.shape != (self.n_nuisances,) or not np.all(np.isfinite(u)):
            raise ConfigError(f"expected {self.n_nuisances} finite nuisance value(s), got shape {u.shape}")
        return u

    def _jtable(self, coef: np.ndarray, key: str) -> JTable:
        return JTable(self.coefficients, self.windows, self.q2, self.window_of_node, coef, self.scale, key,
                      self.flavio_version)

    def at(self, u) -> JTable:
        """The fixed-theory table of the world ``u`` (whitened nuisances). At ``u = 0`` it is
        :func:`kernels.theory.jtable`'s table, its key included."""
        u = self.nuisance_array(u)
        if not np.any(u):
            return self._jtable(np.ascontiguousarray(self.coef[:, 0]), self.base_key)
        coef = np.tensordot(self.coef, monomials(u), axes=(1, 0))
        return self._jtable(coef, f"{self.base_key}-u{hashlib.sha256(u.tobytes()).hexdigest()[:12]}")

    @cached_property
    def flat(self) -> JTable:
        """The tables as one JTable over the joint monomials (``(P_c P_u, K, 12)``), for projections and
        normalisations: ``G(x; c, u) = project(flat, x) @ joint_monomials(c, u)``."""
        P = self.coef.shape[0] * self.coef.shape[1]
        return self._jtable(self.coef.reshape(P, *self.coef.shape[2:]), f"{self.key}-flat")

    @cached_property
    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(C, V)`` with ``flat.coef = C @ V`` to :data:`FACTOR_RTOL` of the largest singular value:
        ``C`` ``(P, r)``, ``V`` ``(r, K * 12)``. The joint-monomial tables span few directions (about
        120 of 630 for delta C9 x BSZ), so contracting them costs ``r / P`` of the full product."""
        T = self.flat.coef.reshape(self.flat.coef.shape[0], -1)
        U, S, Vt = np.linalg.svd(T, full_matrices=False)
        r = max(1, int(np.sum(S > FACTOR_RTOL * S[0])))
        return np.ascontiguousarray(U[:, :r] * S[:r]), np.ascontiguousarray(Vt[:r])

    def local(self, c, u) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """J ``(K, 12)``, its gradient ``(n, K, 12)`` and Hessian ``(n, n, K, 12)`` in ``(c, u)``, exact."""
        m, g, h = joint_monomial_derivatives(c, self.nuisance_array(u))
        T = self.flat.coef
        return (np.tensordot(m, T, axes=(0, 0)), np.tensordot(g, T, axes=(1, 0)), np.tensordot(h, T, axes=(2, 0)))


def draw_worlds(n_worlds: int, n_nuisances: int, prior_scale: float, seed: int, point: int) -> np.ndarray:
    """``n_worlds`` whitened nuisance vectors from the prior ``N(0, s^2 I)``, shape ``(n_worlds, n_nuisances)``.

    World k of a point is its own stream ``(seed, point, 5 * 10**6 + k)``: the same world whatever
    else is drawn, and apart from every stream of :mod:`kernels.bootstrap`.

    >>> draw_worlds(2, 3, 1.0, seed=0, point=1).shape
    (2, 3)
    """
    s = check_prior_scale(prior_scale)
    out = np.empty((int(n_worlds), int(n_nuisances)))
    for k in range(int(n_worlds)):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(point), NUISANCE_SEED_OFFSET + k])))
        out[k] = s * rng.standard_normal(int(n_nuisances))
    return out


def world_of(seed, n_nuisances: int, prior_scale: float) -> np.ndarray:
    """The world (whitened nuisances ``(n_nuisances,)`` from ``N(0, s^2 I)``) of the unit whose seed entropy is
    ``seed``: its own stream ``(*seed, 5 * 10**6)``, apart from the unit's events (drawn with ``seed``).

    Streamed training sets draw each set's world this way (:mod:`orchestrator.build.stream_work`).

    >>> bool(np.array_equal(world_of((1, 2, 3), 4, 1.0), world_of((1, 2, 3), 4, 1.0)))
    True
    """
    s = check_prior_scale(prior_scale)
    entropy = [int(x) for x in seed] + [NUISANCE_SEED_OFFSET]
    return s * np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy))).standard_normal(int(n_nuisances))


def _evaluate(args):
    """One flavio evaluation of J (a picklable task for the process pool)."""
    import flavio

    coeffs, d, q2, par = args
    return _flavio_j(flavio, coeffs, d, q2, par)


def map_evaluations(fn, tasks, workers: int = 1, progress=None) -> list:
    """``[fn(t) for t in tasks]``, in ``workers`` processes if > 1, calling ``progress(1)`` after each."""
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            out = []
            for v in pool.map(fn, tasks, chunksize=4):
                out.append(v)
                if progress is not None:
                    progress(1)
            return out
    out = []
    for t in tasks:  # flavio evaluates one parameter point at a time: the theory calls, not an event loop
        out.append(fn(t))
        if progress is not None:
            progress(1)
    return out


def form_factor_names(form_factors: str | Sequence[str]) -> tuple[str, ...] | None:
    """``"bsz"``: None (all 19); a list: its distinct BSZ names. Anything else is a one-line ConfigError."""
    if isinstance(form_factors, str):
        if form_factors != "bsz":
            raise ConfigError(f"unknown form-factor set {form_factors!r}; expected one of {', '.join(FORM_FACTOR_SETS)}")
        return None
    names = tuple(form_factors)
    bad = [n for n in names if not n.startswith(FORM_FACTOR_PREFIX)]
    if bad:
        raise ConfigError(f"unknown nuisance parameter {bad[0]!r}; form factors are named '{FORM_FACTOR_PREFIX}...'")
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"need distinct form-factor names, got {list(names)}")
    return names


def nuisance_table(
    coefficients: Sequence[str] = ("C9_bsmumu",),
    windows=DEFAULT_WINDOWS,
    form_factors: str | Sequence[str] = "bsz",
    *,
    spacing: float = 0.025,
    cache: Path | None | bool = None,
    workers: int = 1,
    progress=None,
) -> NuisanceTable:
    """Build (or load from the cache) the bi-quadratic tables over ``coefficients`` x the form factors.

    ``form_factors``: ``"bsz"`` (all 19, flavio's prior) or a list of BSZ parameter names (a subset, with
    the marginal prior: for tests and studies). ``workers`` > 1 evaluates flavio in that many processes.
    ``progress(k)`` is called after each flavio evaluation. Cold, the 630 evaluations of delta C9 x
    BSZ at the default spacing take about 5 min of one core.
    """
    coeffs = tuple(coefficient_for(c) for c in coefficients)
    if not coeffs or len(set(coeffs)) != len(coeffs):
        raise TheoryError(f"need distinct Wilson coefficients, got {list(coefficients)}")
    names = form_factor_names(form_factors)
    windows = validate_windows(windows)
    if not (0 < spacing <= 0.5):
        raise TheoryError(f"q2 node spacing {spacing} must be in (0, 0.5] GeV^2")
    prior = flavio_prior(names)

    from importlib.metadata import version

    flavio_version = version("flavio")
    base = {"coefficients": coeffs, "windows": windows, "spacing": spacing, "flavio": flavio_version,
            "table_version": TABLE_VERSION, "wc_scale": WC_SCALE}
    base_key = hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:16]  # jtable's key
    key = hashlib.sha256(json.dumps({**base, "prior": prior.digest(), "names": prior.names}, sort_keys=True).encode()).hexdigest()[:16]
    q2, which = _grid(windows, spacing)
    path = None
    if cache is not False:
        path = (cache_dir() if cache is None else Path(cache)) / f"ntable-{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return NuisanceTable(coeffs, prior, windows, z["q2"], z["window_of_node"], z["coef"], float(z["scale"]),
                                     key, flavio_version, base_key)

    import flavio

    log.info("computing bi-quadratic J tables for %s x %d form factors with flavio %s", coeffs, len(prior.names),
             flavio_version)
    central = flavio.default_parameters.get_central_all()
    cs, us = stencil(len(coeffs)), stencil(len(prior.names))

    def par_at(u):
        p = dict(central)
        p.update(zip(prior.names, prior.theta(u).tolist()))
        return p

    tasks = [(coeffs, c, q2, par_at(u)) for u in us for c in cs]
    tasks.append((coeffs, np.full(len(coeffs), -1.3), q2, par_at(np.linspace(-1.2, 0.9, len(prior.names)))))
    vals = map_evaluations(_evaluate, tasks, workers, progress)
    check = vals.pop()
    per_u = [quadratic_coefficients(vals[i * len(cs):(i + 1) * len(cs)], len(coeffs)) for i in range(len(us))]
    coef = np.moveaxis(quadratic_coefficients(per_u, len(prior.names)), 0, 1)  # (P_c, P_u, K, 12)

    c_chk, u_chk = tasks[-1][1], np.linspace(-1.2, 0.9, len(prior.names))
    model = np.tensordot(joint_monomials(c_chk, u_chk), coef.reshape(-1, *coef.shape[2:]), axes=(0, 0))
    err = np.max(np.abs(model - check)) / np.max(np.abs(check))
    if err > 1e-9:
        raise TheoryError(f"flavio's J is not bi-quadratic in {coeffs} x form factors (relative deviation {err:.2e})")
    scale = float(angular.rate(JTable(coeffs, windows, q2, which, coef[:, 0], 1.0, base_key, flavio_version).integral())[0])
    table = NuisanceTable(coeffs, prior, windows, q2, which, coef / scale, scale, key, flavio_version, base_key)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, q2=q2, window_of_node=which, coef=table.coef, scale=scale)
    return table


def n_evaluations(n_coefficients: int, n_nuisances: int) -> int:
    """flavio evaluations a bi-quadratic table costs (plus one check).

    >>> n_evaluations(1, 19)
    630
    """
    return n_monomials(n_coefficients) * n_monomials(n_nuisances)

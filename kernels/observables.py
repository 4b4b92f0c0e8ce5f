"""The global fit's observable set, its measurements, and flavio's predictions in (C9, C10).

``load_observable_set`` reads and checks an :class:`ObservableSet` (binned
observables ``(name, q2min, q2max)`` and the flavio measurements constraining
them); ``experimental`` gives the measurements' Gaussian approximation,
``theory_covariance`` flavio's SM covariance (cached), ``predict`` direct
flavio predictions at real shifts ``(C9_bsmumu, C10_bsmumu)`` (WET, flavio
basis, 4.8 GeV), and ``fit_surrogate`` verified closed forms of them.

The amplitudes are linear in the real shifts c, so every binned rate (dBR/dq2,
the binned J_i) is a quadratic form q(c) = a . m(c) in the six monomials
m = (1, u, v, u^2, u v, v^2) of the scaled shifts (u, v); R_K and R_K* move
only their muon numerator and stay quadratic. flavio bins P1, P2 as a ratio of
binned rates, q_N(c) / q_D(c), and P4', P5' as q_N(c) / sqrt(B(c)) with
B = -4 <J2s><J2c> quartic (15 monomials m4). The forms tried, in this order:

- "quadratic": y = m a (least squares, 6 unknowns);
- "ratio": y (1 + m' d) = m a (m' = m without the 1; 11 unknowns), then
  polished by nonlinear least squares on y - q_N / q_D;
- "sqrt": y^2 (1 + m4' b) = m4 A (29 unknowns), y sqrt(B) = m a, polished.

A form is exact for an observable only if, at random check points not used in
the fit, it reproduces flavio to ``tol`` (default 1e-6) relative to the
observable's largest magnitude; the others are computed directly. flavio
integrates bins with adaptive quadrature (``quad``, epsrel 5e-4 to 5e-3) whose
subdivision depends on c, so flavio itself is a closed form only up to ~1e-7
(R_K, P5'): the tolerance sits above that noise, and far below the data's
errors (1e-6 of R_K is 2e-5 of its experimental sigma).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels.errors import ConfigError

COEFFICIENTS = ("C9_bsmumu", "C10_bsmumu")
WC_SCALE = 4.8
FORMS = ("quadratic", "ratio", "sqrt")
_QCDF_WARNING = "The QCDF corrections should not be trusted"


def _flavio_version() -> str:
    from importlib.metadata import version

    return version("flavio")


@dataclass(frozen=True)
class ObservableSet:
    """Binned observables ``(name, q2min, q2max)`` and the names of the measurements that constrain them.

    >>> s = ObservableSet((("<P5p>(B0->K*mumu)", 4.0, 6.0),), ("LHCb B->K*mumu 2020 P 4-6",))
    >>> s.labels
    ('<P5p>(B0->K*mumu) [4, 6]',)
    >>> len(s.key), s.key == ObservableSet(s.observables, s.measurements).key
    (64, True)
    """

    observables: tuple[tuple[str, float, float], ...]
    measurements: tuple[str, ...]
    source: str = field(default="", compare=False)

    def __post_init__(self):
        obs = tuple((str(n), float(a), float(b)) for n, a, b in self.observables)
        object.__setattr__(self, "observables", obs)
        object.__setattr__(self, "measurements", tuple(str(m) for m in self.measurements))
        where = f" ({self.source})" if self.source else ""
        if not obs:
            raise ConfigError(f"observables: the list is empty{where}")
        for i, (n, a, b) in enumerate(obs):
            if not (math.isfinite(a) and math.isfinite(b) and 0 <= a < b):
                raise ConfigError(f"observables[{i}]: {n} needs 0 <= q2min < q2max, got [{a}, {b}]{where}")
            if obs.index((n, a, b)) != i:
                raise ConfigError(f"observables[{i}]: {n} [{a:g}, {b:g}] is listed twice{where}")
        if not self.measurements:
            raise ConfigError(f"measurements: the list is empty{where}")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f"{n} [{a:g}, {b:g}]" for n, a, b in self.observables)

    @property
    def key(self) -> str:
        """sha256 of the observables, the measurements and the flavio version."""
        ident = {"observables": self.observables, "measurements": self.measurements, "flavio": _flavio_version()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.observables)

    def wilson(self, c):
        """flavio WilsonCoefficients of real shifts c = (C9_bsmumu, C10_bsmumu): WET, flavio basis, 4.8 GeV."""
        import flavio

        wc, shifts = flavio.WilsonCoefficients(), {k: float(v) for k, v in zip(COEFFICIENTS, c) if v != 0.0}
        if shifts:
            wc.set_initial(shifts, scale=WC_SCALE, eft="WET", basis="flavio")
        return wc

    def subset(self, indices) -> ObservableSet:
        """The observables at ``indices``, with the same measurements (not re-checked)."""
        return ObservableSet(tuple(self.observables[i] for i in indices), self.measurements, self.source)


def _entry(d, i: int, where: str) -> tuple[str, float, float]:
    if not isinstance(d, dict) or set(d) != {"observable", "q2min", "q2max"}:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ConfigError(f"observables[{i}]: expected {{observable, q2min, q2max}}, got {got}{where}")
    try:
        return str(d["observable"]), float(d["q2min"]), float(d["q2max"])
    except (TypeError, ValueError):
        raise ConfigError(f"observables[{i}]: q2min and q2max must be numbers, got {dict(d)!r}{where}") from None


def load_observable_set(path) -> ObservableSet:
    """Read ``{observables: [{observable, q2min, q2max}, ...], measurements: [...]}`` and check it against flavio.

    Raises :class:`ConfigError` (one line naming the entry) for a malformed file,
    an observable or measurement flavio does not know, a measurement that
    constrains none of the listed observables/bins, or an observable/bin that no
    listed measurement constrains. No prediction is computed.
    """
    import yaml

    path, where = Path(path), f" ({path})"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the observable set {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or set(doc) != {"observables", "measurements"}:
        raise ConfigError(f"an observable set has exactly the keys observables and measurements, got {doc!r:.80}{where}")
    obs, meas = doc["observables"], doc["measurements"]
    if not isinstance(obs, list) or not isinstance(meas, list) or not all(isinstance(m, str) for m in meas):
        raise ConfigError(f"observables must be a list of entries and measurements a list of names{where}")
    obs_set = ObservableSet(tuple(_entry(d, i, where) for i, d in enumerate(obs)), tuple(meas), str(path))
    check_against_flavio(obs_set)
    return obs_set


def check_against_flavio(obs_set: ObservableSet) -> None:
    """The cheap checks of :func:`load_observable_set` (names and coverage only, no predictions)."""
    import flavio

    where = f" ({obs_set.source})" if obs_set.source else ""
    for i, (name, *_) in enumerate(obs_set.observables):
        try:
            inst = flavio.classes.Observable.get_instance(name)
        except KeyError:
            raise ConfigError(f"observables[{i}]: flavio knows no observable {name!r}{where}") from None
        if list(inst.arguments or []) != ["q2min", "q2max"]:
            raise ConfigError(f"observables[{i}]: {name!r} is not a q2-binned observable (arguments {inst.arguments}){where}")
    wanted = set(obs_set.observables)
    covered = set()
    for j, m in enumerate(obs_set.measurements):
        if m not in flavio.classes.Measurement.instances:
            raise ConfigError(f"measurements[{j}]: flavio knows no measurement {m!r}{where}")
        hit = wanted & set(flavio.classes.Measurement[m].all_parameters)
        if not hit:
            raise ConfigError(f"measurements[{j}]: {m!r} constrains none of the listed observables/bins{where}")
        covered |= hit
    for i, o in enumerate(obs_set.observables):
        if o not in covered:
            raise ConfigError(f"observables[{i}]: {obs_set.labels[i]} is constrained by none of the listed measurements{where}")


def _moments(dist, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a flavio distribution, restricted to ``positions`` of its vector (the marginal)."""
    from flavio.statistics import probability as p

    if isinstance(dist, p.MultivariateNormalDistribution):
        ix = np.asarray(positions)
        return np.asarray(dist.central_value, float)[ix], np.asarray(dist.covariance, float)[np.ix_(ix, ix)]
    if isinstance(dist, p.NormalDistribution):
        return np.array([float(dist.central_value)]), np.array([[float(dist.standard_deviation) ** 2]])
    if isinstance(dist, p.NumericalDistribution) and type(dist).get_random is p.NumericalDistribution.get_random:
        # flavio samples by inverting a piecewise-linear CDF: density y_norm[j] on [x_j, x_j+1]
        x, y = np.asarray(dist.x, float), np.asarray(dist.y_norm, float)
        w = y[:-1] * np.diff(x)
        w = w / w.sum()
        mean = np.sum(w * (x[:-1] + x[1:]) / 2)
        second = np.sum(w * (x[:-1] ** 2 + x[:-1] * x[1:] + x[1:] ** 2) / 3)
        return np.array([mean]), np.array([[second - mean**2]])
    state = np.random.get_state()  # any other shape: moments of 10^6 seeded draws, as flavio would sample it
    try:
        np.random.seed(0)
        draws = np.asarray(dist.get_random(size=1_000_000), float).reshape(1_000_000, -1)[:, positions]
    finally:
        np.random.set_state(state)
    return draws.mean(axis=0), np.atleast_2d(np.cov(draws.T))


def experimental(obs_set: ObservableSet) -> tuple[np.ndarray, np.ndarray]:
    """Central values (K,) and covariance (K, K) of the listed measurements, in ``obs_set``'s order.

    flavio's ``FastLikelihood`` Gaussian (its ``MeasurementCovariance``
    estimates these moments from random draws): each measurement distribution
    becomes its mean and covariance, marginalised onto the listed observables
    (multivariate normal: centre and covariance block; 1D numerical: exact
    moments of what flavio samples). Several listed measurements of one
    observable are combined with inverse-covariance weights, as in flavio. A
    singular covariance raises ConfigError naming the entry.
    """
    import flavio

    from kernels.chi2 import inverse_covariance

    check_against_flavio(obs_set)  # names and coverage (cheap): every observable has a measurement
    index = {o: k for k, o in enumerate(obs_set.observables)}
    blocks = []
    for m in obs_set.measurements:
        meas = flavio.classes.Measurement[m]
        groups: dict[int, tuple[object, list, list]] = {}
        for o, (num, dist) in meas._parameters.items():
            if o in index:
                group = groups.setdefault(id(dist), (dist, [], []))
                group[1].append(num)
                group[2].append(index[o])
        for dist, positions, ks in groups.values():
            mean, cov = _moments(dist, positions)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
                raise ConfigError(f"measurement {m!r}: non-finite central value or covariance for {obs_set.labels[ks[0]]}")
            blocks.append((m, np.asarray(ks), mean, cov))
    K = len(obs_set)
    counts = np.bincount(np.concatenate([b[1] for b in blocks]), minlength=K)
    if np.all(counts == 1):
        central, cov = np.empty(K), np.zeros((K, K))
        for _, ks, mean, c in blocks:
            central[ks], cov[np.ix_(ks, ks)] = mean, c
    else:
        info, vec = np.zeros((K, K)), np.zeros(K)
        for m, ks, mean, c in blocks:
            w = inverse_covariance(c, [f"{obs_set.labels[k]} in {m!r}" for k in ks])
            info[np.ix_(ks, ks)] += w
            vec[ks] += w @ mean
        cov = np.linalg.inv(info)
        central = cov @ vec
    inverse_covariance(cov, [f"{lab} (experimental)" for lab in obs_set.labels])
    return central, cov


def theory_covariance(obs_set: ObservableSet, n: int = 200, seed: int = 0, cache=None) -> np.ndarray:
    """flavio's SM covariance of the predictions (K, K) from ``n`` draws of all nuisance parameters.

    ``flavio.sm_covariance(obs_list, N=n, threads=1)`` with numpy's global seed
    set to ``seed`` around it (the state is restored afterwards), cached as
    ``smcov-<set key>-n<n>-seed<seed>.npy`` under ``cache`` (None:
    ``kernels.theory.cache_dir()``; False: no cache). Sigma_th is noisy: at
    n = 200 the fitted minimum moves by a few hundredths between seeds, so fix
    both. Reproducibility across processes: the parameter draws follow flavio's
    (ordered) parameter list, but flavio walks the *measurements* in set order
    (``MeasurementLikelihood.get_measurements``), which depends on
    PYTHONHASHSEED; run with PYTHONHASHSEED fixed whenever flavio's own
    likelihood classes draw random numbers (see ``chi2.flavio_likelihood_chi2``).
    """
    from kernels.files import atomic_path
    from kernels.theory import cache_dir

    if int(n) < 2:
        raise ConfigError(f"theory covariance needs n >= 2 draws, got {n}")
    path = None
    if cache is not False:
        path = (cache_dir() if cache is None else Path(cache)) / f"smcov-{obs_set.key[:16]}-n{int(n)}-seed{int(seed)}.npy"
        if path.exists():
            return np.load(path)
    import flavio

    state = np.random.get_state()
    try:
        np.random.seed(int(seed))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_QCDF_WARNING)
            cov = np.atleast_2d(flavio.sm_covariance(list(obs_set.observables), N=int(n), threads=1))
    finally:
        np.random.set_state(state)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, cov)
    return cov


def predict(obs_set: ObservableSet, points) -> np.ndarray:
    """flavio's central predictions (M, K) at ``points`` (M, 2) of real shifts (C9_bsmumu, C10_bsmumu).

    The shifts are set in flavio's WET basis at 4.8 GeV. A plain function of
    picklable inputs: the unit of work for one chunk of grid points.
    """
    import flavio

    pts = np.atleast_2d(np.asarray(points, dtype=float))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ConfigError(f"points must have shape (M, 2) of (C9_bsmumu, C10_bsmumu), got {pts.shape}")
    out = np.empty((len(pts), len(obs_set)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QCDF_WARNING)
        for i, c in enumerate(pts):  # one flavio call per point and observable: the theory itself
            wc = obs_set.wilson(c)
            for k, (name, a, b) in enumerate(obs_set.observables):
                out[i, k] = flavio.np_prediction(name, wc, a, b)
    return out


def _monomials(uv: np.ndarray, degree: int) -> np.ndarray:
    """All monomials u^i v^j with i + j <= degree, shape (M, n), in graded order starting at 1."""
    u, v = uv[:, 0], uv[:, 1]
    return np.stack([u ** (d - j) * v**j for d in range(degree + 1) for j in range(d + 1)], axis=1)


@dataclass(frozen=True, eq=False)
class Surrogate:
    """Closed forms O_k(c) = N_k(c) / D_k(c) / sqrt(B_k(c)) of flavio's predictions, verified per observable.

    N, D quadratic (6 coefficients each), B quartic (15) in the scaled shifts
    u = (c - centre) / half; a "quadratic" form has D = B = 1, a "ratio" B = 1,
    a "sqrt" D = 1. ``form[k]`` is None where no form reproduced flavio to
    ``tol``: those observables are computed directly. ``max_rel_error`` is the
    largest deviation from flavio at the check points, relative to the
    observable's largest magnitude. A toy with one observable of each kind:

    >>> def toy(points):
    ...     c9, c10 = np.asarray(points).T
    ...     q = 1 + 0.3 * c9 + 0.2 * c10**2
    ...     return np.stack([q, q / (2 + c9 + c9**2), q / np.sqrt((3 + c9**2) * (2 + c10**2)), np.cos(c9)], 1)
    >>> toys = ObservableSet(tuple((f"toy{k}", 1.0, 2.0) for k in range(4)), ("toy",))
    >>> s = fit_surrogate(toys, predict_fn=toy)
    >>> s.form
    ('quadratic', 'ratio', 'sqrt', None)
    >>> pts = np.array([[-1.3, 0.4], [0.2, -0.7]])
    >>> bool(np.allclose(s.predict(pts), toy(pts), rtol=1e-9, atol=0))
    True
    """

    obs_set: ObservableSet
    form: tuple[str | None, ...]
    num: np.ndarray  # (K, 6)
    den: np.ndarray  # (K, 6)
    root: np.ndarray  # (K, 15)
    centre: np.ndarray  # (2,)
    half: np.ndarray  # (2,)
    max_rel_error: np.ndarray  # (K,) in units of scale
    scale: np.ndarray  # (K,) largest |flavio| at the design and check points: the unit of tol
    tol: float
    predict_fn: object = None  # direct predictions of the full set (None: flavio through ``predict``)

    @property
    def exact(self) -> np.ndarray:
        return np.array([f is not None for f in self.form])

    def closed_form(self, points) -> np.ndarray:
        """Every observable's fitted form (M, K), exact or not (NaN where no form was fitted)."""
        uv = (np.atleast_2d(np.asarray(points, float)) - self.centre) / self.half
        m2, m4 = _monomials(uv, 2), _monomials(uv, 4)
        return (m2 @ self.num.T) / (m2 @ self.den.T) / np.sqrt(m4 @ self.root.T)

    def predict(self, points, direct: bool = True) -> np.ndarray:
        """Predictions (M, K): closed forms where exact, direct flavio calls for the rest (NaN if not ``direct``)."""
        pts = np.atleast_2d(np.asarray(points, float))
        out = self.closed_form(pts)
        rest = np.flatnonzero(~self.exact)
        if rest.size:
            if not direct:
                out[:, rest] = np.nan
            elif self.predict_fn is None:
                out[:, rest] = predict(self.obs_set.subset(rest), pts)
            else:
                out[:, rest] = np.asarray(self.predict_fn(pts))[:, rest]
        return out

    def report(self) -> str:
        """One line per observable: the form used (or "direct") and its measured deviation."""
        return "\n".join(
            f"{lab:40s} {f or 'direct':9s} max rel. deviation {e:.1e}"
            for lab, f, e in zip(self.obs_set.labels, self.form, self.max_rel_error)
        )


def _fit_form(form: str, m2, m4, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares coefficients (num, den, root) of one observable's form at the design points."""
    one2, one4 = np.eye(m2.shape[1])[0], np.eye(m4.shape[1])[0]
    if form == "quadratic":
        return np.linalg.lstsq(m2, y, rcond=None)[0], one2, one4
    if form == "ratio":  # y (1 + m2' d) = m2 a
        sol = np.linalg.lstsq(np.hstack([m2, -y[:, None] * m2[:, 1:]]), y, rcond=None)[0]
        return _polish(form, m2, m4, y, (sol[:6], np.concatenate([[1.0], sol[6:]]), one4))
    # sqrt: y^2 (1 + m4' b) = m4 A, then y sqrt(B) = m2 a
    sol = np.linalg.lstsq(np.hstack([m4, -(y**2)[:, None] * m4[:, 1:]]), y**2, rcond=None)[0]
    root = np.concatenate([[1.0], sol[15:]])
    b = m4 @ root
    if np.any(b <= 0):
        return np.full(6, np.nan), one2, root
    return _polish(form, m2, m4, y, (np.linalg.lstsq(m2, y * np.sqrt(b), rcond=None)[0], one2, root))


def _polish(form: str, m2, m4, y, coef):
    """Refine a linearised ratio/sqrt fit by least squares on y - O(c) itself (the linear fits weight by D, y B)."""
    from scipy.optimize import least_squares

    a, d, r = coef
    free = d[1:] if form == "ratio" else r[1:]

    def unpack(p):
        one = np.concatenate([[1.0], p[6:]])
        return (p[:6], one, r) if form == "ratio" else (p[:6], d, one)

    def resid(p):
        a_, d_, r_ = unpack(p)
        return (m2 @ a_) / (m2 @ d_) / np.sqrt(np.abs(m4 @ r_)) - y

    p0 = np.concatenate([a, free])
    if not np.all(np.isfinite(resid(p0))) or len(y) <= len(p0):
        return coef
    sol = least_squares(resid, p0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=200 * len(p0))
    return unpack(sol.x) if np.max(np.abs(sol.fun)) < np.max(np.abs(resid(p0))) else coef


def fit_surrogate(
    obs_set: ObservableSet,
    *,
    box=((-3.0, 2.0), (-2.0, 2.0)),
    n_design: int = 40,
    n_check: int = 8,
    tol: float = 1e-6,
    forms=FORMS,
    seed: int = 0,
    predict_fn=None,
) -> Surrogate:
    """Fit each observable's closed form to ``n_design`` flavio calls and verify it at ``n_check`` more.

    Design and check points are drawn uniformly in ``box`` ((c9 lo, hi), (c10
    lo, hi)) with ``seed``; the forms in ``forms`` are tried in order, the first
    that reproduces every check point to ``tol`` (relative to the observable's
    largest magnitude) is kept. The "sqrt" form needs ``n_design >= 29``.
    ``predict_fn(points) -> (M, K)`` replaces flavio (tests, toys). Cost:
    ``n_design + n_check`` direct predictions of the whole set.
    """
    if not set(forms) <= set(FORMS):
        raise ConfigError(f"surrogate forms: unknown {sorted(set(forms) - set(FORMS))}; expected some of {list(FORMS)}")
    if forms and n_design < max({"quadratic": 6, "ratio": 11, "sqrt": 29}[f] for f in forms) + 2:
        raise ConfigError(f"surrogate n_design={n_design} is too small for forms {list(forms)}")
    lo, hi = np.asarray(box, float).T
    if not np.all(hi > lo):
        raise ConfigError(f"surrogate box {box} must have lo < hi on both axes")
    pts = lo + (hi - lo) * np.random.default_rng(seed).random((n_design + n_check, 2))
    fn = predict_fn if predict_fn is not None else (lambda p: predict(obs_set, p))
    y = np.asarray(fn(pts), float)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    m2, m4 = _monomials((pts - centre) / half, 2), _monomials((pts - centre) / half, 4)
    d, c, K = slice(0, n_design), slice(n_design, None), y.shape[1]
    num, den, root = np.full((K, 6), np.nan), np.zeros((K, 6)), np.zeros((K, 15))
    den[:, 0] = root[:, 0] = 1.0
    form, err, scale = [None] * K, np.full(K, np.inf), np.max(np.abs(y), axis=0)
    scale[scale == 0] = 1.0
    for k in range(K):
        yk = y[:, k] / scale[k]
        for f in forms:
            a, dd, rr = _fit_form(f, m2[d], m4[d], yk[d])
            with np.errstate(all="ignore"):
                model = (m2 @ a) / (m2 @ dd) / np.sqrt(m4 @ rr)
            e = float(np.max(np.abs(model[c] - yk[c]))) if np.all(np.isfinite(model)) else np.inf
            err[k] = min(err[k], e)
            if e <= tol:
                form[k], num[k], den[k], root[k], err[k] = f, a * scale[k], dd, rr, e
                break
    return Surrogate(obs_set, tuple(form), num, den, root, centre, half, err, scale, float(tol), predict_fn)


def _benchmark(argv=None) -> None:
    """``python -m kernels.observables SET.yaml [--points M]``: fit the surrogate, time it against direct flavio."""
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="python -m kernels.observables", description=_benchmark.__doc__)
    ap.add_argument("observable_set")
    ap.add_argument("--points", type=int, default=8, help="random points predicted both ways (default 8)")
    args = ap.parse_args(argv)
    obs_set, rng, clock = load_observable_set(args.observable_set), np.random.default_rng(1), time.perf_counter
    t0, sur = clock(), fit_surrogate(obs_set)
    t_fit = clock() - t0
    print(sur.report() + f"\nexact: {int(sur.exact.sum())} of {len(obs_set)} (tol {sur.tol:g}); fit {t_fit:.1f} s")
    pts, many = rng.uniform((-2.5, -1.5), (1.5, 1.5), (args.points, 2)), rng.uniform((-2.5, -1.5), (1.5, 1.5), (10**5, 2))
    t0, direct, t1 = clock(), predict(obs_set, pts), clock()
    hybrid, t2, _, t3 = sur.predict(pts), clock(), sur.closed_form(many), clock()
    per = np.array([t1 - t0, t2 - t1]) / len(pts)
    print(f"per point: direct {per[0]:.3g} s, surrogate (direct fallback) {per[1]:.3g} s, closed forms {(t3 - t2) / 1e5:.2g} s")
    print(f"speed-up: {per[0] / per[1]:.3g}x per point; a 100x100 grid: direct {1e4 * per[0]:.0f} s, "
          f"surrogate {t_fit + 1e4 * per[1]:.0f} s incl. the fit (x{1e4 * per[0] / (t_fit + 1e4 * per[1]):.3g})")
    dev = np.max(np.abs(hybrid - direct), axis=0) / np.max(np.abs(direct), axis=0)
    print(f"largest deviation from direct flavio at {len(pts)} random points: {np.max(dev):.1e} relative")


if __name__ == "__main__":
    _benchmark()

"""The chi^2 yardstick of the global fit in (C9, C10), and flavio's own likelihood as a cross-check.

With K observables, predictions O_th(c) at real shifts c = (C9_bsmumu,
C10_bsmumu), measured central values O_exp and the total covariance
Sigma = Sigma_exp + Sigma_th (Sigma_th: the SM covariance, assumed independent
of c as in flavio's ``FastLikelihood``)::

    chi2(c) = r(c)^T Sigma^-1 r(c),    r(c) = O_th(c) - O_exp.

The best fit c* minimises it; the 1 and 2 sigma regions of the two
coefficients are Delta chi2 = chi2 - chi2(c*) <= 2.30 and 6.18 (the 68.27% and
95.45% quantiles of a chi^2 with 2 degrees of freedom). The SM (c = 0) is
disfavoured by p = P(chi2_2 > chi2(0) - chi2(c*)), quoted as the two-sided
Gaussian pull Phi^-1(1 - p/2).

Hadronic nuisances of the seed study, F(q2) = a0 + a1 q2 + a2 q2^2 added to
each observable of a family at its bin centre, enter linearly:
O_th -> O_th + H a. With a Gaussian prior a ~ N(0, S), profiling a out of
chi2 + a^T S^-1 a gives exactly chi2 with Sigma -> Sigma + H S H^T
(:func:`nuisance_covariance`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from kernels.errors import ConfigError


def inverse_covariance(cov, labels=None, eps: float = 1e-10) -> np.ndarray:
    """Inverse of a covariance matrix; ConfigError naming the first entry that makes it singular.

    The check is made on the correlation matrix: the entry named is the first
    whose leading principal block has an eigenvalue below ``eps`` (a zero
    variance, or a row that is a combination of earlier ones).

    >>> inverse_covariance([[4.0, 0.0], [0.0, 0.25]])
    array([[0.25, 0.  ],
           [0.  , 4.  ]])
    >>> inverse_covariance([[1.0, 1.0], [1.0, 1.0]], labels=["R_K", "R_K*"])
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: the covariance is singular at R_K* (linearly dependent on the entries before it)
    """
    c = np.asarray(cov, dtype=float)
    c = np.atleast_2d(c)
    n = c.shape[0]
    names = list(labels) if labels is not None else [f"entry {k}" for k in range(n)]
    if c.shape != (n, n) or len(names) != n:
        raise ConfigError(f"a covariance must be square with one label per row, got shape {c.shape} and {len(names)} labels")
    bad = np.flatnonzero(~np.all(np.isfinite(c), axis=1))
    if bad.size:
        raise ConfigError(f"the covariance is not finite at {names[bad[0]]}")
    c = (c + c.T) / 2
    sd = np.sqrt(np.clip(np.diag(c), 0, None))
    zero = np.flatnonzero(sd <= 0)
    if zero.size:
        raise ConfigError(f"the covariance has zero variance at {names[zero[0]]}")
    corr = c / np.outer(sd, sd)
    try:
        chol = np.linalg.cholesky(corr)
        ok = np.min(np.diag(chol)) ** 2 > eps
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        for k in range(1, n + 1):
            if np.linalg.eigvalsh(corr[:k, :k])[0] <= eps:
                raise ConfigError(f"the covariance is singular at {names[k - 1]} (linearly dependent on the entries before it)")
        raise ConfigError("the covariance is numerically singular")
    inv_l = np.linalg.solve(chol, np.eye(n))
    return (inv_l.T @ inv_l) / np.outer(sd, sd)


def chi2(pred, central, cov_inv) -> np.ndarray:
    """r^T Sigma^-1 r for predictions of shape (..., K); returns shape (...).

    >>> chi2(np.array([[1.0, 2.0], [0.0, 0.0]]), np.zeros(2), np.diag([1.0, 0.25]))
    array([2., 0.])
    """
    r = np.asarray(pred, float) - np.asarray(central, float)
    return np.einsum("...i,ij,...j->...", r, np.asarray(cov_inv, float), r)


def grid_points(c9_axis, c10_axis) -> np.ndarray:
    """The (n9 * n10, 2) points of the grid, C9 varying slowest (row i*n10 + j is (c9[i], c10[j]))."""
    a, b = np.meshgrid(np.asarray(c9_axis, float), np.asarray(c10_axis, float), indexing="ij")
    return np.stack([a.ravel(), b.ravel()], axis=1)


def grid_chi2(predict_fn, c9_axis, c10_axis, central, cov_inv) -> np.ndarray:
    """chi2 on the grid, shape (n9, n10), from ``predict_fn(points (M, 2)) -> (M, K)``.

    >>> g = grid_chi2(lambda p: p, [0.0, 1.0], [0.0, 2.0], np.zeros(2), np.eye(2))
    >>> g
    array([[0., 4.],
           [1., 5.]])
    """
    pts = grid_points(c9_axis, c10_axis)
    return chi2(predict_fn(pts), central, cov_inv).reshape(len(c9_axis), len(c10_axis))


@dataclass(frozen=True)
class FitResult:
    """MIGRAD minimum and HESSE errors of chi2(C9, C10)."""

    c9: float
    c10: float
    chi2_min: float
    errors: tuple[float, float]
    correlation: float
    covariance: np.ndarray
    valid: bool
    nfcn: int


def minimise(predict_fn, central, cov, start=(-0.9, 0.1), labels=None, tol: float = 1e-3) -> FitResult:
    """Minimise chi2(c) with iminuit (MIGRAD, then HESSE; errordef 1 for a chi^2).

    ``predict_fn(points (M, 2)) -> (M, K)``; ``cov`` is the total covariance
    (``labels`` name its rows in a singular-covariance error). MIGRAD stops
    at an estimated distance to the minimum EDM < 0.002 ``tol`` (iminuit's
    default tol is 0.1; the tighter default puts the minimum within ~1e-3
    of its errors at a few more calls). A toy whose
    predictions are the shifts themselves has its minimum at the data:

    >>> r = minimise(lambda p: np.asarray(p) @ np.array([[1.0, 1.0], [0.0, 1.0]]),
    ...              np.array([-1.0, -0.8]), np.diag([0.01, 0.04]), start=(0.0, 0.0))
    >>> round(r.c9, 6), round(r.c10, 6), round(r.chi2_min, 9), r.valid
    (-1.0, 0.2, 0.0, True)
    >>> [round(e, 6) for e in r.errors]
    [0.1, 0.223607]
    """
    from iminuit import Minuit

    cov_inv = inverse_covariance(cov, labels)
    central = np.asarray(central, float)

    def fcn(c9, c10):
        return float(chi2(np.asarray(predict_fn(np.array([[c9, c10]])))[0], central, cov_inv))

    m = Minuit(fcn, c9=float(start[0]), c10=float(start[1]))
    m.errordef = Minuit.LEAST_SQUARES
    m.errors = (0.1, 0.1)
    m.tol = float(tol)
    m.migrad()
    m.hesse()
    c = np.array(m.covariance, dtype=float)
    return FitResult(
        float(m.values["c9"]),
        float(m.values["c10"]),
        float(m.fval),
        (float(m.errors["c9"]), float(m.errors["c10"])),
        float(c[0, 1] / np.sqrt(c[0, 0] * c[1, 1])),
        c,
        bool(m.valid),
        int(m.nfcn),
    )


def contours(c9_axis, c10_axis, chi2_grid, levels=(2.30, 6.18), chi2_min=None) -> dict[float, list[np.ndarray]]:
    """Polylines (each (N, 2) of (C9, C10)) where chi2 - chi2_min crosses each level.

    ``chi2_grid`` has shape (n9, n10) as from :func:`grid_chi2`; ``chi2_min``
    defaults to the grid minimum (pass the MIGRAD minimum when known).

    >>> x = np.linspace(-2, 2, 81)
    >>> lines = contours(x, x, x[:, None] ** 2 + x[None, :] ** 2, levels=(1.0,))
    >>> len(lines[1.0]), bool(np.allclose(np.hypot(*lines[1.0][0].T), 1.0, atol=2e-3))
    (1, True)
    """
    import contourpy

    z = np.asarray(chi2_grid, float)
    if z.shape != (len(c9_axis), len(c10_axis)):
        raise ConfigError(f"chi2 grid shape {z.shape} does not match the axes ({len(c9_axis)}, {len(c10_axis)})")
    base = float(np.nanmin(z)) if chi2_min is None else float(chi2_min)
    gen = contourpy.contour_generator(
        np.asarray(c9_axis, float), np.asarray(c10_axis, float), (z - base).T, line_type=contourpy.LineType.Separate
    )
    return {float(lv): [np.asarray(seg) for seg in gen.lines(lv)] for lv in levels}


def sm_pull(chi2_sm: float, chi2_min: float, dof: int = 2) -> float:
    """Pull of the SM in Gaussian sigma: Phi^-1(1 - p/2) with p = P(chi2_dof > chi2_sm - chi2_min).

    >>> round(sm_pull(2.30, 0.0), 2), round(sm_pull(6.18, 0.0), 2), round(sm_pull(11.83, 0.0), 2)
    (1.0, 2.0, 3.0)
    """
    from scipy import stats

    delta = max(float(chi2_sm) - float(chi2_min), 0.0)
    return float(stats.norm.isf(stats.chi2.sf(delta, dof) / 2))


#: The prior widths of (a0, a1, a2): the standard deviations of the seed study's uniform ranges
#: [-0.01, 0.01], [-1e-4, 1e-4], [-1e-5, 1e-5] (width / sqrt(12) = half-width / sqrt(3)).
NUISANCE_SIGMA = (0.01 / np.sqrt(3), 1e-4 / np.sqrt(3), 1e-5 / np.sqrt(3))


def nuisance_design(obs_set, families=None) -> tuple[np.ndarray, list[str]]:
    """H (K, 3 F) of the seed study's F(q2) = a0 + a1 q2 + a2 q2^2, and the F family names (sorted).

    Column ``3 j + i`` is a_i of family ``names[j]``; row k holds (1, q, q^2) at
    observable k's bin centre q in its family's columns, zeros elsewhere.
    ``families`` maps an observable name to a family name, or to None to leave
    it without nuisance (default: every observable name is its own family).

    >>> from kernels.observables import ObservableSet
    >>> s = ObservableSet((("P", 1.0, 3.0), ("P", 3.0, 5.0), ("R", 1.0, 6.0)), ("m",))
    >>> H, names = nuisance_design(s, families={"P": "P", "R": None})
    >>> H, names
    (array([[ 1.,  2.,  4.],
           [ 1.,  4., 16.],
           [ 0.,  0.,  0.]]), ['P'])
    """
    fam = [n if families is None else families.get(n, n) for n, _, _ in obs_set.observables]
    q = np.array([(a + b) / 2 for _, a, b in obs_set.observables])
    names = sorted({f for f in fam if f is not None})
    H = np.zeros((len(q), 3 * len(names)))
    for k, f in enumerate(fam):
        if f is not None:
            j = 3 * names.index(f)
            H[k, j : j + 3] = [1.0, q[k], q[k] ** 2]
    return H, names


def nuisance_covariance(obs_set, sigma=NUISANCE_SIGMA, families=None) -> np.ndarray:
    """H S H^T: the covariance that profiling the seed study's F(q2) = a0 + a1 q2 + a2 q2^2 adds.

    Each family (default: the observable name, e.g. all bins of <P5p>) has its
    own (a0, a1, a2) with independent Gaussian priors of widths ``sigma``
    (default :data:`NUISANCE_SIGMA`: the standard deviations of the seed study's uniform ranges
    [-0.01, 0.01], [-1e-4, 1e-4], [-1e-5, 1e-5]), evaluated at each bin centre
    (:func:`nuisance_design`). ``families`` maps an observable name to a family name, or to None to leave
    it without nuisance (e.g. branching ratios, whose size is ~1e-8).

    >>> from kernels.observables import ObservableSet
    >>> s = ObservableSet((("P", 1.0, 3.0), ("P", 3.0, 5.0), ("R", 1.0, 6.0)), ("m",))
    >>> nuisance_covariance(s, sigma=(1.0, 0.0, 0.0), families={"P": "P", "R": None})
    array([[1., 1., 0.],
           [1., 1., 0.],
           [0., 0., 0.]])
    """
    H, names = nuisance_design(obs_set, families)
    S = np.diag(np.tile(np.asarray(sigma, float) ** 2, len(names)))
    return H @ S @ H.T


def flavio_likelihood_chi2(
    obs_set, points, theory_cov=None, *, experimental=None, n: int = 200, n_exp: int = 5000, seed: int = 0, name=None
) -> np.ndarray:
    """-2 log L(c) (delta=True) of flavio's ``FastLikelihood`` on the same observables and measurements, shape (M,).

    ``obs_set`` is an ``observables.ObservableSet`` (its ``wilson(c)`` sets the shifts).

    ``theory_cov`` (K, K), e.g. from ``observables.theory_covariance``, is
    loaded into the likelihood's ``sm_covariance`` so both sides use the same
    Sigma_th; None lets flavio draw its own with ``n`` draws. flavio builds
    Sigma_exp and the central values from ``n_exp`` random draws of the
    measurements (numpy's global seed set to ``seed`` around it): those differ
    from ``observables.experimental`` (exact moments) by Monte Carlo noise, and
    the draws also depend on PYTHONHASHSEED (flavio walks the measurements in
    set order). ``experimental=(central, cov)`` loads ours instead, which
    leaves flavio's likelihood machinery (predictions, ordering, Gaussian) as
    the only difference. With delta=True flavio subtracts log L at the central
    values, so -2 log L is the chi^2 itself: no constant offset is expected.
    """
    import flavio
    from flavio.statistics.likelihood import FastLikelihood

    obs = list(obs_set.observables)
    pts = np.atleast_2d(np.asarray(points, float))
    state = np.random.get_state()
    with warnings.catch_warnings():
        # we marginalise over the measured observables we do not fit (FL, S3, ...), as flavio does: no warning needed
        warnings.filterwarnings("ignore", message=".*of the measurements in the likelihood constrain both")
        warnings.filterwarnings("ignore", message="The QCDF corrections should not be trusted")
        try:
            np.random.seed(int(seed))
            fl = FastLikelihood(name or f"wcscan {obs_set.key[:16]}", observables=obs, include_measurements=list(obs_set.measurements))
            if experimental is not None:
                central, cov = (np.asarray(x, float) for x in experimental)
                fl.exp_covariance.load_dict({"observables": obs, "central": central, "covariance": cov})
            if theory_cov is not None:
                fl.sm_covariance.load_dict({"observables": obs, "covariance": np.asarray(theory_cov, float)})
                fl.make_measurement(N=100, Nexp=int(n_exp), threads=1)  # N=100: flavio's default, so it keeps ours silently
            else:
                fl.make_measurement(N=int(n), Nexp=int(n_exp), threads=1)
        finally:
            np.random.set_state(state)
        par = flavio.default_parameters.get_central_all()
        out = np.empty(len(pts))
        for i, c in enumerate(pts):
            out[i] = -2 * fl.log_likelihood(par, obs_set.wilson(c), delta=True)
    return out

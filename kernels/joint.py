r"""The simulator's joint quantities: exact per-event scores and likelihood ratios from the true kinematics.

For a signal event of true kinematics z, the pdf at shifts d is a ratio of quadratics
(:mod:`kernels.likelihood`),

.. math::

    p(z \mid d) = \frac{\epsilon(z)\, G(z; d)}{\Gamma_\epsilon(d)},\qquad
    G(z; d) = a(z) \cdot m(d),\quad \Gamma_\epsilon(d) = \Gamma_p \cdot m(d),

with the projections ``a(z)`` (:func:`kernels.likelihood.project`), the monomials
``m(d) = (1, d, d^2)`` for one coefficient, and ``Gamma_p`` the integral of the
true-level efficiency times G (:func:`normalisation`; 1 at the generator level).
Everything is exact and event by event:

- the **joint score** (:func:`joint_score`)

  .. math::

      t(z; d) = \partial_d \ln p(z \mid d)
              = \frac{a \cdot \partial_d m}{a \cdot m} - \frac{\Gamma_p \cdot \partial_d m}{\Gamma_p \cdot m};

- the **joint log-ratio** (:func:`joint_log_ratio`)
  ``ln p(z|d0) / p(z|d1) = ln G(z;d0)/G(z;d1) - ln Gamma(d0)/Gamma(d1)``.

**Detector level.** The observed event x is z smeared; the acceptance eps and
the loss of smeared events at the q2 window edges, kappa
(:meth:`kernels.detector.DetectorConfig.true_efficiency`), act on z and do not
depend on d, so they drop out of ``a`` and enter only through ``Gamma_p``: the
joint score gains the event-independent term ``-d/dd ln int eps kappa p`` against
the generator level. Leave it out and every estimate built on it is biased
(physics.md, "Pitfall: the acceptance changes the normalisation"). Background
events do not depend on d: their joint score and log-ratio are 0. Regressing t on
x with a squared loss learns ``E[t | x] = d/dd ln p(x|d)``, the score of the
observed event (Brehmer, Cranmer, Louppe and Pavez 2018).

:func:`sample_joint` draws events with d spread over a range, each with its truth and joint score.

>>> import numpy as np
>>> a = np.array([[1.0, 0.5, 0.25]])                     # G(z; d) = 1 + d/2 + d^2/4
>>> norm = np.array([1.0, 0.0, 0.5])                     # Gamma(d) = 1 + d^2/2
>>> float(score_from_projections(a, np.array([[0.0]]), norm)[0, 0])   # (1/2) / 1 - 0 / 1
0.5
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from kernels import detector as _detector
from kernels import likelihood
from kernels.errors import ConfigError
from kernels.theory import JTable, monomial_gradient, monomials, n_monomials

__all__ = [
    "JointSample",
    "true_efficiency",
    "normalisation",
    "log_normalisation_gradient",
    "score_from_projections",
    "joint_score",
    "joint_log_ratio",
    "sample_joint",
    "ReferenceSample",
    "joint_quadratic",
    "reference_sample",
    "JOINT_SEED_OFFSET",
    "joint_seed",
    "scores_at",
    "voxel_score_sums", "voxel_sums",
]

#: Offset of the stream id in the seeds of the simulator-assisted draws of a run:
#: ``(seed, 4 * 10**6 + stream)``, apart from every stream of :mod:`kernels.bootstrap`
#: (generator chunks ``(seed, point, c)``, images ``10**6``, evaluation sets ``2 * 10**6``,
#: index draws ``3 * 10**6``).
JOINT_SEED_OFFSET = 4 * 10**6


def joint_seed(seed: int, stream: int) -> tuple[int, int]:
    """Seed entropy for :func:`sample_joint` / :func:`reference_sample` draws: ``(seed, 4 * 10**6 + stream)``.

    E.g. stream 0 for the training events, 1 for validation, 2 for the reference sample.

    >>> joint_seed(5, 2)
    (5, 4000002)
    """
    if int(seed) != seed or int(stream) != stream or seed < 0 or not 0 <= stream < 10**6:
        raise ConfigError(f"seed must be an integer >= 0 and stream in [0, 10**6), got {seed!r}, {stream!r}")
    return int(seed), JOINT_SEED_OFFSET + int(stream)

Efficiency = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def true_efficiency(level: str, windows, detector: _detector.DetectorConfig | None = None) -> Efficiency | None:
    """The probability that a signal event of true kinematics z is kept at ``level``; None at ``gen``.

    At ``det`` and ``det_bkg``: the acceptance times the q2 window loss of the smearing.
    """
    if level not in _detector.LEVELS:
        raise ConfigError(f"unknown level {level!r}; expected one of {', '.join(_detector.LEVELS)}")
    if level == "gen":
        return None
    det = detector or _detector.DetectorConfig()
    det.check(windows)
    return det.true_efficiency(windows)


def normalisation(table: JTable, efficiency: Efficiency | None = None) -> np.ndarray:
    """``Gamma_p`` with ``Gamma(d) = m(d) @ Gamma_p = int eps(z) G(z; d) dz`` (``efficiency`` None: eps = 1)."""
    return likelihood.normalisation(table, likelihood.PdfModel(efficiency=efficiency))


def _shifts(table: JTable, d, n: int | None = None) -> np.ndarray:
    """Per-event shifts ``(n, n_shifts)`` from a scalar, ``(n_shifts,)``, ``(n,)`` (one coefficient) or ``(n, n_shifts)``."""
    k = table.n_shifts
    arr = np.asarray(d, dtype=np.float64)
    if arr.ndim == 0 or (arr.ndim == 1 and n is not None and arr.shape[0] == k and k != n):
        arr = np.broadcast_to(np.atleast_1d(arr), (n if n is not None else 1, k))
    elif arr.ndim == 1 and k == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != k or (n is not None and arr.shape[0] not in (1, n)):
        raise ConfigError(f"shifts must be a scalar, ({k},), (n,) or (n, {k}) for {n} events, got {np.shape(d)}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("shifts must be finite")
    return np.broadcast_to(arr, (n if n is not None else arr.shape[0], k))


def _gradients(d: np.ndarray) -> np.ndarray:
    """``dm_p / dd_a`` at every row of ``d`` (E, n) -> (E, n, P); linear in d, built from monomial_gradient."""
    n = d.shape[1]
    g0 = monomial_gradient(np.zeros(n))
    slope = np.stack([monomial_gradient(e) - g0 for e in np.eye(n)])  # (n_b, n_a, P)
    return g0[None] + np.tensordot(d, slope, axes=(1, 0))


def log_normalisation_gradient(table: JTable, d, norm: np.ndarray) -> np.ndarray:
    """``d/dd ln Gamma(d)`` at shifts ``d`` (rows of ``(n, n_shifts)``, or one point) -> ``(n, n_shifts)``."""
    dd = _shifts(table, d)
    return (_gradients(dd) @ norm) / (monomials(dd) @ norm)[:, None]


def score_from_projections(a: np.ndarray, d: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Joint scores ``(E, n_shifts)`` from projections ``a`` (E, P), per-event shifts ``d`` (E, n_shifts), ``Gamma_p``."""
    m = monomials(d)
    dm = _gradients(d)
    g = np.einsum("ep,ep->e", a, m)
    dg = np.einsum("ep,eap->ea", a, dm)
    return dg / g[:, None] - (dm @ norm) / (m @ norm)[:, None]


def _events(true_events) -> np.ndarray:
    z = np.asarray(true_events, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != 4:
        raise ConfigError(f"true events must have shape (n, 4) (q2, cos_theta_mu, cos_theta_k, chi), got {z.shape}")
    return z


def _signal(is_signal, n: int) -> np.ndarray:
    if is_signal is None:
        return np.ones(n, dtype=bool)
    s = np.asarray(is_signal, dtype=bool)
    if s.shape != (n,):
        raise ConfigError(f"is_signal must have shape ({n},), got {s.shape}")
    return s


def joint_score(table: JTable, true_events, d, norm: np.ndarray | None = None, is_signal=None) -> np.ndarray:
    """The exact joint score ``t(z; d)`` of each event, ``(n,)`` for one coefficient else ``(n, n_shifts)``.

    ``true_events`` (n, 4): the true kinematics z; ``d``: one point or per-event shifts;
    ``norm``: ``Gamma_p`` of the level (:func:`normalisation` with :func:`true_efficiency`;
    None: the generator level); ``is_signal``: background events (False) get 0.
    """
    z = _events(true_events)
    dd = _shifts(table, d, z.shape[0])
    gamma = table.rate_integral() if norm is None else np.asarray(norm, dtype=np.float64)
    sig = _signal(is_signal, z.shape[0])
    out = np.zeros(dd.shape)
    if sig.any():
        out[sig] = score_from_projections(likelihood.project(table, z[sig]), dd[sig], gamma)
    return out[:, 0] if table.n_shifts == 1 else out


def scores_at(table: JTable, true_events, points, norm: np.ndarray | None = None, is_signal=None) -> np.ndarray:
    """Joint scores ``(n, K)`` of each event at each of the fixed shifts ``points`` (one coefficient): one projection
    of the events, then the K scores (each :func:`joint_score` at its point); 0 for background events."""
    if table.n_shifts != 1:
        raise ConfigError("scores_at takes one coefficient; the table scans several")
    z = _events(true_events)
    pts = np.asarray(points, dtype=np.float64).reshape(-1)
    gamma = table.rate_integral() if norm is None else np.asarray(norm, dtype=np.float64)
    sig = _signal(is_signal, z.shape[0])
    out = np.zeros((z.shape[0], pts.size))
    if sig.any():
        a = likelihood.project(table, z[sig])
        m, dm = monomials(pts[:, None]), _gradients(pts[:, None])[:, 0]  # (K, P) each
        out[sig] = (a @ dm.T) / (a @ m.T) - (dm @ gamma) / (m @ gamma)
    return out


def voxel_score_sums(table: JTable, true_events, observed, points, bins: int, norm: np.ndarray | None = None,
                     is_signal=None) -> np.ndarray:
    """The sums of the joint scores at ``points`` over the events of each voxel, ``(K, B, B, B)`` float32.

    Events are binned by their ``observed`` values ``(n, 4)`` exactly as :func:`kernels.voxels.voxelize`
    bins them (the smeared event at detector level); the scores are those of their truth. Regressed on
    the voxel image, these give the image's own score at each point (:mod:`models.resnet_score`).
    """
    return voxel_sums(scores_at(table, true_events, points, norm, is_signal), observed, bins)


def voxel_sums(t: np.ndarray, observed, bins: int) -> np.ndarray:
    """Per-event values ``t`` ``(n, K)`` summed over the voxels of the events' ``observed`` values: ``(K, B, B, B)``."""
    from kernels.voxels import bin_index
    x = np.asarray(observed)
    ix = bin_index(x[:, 1], x[:, 2], x[:, 3], bins)
    flat = (ix[0] * bins + ix[1]) * bins + ix[2]
    size = bins**3
    out = np.stack([np.bincount(flat, weights=t[:, k], minlength=size) for k in range(t.shape[1])])
    return out.reshape(t.shape[1], bins, bins, bins).astype(np.float32)


def joint_log_ratio(table: JTable, true_events, d0, d1, norm: np.ndarray | None = None, is_signal=None) -> np.ndarray:
    """``ln p(z|d0) / p(z|d1)`` of each event ``(n,)``: ``ln G(z;d0)/G(z;d1) - ln Gamma(d0)/Gamma(d1)``; 0 for background."""
    z = _events(true_events)
    m0 = monomials(_shifts(table, d0, z.shape[0]))
    m1 = monomials(_shifts(table, d1, z.shape[0]))
    gamma = table.rate_integral() if norm is None else np.asarray(norm, dtype=np.float64)
    sig = _signal(is_signal, z.shape[0])
    out = np.zeros(z.shape[0])
    if sig.any():
        a = likelihood.project(table, z[sig])
        g0 = np.einsum("ep,ep->e", a, m0[sig])
        g1 = np.einsum("ep,ep->e", a, m1[sig])
        out[sig] = np.log(g0 / g1) - np.log((m0[sig] @ gamma) / (m1[sig] @ gamma))
    return out


class JointSample(NamedTuple):
    """Training events with their simulator truth; all arrays have n rows.

    ``events`` (n, 4) float32: what the network sees (smeared at detector level);
    ``truth`` (n, 4) float32: the true kinematics z; ``shifts`` (n,) float64: the delta C9
    each event was drawn at; ``is_signal`` (n,) bool; ``score`` (n,) float64: the joint
    score ``t(z; d)`` at the event's own d (0 for background).
    """

    events: np.ndarray
    truth: np.ndarray
    shifts: np.ndarray
    is_signal: np.ndarray
    score: np.ndarray


def _mixture_table(table: JTable, cdf: np.ndarray) -> JTable:
    """A one-point table whose J is the prior mixture ``int pi(d) J(d) / Gamma(d) dd`` (at shift 0)."""
    w = cdf[-1]  # (P,): int m_p(d) / Gamma(d) dd over the range
    coef = np.zeros_like(table.coef)
    coef[0] = np.tensordot(w, table.coef, axes=(0, 0))
    return replace(table, coef=coef, key=f"{table.key}-mixture-{hashlib.sha256(w.tobytes()).hexdigest()[:16]}")


def _d_cdf(table: JTable, lo: float, hi: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``d_k`` (K,) and ``C_p(d_k) = int_lo^d_k m_p(d) / Gamma(d) dd`` (K, P), by a fine trapezoid."""
    fine = np.linspace(lo, hi, (nodes - 1) * 16 + 1)
    m = monomials(fine[:, None])
    f = m / (m @ table.rate_integral())[:, None]
    c = np.concatenate([np.zeros((1, f.shape[1])), np.cumsum((f[1:] + f[:-1]) / 2, axis=0) * (fine[1] - fine[0])])
    return fine[::16], c[::16]


def _draw_d(a: np.ndarray, nodes: np.ndarray, cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Invert ``F(d) = a . C(d) / a . C(hi)`` at ``u`` for each event: bisection over the nodes, then linear."""
    total = a @ cdf[-1]
    target = u * total
    lo = np.zeros(a.shape[0], dtype=np.intp)
    hi = np.full(a.shape[0], nodes.size - 1, dtype=np.intp)
    while np.any(hi - lo > 1):  # log2(K) vectorised steps
        mid = (lo + hi) // 2
        below = np.einsum("ep,ep->e", a, cdf[mid]) <= target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    f_lo = np.einsum("ep,ep->e", a, cdf[lo])
    f_hi = np.einsum("ep,ep->e", a, cdf[hi])
    frac = np.clip((target - f_lo) / np.where(f_hi > f_lo, f_hi - f_lo, 1.0), 0.0, 1.0)
    return nodes[lo] + frac * (nodes[hi] - nodes[lo])


def sample_joint(table: JTable, d_range: tuple[float, float], n: int, seed, level: str = "gen",
                 detector: _detector.DetectorConfig | None = None, norm: np.ndarray | None = None,
                 d_nodes: int = 4097) -> JointSample:
    r"""``n`` events with delta C9 drawn continuously over ``d_range``, with truth and joint scores.

    Exact joint draws of (d, z) from ``pi(d) p(z|d)``, pi uniform on the range, with one
    sampler setup: z is drawn from the prior mixture ``p_mix(z) = int pi(d) G(z;d)/Gamma(d) dd``
    (the rate of the J table ``int pi J(d)/Gamma(d) dd``), then d from its conditional
    ``pi(d) G(z;d) / Gamma(d) / p_mix(z)``, by inverting ``a(z) . C(d)`` with
    ``C(d) = int m(d')/Gamma(d') dd'`` tabulated on ``d_nodes`` nodes. At detector level the
    acceptance, smearing and window loss then act on z (:func:`kernels.detector.sample_level_truth`
    of the mixture), so given d the events follow the detector-level pdf exactly, and d's
    marginal becomes ``pi(d) Gamma_eps(d) / Gamma(d)`` (the acceptance varies a little with d);
    background events get d's drawn from the signal events' ones. Seed entropy
    ``(*seed, 0)`` for the events, ``(*seed, 1)`` for the d draws. One coefficient only.
    ``norm``: the level's ``Gamma_p`` for the joint score (computed when None).
    """
    lo, hi = (float(v) for v in d_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ConfigError(f"d_range must be two finite values LO < HI, got {d_range!r}")
    if table.n_shifts != 1:
        raise ConfigError("sample_joint draws one coefficient; the table scans several")
    if int(n) != n or n < 1:
        raise ConfigError(f"number of events must be a positive integer, got {n}")
    seed = tuple(int(s) for s in np.atleast_1d(np.asarray(seed, dtype=object)))
    gamma = normalisation(table, true_efficiency(level, table.windows, detector)) if norm is None else norm
    nodes, cdf = _d_cdf(table, lo, hi, d_nodes)
    s = _detector.sample_level_truth(_mixture_table(table, cdf), [0.0], int(n), (*seed, 0), level, detector)
    truth = np.ascontiguousarray(s.truth.T)
    rng = np.random.default_rng([*seed, 1])
    u = rng.random(truth.shape[0])
    d = np.empty(truth.shape[0])
    sig = s.is_signal
    a = likelihood.project(table, truth[sig])
    d[sig] = _draw_d(a, nodes, cdf, u[sig])
    if (~sig).any():
        d[~sig] = rng.choice(d[sig], size=int((~sig).sum())) if sig.any() else lo + (hi - lo) * u[~sig]
    score = np.zeros(truth.shape[0])
    score[sig] = score_from_projections(a, d[sig, None], gamma)[:, 0]
    return JointSample(np.ascontiguousarray(s.events.T), truth, d, sig, score)


def joint_quadratic(table: JTable, true_events, d_ref: float = 0.0, norm: np.ndarray | None = None,
                    is_signal=None) -> tuple[np.ndarray, np.ndarray]:
    r"""The joint ratio's quadratic per event, for events drawn at ``d_ref``, and its exact mean.

    With ``delta = d - d_ref``, a signal event has
    ``q*(z, d) = G(z; d) / G(z; d_ref) = 1 + c1 delta + c2 delta^2`` and a background event
    ``q* = Gamma(d) / Gamma(d_ref)`` (its numerator is ``f B(x) Gamma(d)``). Over events drawn at
    ``d_ref``, ``E[q*(z, d)] = Gamma(d) / Gamma(d_ref)`` exactly, and
    ``E[q*(z, d) | x] = p(x|d) / p(x|d_ref) * Gamma(d) / Gamma(d_ref)``: the quadratic a network
    learns for the observed x. So q* is a control variate for the calibration of the network's
    normaliser (``models.event_posterior``). Returns ``(n, 2)`` coefficients (c1, c2) and their
    exact mean ``(2,)`` (the coefficients of ``Gamma(d) / Gamma(d_ref)``). One coefficient only.
    """
    if table.n_shifts != 1:
        raise ConfigError("joint_quadratic handles one coefficient; the table scans several")
    z = _events(true_events)
    gamma = table.rate_integral() if norm is None else np.asarray(norm, dtype=np.float64)
    r = float(d_ref)

    def coefficients(c: np.ndarray) -> np.ndarray:  # (..., 3) in powers of d -> (..., 2) in powers of delta
        at = c[..., 0] + c[..., 1] * r + c[..., 2] * r * r
        return np.stack([(c[..., 1] + 2 * c[..., 2] * r) / at, c[..., 2] / at], axis=-1)

    mean = coefficients(gamma)
    sig = _signal(is_signal, z.shape[0])
    out = np.broadcast_to(mean, (z.shape[0], 2)).copy()
    if sig.any():
        out[sig] = coefficients(likelihood.project(table, z[sig]))
    return out, mean


class ReferenceSample(NamedTuple):
    """Reference events drawn at ``d_ref`` for a calibration: ``events`` (M, 4) float32, ``control``
    (M, 2) and ``control_mean`` (2,) from :func:`joint_quadratic`."""

    events: np.ndarray
    control: np.ndarray
    control_mean: np.ndarray


def reference_sample(table: JTable, n: int, seed, level: str = "gen", detector: _detector.DetectorConfig | None = None,
                     d_ref: float = 0.0, norm: np.ndarray | None = None, chunk: int = 1 << 20) -> ReferenceSample:
    """``n`` events at ``d_ref`` and ``level`` with their control variates, in chunks of ``chunk`` (seed ``(*seed, c)``).

    ``norm``: the level's ``Gamma_p`` (computed when None).
    """
    if int(n) != n or n < 2:
        raise ConfigError(f"a reference sample needs at least 2 events, got {n}")
    gamma = normalisation(table, true_efficiency(level, table.windows, detector)) if norm is None else norm
    return _reference(table, n, seed, level, detector, d_ref, chunk, (2,),
                      lambda z, sig: joint_quadratic(table, z, d_ref, gamma, sig))


def _reference_chunks(table: JTable, n: int, seed, level, detector, d_ref: float, chunk: int, control):
    """Events at ``d_ref`` in chunks of ``chunk`` (chunk c from seed ``(*seed, c)``), each a :class:`ReferenceSample`
    with ``control(truth, is_signal) -> (values, mean)``."""
    seed = tuple(int(s) for s in np.atleast_1d(np.asarray(seed, dtype=object)))
    for c, a in enumerate(range(0, int(n), chunk)):
        s = _detector.sample_level_truth(table, [d_ref], min(chunk, int(n) - a), (*seed, c), level, detector)
        yield ReferenceSample(np.ascontiguousarray(s.events.T, dtype=np.float32), *control(s.truth.T, s.is_signal))


def _reference(table: JTable, n: int, seed, level, detector, d_ref: float, chunk: int, shape: tuple, control):
    """:func:`_reference_chunks` gathered into one :class:`ReferenceSample`."""
    events = np.empty((int(n), 4), dtype=np.float32)
    values = np.empty((int(n), *shape))
    mean, a = None, 0
    for part in _reference_chunks(table, n, seed, level, detector, d_ref, chunk, control):
        m = part.events.shape[0]
        events[a : a + m], values[a : a + m], mean = part
        a += m
    return ReferenceSample(events, values, mean)

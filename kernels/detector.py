r"""Detector and background levels: a parametric toy, every number in :class:`DetectorConfig`.

No Geant4 here (``physics.md``, "Detector level and background"):

- **acceptance** ``eps(q2, cl, ck, chi) = s (1 - a_mu cl^2) (1 - a_k ((1 + ck)/2)^2)
  (1 + b_q (q2 - q_ref)) (1 + a_chi cos 2 chi)``: smooth, falling toward
  |cos theta_mu| -> 1 and cos theta_K -> 1; the defaults average about 0.37 over
  SM signal in [1.1, 6.0];
- **resolution**: Gaussian smearing of each variable, angles folded back into
  range (cosines reflected at +-1, chi modulo 2 pi), events leaving the q2
  windows dropped;
- **background**: combinatorial, ``B(x) ∝ exp(-lambda q2) (1 + c_mu cl^2) (1 + c_k ck)``
  and flat in chi, a fraction ``bkg_fraction`` of each ``det_bkg`` sample,
  flagged by ``is_signal``.

The likelihood (:mod:`kernels.likelihood`) includes the acceptance in the pdf
and its normalisation, and the background as a second component. Of the
resolution it keeps one effect, the loss at the q2 window edges: smeared events
leave the windows and none come in from outside (the generator has none there),
so near an edge the observed density is ``eps G kappa`` with ``kappa`` of the
observed q2, to first order in ``sigma_q2`` (:meth:`DetectorConfig.window_efficiency`).
Without it a fit that also profiles the form factors reads the edge's missing
events as a shift of the q2 shape, and is biased (``README``, the detector level
with hadronic uncertainties). The rest of the resolution it neglects: small
against the variation of the pdf.

>>> DetectorConfig().check(((1.1, 6.0),))
>>> DetectorConfig(efficiency_scale=2.0).check(((1.1, 6.0),))
Traceback (most recent call last):
...
kernels.errors.ConfigError: detector acceptance reaches 2.26 > 1 in the q2 windows: lower efficiency_scale
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from kernels import sampler
from kernels.errors import ConfigError
from kernels.theory import JTable

LEVELS = ("gen", "det", "det_bkg")
Q2_REF = 3.5
"""GeV^2: the pivot of the acceptance's q2 slope."""


@dataclass(frozen=True)
class DetectorConfig:
    """Every number of the detector and background toy (logged in manifests and runs)."""

    efficiency_scale: float = 0.59
    acc_cos_mu: float = 0.6
    acc_cos_k: float = 0.7
    acc_q2_slope: float = 0.03
    acc_cos_2chi: float = 0.05
    sigma_q2: float = 0.05
    sigma_cos_mu: float = 0.005
    sigma_cos_k: float = 0.02
    sigma_chi: float = 0.015
    bkg_fraction: float = 0.44
    bkg_q2_slope: float = 0.3
    bkg_cos_mu2: float = 0.2
    bkg_cos_k: float = -0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> DetectorConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown detector setting(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**{k: float(v) for k, v in d.items()})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"detector settings must be numbers: {err}") from None

    def check(self, windows) -> None:
        """Refuse settings that make the acceptance leave [0, 1] or a pdf negative."""
        for f in fields(self):
            if not np.isfinite(getattr(self, f.name)):
                raise ConfigError(f"detector setting {f.name} must be finite")
        lo = min(w[0] for w in windows)
        hi = max(w[1] for w in windows)
        q_fac = [1 + self.acc_q2_slope * (q - Q2_REF) for q in (lo, hi)]
        if not (0 <= self.acc_cos_mu <= 1 and 0 <= self.acc_cos_k <= 1 and abs(self.acc_cos_2chi) < 1 and min(q_fac) > 0):
            raise ConfigError(
                "detector acceptance must stay positive: need 0 <= acc_cos_mu, acc_cos_k <= 1, "
                "|acc_cos_2chi| < 1 and 1 + acc_q2_slope (q2 - 3.5) > 0 in the windows"
            )
        top = self.efficiency_scale * max(q_fac) * (1 + abs(self.acc_cos_2chi))
        if top > 1 or self.efficiency_scale <= 0:
            raise ConfigError(f"detector acceptance reaches {top:.3g} > 1 in the q2 windows: lower efficiency_scale")
        if not (0 <= self.bkg_fraction < 1):
            raise ConfigError(f"bkg_fraction must be in [0, 1), got {self.bkg_fraction}")
        if self.bkg_cos_mu2 <= -1 or abs(self.bkg_cos_k) > 1:
            raise ConfigError("background shape must stay positive: need bkg_cos_mu2 > -1 and |bkg_cos_k| <= 1")
        for name in ("sigma_q2", "sigma_cos_mu", "sigma_cos_k", "sigma_chi"):
            if getattr(self, name) < 0:
                raise ConfigError(f"detector resolution {name} must be >= 0")

    # --- acceptance ------------------------------------------------------------------

    def efficiency(self, q2, cos_l, cos_k, chi):
        """The acceptance at each event (vectorised; any float dtype)."""
        ck1 = (1 + cos_k) / 2
        return (
            self.efficiency_scale
            * (1 - self.acc_cos_mu * cos_l * cos_l)
            * (1 - self.acc_cos_k * ck1 * ck1)
            * (1 + self.acc_q2_slope * (q2 - Q2_REF))
            * (1 + self.acc_cos_2chi * np.cos(2 * chi))
        )

    # --- background ------------------------------------------------------------------

    def _q2_norm(self, windows) -> float:
        lam = self.bkg_q2_slope
        if lam == 0:
            return float(sum(hi - lo for lo, hi in windows))
        return float(sum((np.exp(-lam * lo) - np.exp(-lam * hi)) / lam for lo, hi in windows))

    def background_pdf(self, windows):
        """The normalised background density B(q2, cl, ck, chi) over the windows x angles."""
        zq = self._q2_norm(windows)
        zl = 2 + 2 * self.bkg_cos_mu2 / 3
        lam, cm, ckc = self.bkg_q2_slope, self.bkg_cos_mu2, self.bkg_cos_k

        def pdf(q2, cos_l, cos_k, chi):
            return np.exp(-lam * q2) / zq * (1 + cm * cos_l * cos_l) / zl * (1 + ckc * cos_k) / 2 / (2 * np.pi) + 0 * chi

        return pdf

    def sample_background(self, windows, n: int, rng: np.random.Generator) -> np.ndarray:
        """n background events, (4, n) float32, drawn exactly (inverse CDFs and one accept-reject)."""
        lam = self.bkg_q2_slope
        w = np.array([(np.exp(-lam * lo) - np.exp(-lam * hi)) / lam if lam else hi - lo for lo, hi in windows])
        which = np.minimum(np.searchsorted(np.cumsum(w) / w.sum(), rng.random(n), side="right"), len(w) - 1)
        lo = np.array([x[0] for x in windows])[which]
        hi = np.array([x[1] for x in windows])[which]
        u = rng.random(n)
        if lam:
            q2 = -np.log(np.exp(-lam * lo) - u * (np.exp(-lam * lo) - np.exp(-lam * hi))) / lam
        else:
            q2 = lo + u * (hi - lo)
        # cos_mu ~ 1 + c x^2 by accept-reject under its maximum.
        cl = np.empty(n)
        todo = np.arange(n)
        top = 1 + max(self.bkg_cos_mu2, 0.0)
        while todo.size:
            x = 2 * rng.random(todo.size) - 1
            ok = rng.random(todo.size) * top < 1 + self.bkg_cos_mu2 * x * x
            cl[todo[ok]] = x[ok]
            todo = todo[~ok]
        b = self.bkg_cos_k
        u = rng.random(n)
        ck = 2 * u - 1 if b == 0 else (-1 + np.sqrt((1 - b) ** 2 + 4 * b * u)) / b
        chi = rng.random(n) * 2 * np.pi
        return np.stack([q2, cl, np.clip(ck, -1, 1), chi]).astype(np.float32)

    def pdf_model(self, level: str, windows):
        """The likelihood's :class:`~kernels.likelihood.PdfModel` at ``level``."""
        from kernels.likelihood import GEN, PdfModel

        if level not in LEVELS:
            raise ConfigError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
        if level == "gen":
            return GEN
        self.check(windows)
        # the acceptance times the window edges' loss (module docstring), the loss also named on its own
        edges = dict(efficiency=self.true_efficiency(windows), q2_factor=self.window_efficiency(windows))
        if level == "det":
            return PdfModel(**edges)
        return PdfModel(**edges, background=self.background_pdf(windows), bkg_fraction=self.bkg_fraction)

    # --- resolution ------------------------------------------------------------------

    def smear(self, ev: np.ndarray, rng: np.random.Generator, windows, return_truth: bool = False):
        """Gaussian smearing, angles folded back into range, events leaving the windows dropped.

        ``return_truth=True`` also returns the true events ``ev[:, kept]`` (same random draws,
        so the smeared events are the same bytes either way).
        """
        sig = np.array([self.sigma_q2, self.sigma_cos_mu, self.sigma_cos_k, self.sigma_chi])[:, None]
        x = ev.astype(np.float64) + sig * rng.standard_normal(ev.shape)
        for i in (1, 2):  # reflect the cosines at +-1
            c = x[i]
            c = np.where(c > 1, 2 - c, c)
            x[i] = np.where(c < -1, -2 - c, c)
        x[3] = np.mod(x[3], 2 * np.pi)
        keep = np.zeros(x.shape[1], dtype=bool)
        for lo, hi in windows:
            keep |= (x[0] >= lo) & (x[0] <= hi)
        out = x[:, keep].astype(np.float32)
        out[3] = np.minimum(out[3], sampler.CHI_MAX)
        return (out, ev[:, keep]) if return_truth else out

    def window_efficiency(self, windows):
        r"""``kappa(q2)``: the probability that the q2 smearing keeps an event of true q2 in the windows.

        ``kappa = sum_w [Phi((hi_w - q2) / sigma_q2) - Phi((lo_w - q2) / sigma_q2)]``. Smeared
        events that leave the windows are dropped, so this is a true-level efficiency like the
        acceptance: it enters the normalisation of the detector-level pdf (and the joint score's
        ``-d/dd ln int eps kappa p``). The angles are folded back, never lost.
        """
        from scipy.special import ndtr

        s = self.sigma_q2

        def kappa(q2):
            q2 = np.asarray(q2, dtype=np.float64)
            if s == 0:
                return sum(((q2 >= lo) & (q2 <= hi)).astype(np.float64) for lo, hi in windows)
            return sum(ndtr((hi - q2) / s) - ndtr((lo - q2) / s) for lo, hi in windows)

        return kappa

    def true_efficiency(self, windows):
        """``eps(z) kappa(q2)``: the probability that a signal event of true kinematics z is kept.

        The efficiency of :func:`sample_level`'s signal at the true level: acceptance, then
        the q2 smearing's loss at the window edges (:meth:`window_efficiency`).
        """
        kappa = self.window_efficiency(windows)

        def eff(q2, cos_l, cos_k, chi):
            return self.efficiency(q2, cos_l, cos_k, chi) * kappa(q2)

        return eff


def _det_signal(table: JTable, shifts, n: int, seed: tuple, det: DetectorConfig, return_truth: bool = False):
    """n signal events after acceptance and resolution, (4, n) float32 (and their true events, if asked)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed, 1])))
    parts, truths, have, r = [], [], 0, 0
    while have < n:
        # Ask for enough candidates for the remainder at the acceptance's lower estimate.
        m = int((n - have) / 0.3) + 1000
        ev = sampler.sample_array(table, shifts, m, (*seed, 2, r))
        acc = rng.random(m) < det.efficiency(*(v.astype(np.float64) for v in ev))
        ev, true = det.smear(ev[:, acc], rng, table.windows, return_truth=True)
        parts.append(ev)
        truths.append(true)
        have += ev.shape[1]
        r += 1
    out = np.concatenate(parts, axis=1)[:, :n]
    return (out, np.concatenate(truths, axis=1)[:, :n]) if return_truth else out


def _seed_tuple(seed) -> tuple:
    return tuple(int(s) for s in np.atleast_1d(np.asarray(seed, dtype=object)))


class LevelSample(NamedTuple):
    """Events at a level with their truth: ``events`` and ``truth`` (4, n) float32, ``is_signal`` (n,) bool.

    ``truth`` holds each event's true kinematics z before acceptance and resolution (the event
    itself at ``gen``, and for background events, which are not smeared).
    """

    events: np.ndarray
    truth: np.ndarray
    is_signal: np.ndarray


def _level_arrays(table: JTable, shifts, n: int, seed, level: str, detector: DetectorConfig | None):
    """(events (4, n), truth (4, n), is_signal (n,) or None): the one code path of both public samplers."""
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if int(n) != n or n <= 0:
        raise ConfigError(f"number of events must be a positive integer, got {n}")
    det = detector or DetectorConfig()
    det.check(table.windows)
    seed = _seed_tuple(seed)
    n_bkg = int(round(det.bkg_fraction * n)) if level == "det_bkg" else 0
    if n > n_bkg:
        sig, true = _det_signal(table, shifts, n - n_bkg, seed, det, return_truth=True)
    else:
        sig = true = np.empty((4, 0), np.float32)
    is_signal = None
    if level == "det_bkg":
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed, 3])))
        bkg = det.sample_background(table.windows, n_bkg, rng)
        ev = np.concatenate([sig, bkg], axis=1)
        true = np.concatenate([true.astype(np.float32), bkg], axis=1)
        flag = np.r_[np.ones(sig.shape[1], bool), np.zeros(n_bkg, bool)]
        order = rng.permutation(n)
        ev, true, is_signal = ev[:, order], true[:, order], flag[order]
    else:
        ev = sig
    return np.ascontiguousarray(ev), np.ascontiguousarray(true, dtype=np.float32), is_signal


def sample_level(table: JTable, shifts, n: int, seed, level: str = "gen", detector: DetectorConfig | None = None) -> pa.Table:
    """Exactly n events at ``level`` as an Arrow table (contract columns, shifts, and ``is_signal`` at det_bkg).

    ``gen`` is :func:`kernels.sampler.sample`. ``det`` applies acceptance and
    resolution to generator events. ``det_bkg`` draws ``round(bkg_fraction n)``
    background and the rest signal, in a seeded random order.
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if level == "gen":
        return sampler.sample(table, shifts, n, seed)
    ev, _, is_signal = _level_arrays(table, shifts, n, seed, level, detector)
    out = sampler._to_table(ev, table, shifts)
    if is_signal is not None:
        out = out.append_column("is_signal", pa.array(is_signal))
    return out


def sample_level_truth(table: JTable, shifts, n: int, seed, level: str = "gen",
                       detector: DetectorConfig | None = None) -> LevelSample:
    """The events of :func:`sample_level` (same seed, same bytes) with their true kinematics and signal flags.

    What the simulator-assisted losses need (:mod:`kernels.joint`): the joint score of an
    event is computed from its truth z, and is 0 for a background event.
    """
    if level == "gen":
        ev = sampler.sample_array(table, shifts, n, seed)
        return LevelSample(ev, ev, np.ones(ev.shape[1], dtype=bool))
    ev, true, is_signal = _level_arrays(table, shifts, n, seed, level, detector)
    return LevelSample(ev, true, np.ones(ev.shape[1], dtype=bool) if is_signal is None else is_signal)


def mean_efficiency(table: JTable, shifts, det: DetectorConfig) -> float:
    """The fraction of generator-level signal at ``shifts`` that the detector keeps: the acceptance times the
    window edges' loss, averaged by quadrature."""
    from kernels import likelihood
    from kernels.theory import monomials

    m = monomials(table.shifts_array(shifts))
    return float(m @ likelihood.normalisation(table, det.pdf_model("det", table.windows)) / (m @ table.rate_integral()))

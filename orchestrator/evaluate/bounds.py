r"""The luminosity study of the hadronic bounds: sigma_CRB with the form factors fixed and profiled, against N.

For each window set (``[1.1, 6.0]`` and, with ``high_q2``, ``[1.1, 6.0] + [15.0, 19.0]``) and each
luminosity, the per-event Fisher matrix ``I`` in ``(c, u)`` (delta C9 and the 19 whitened BSZ
form factors, :func:`kernels.likelihood.fisher_information_nuisances`) gives

.. math::

    \sigma_{\rm CRB} = \sqrt{1 / (N I_{cc})},\qquad
    \sigma_{\rm CRB,eff} = \sqrt{[(N I + 0 \oplus s^{-2} 1)^{-1}]_{cc}},

the bound with the form factors known and the bound with them profiled under flavio's prior
(widths times ``s = prior_scale``, :func:`kernels.likelihood.efficient_bound`). The prior does not
grow with N, so the ratio ``eff / fixed`` grows with N: more events buy less once the form factors
dominate.

**What N means.** ``n_events`` is the luminosity, counted as the events of a set in ``[1.1, 6.0]``
(the seeds' sets). A set of the combined windows at that luminosity holds the events of both
windows: ``n_events_set = round(N * Gamma(both) / Gamma(low))``, the signal rates at ``dc9`` and the
central form factors (with the acceptance at ``det`` and ``det_bkg``; at ``det_bkg`` the background
is the same fraction of every set). Its pdf is normalised over both windows (the table's cells
cover both), so ``n_events_set`` times its per-event information is the set's information.
``recovery = sigma_crb_eff(low) / sigma_crb_eff(low + high)`` at the same luminosity: what the
high-q2 window wins back.

>>> BOUNDS_COLUMNS[:4]
('windows', 'level', 'dc9', 'prior_scale')
>>> window_label(((1.1, 6.0), (15.0, 19.0)))
'1.1-6.0+15.0-19.0'
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from kernels.errors import ConfigError
from kernels.files import atomic_write_text
from orchestrator.config.checks import positive_int
from orchestrator.evaluate.fit import csv_cell
from orchestrator.runtime.progress import no_progress

log = logging.getLogger(__name__)

__all__ = ["LUMINOSITY_EVENTS", "LOW_WINDOWS", "HIGH_WINDOW", "BOUNDS_COLUMNS", "JOINT_BOUNDS_COLUMNS", "window_label",
           "check_events", "check_options", "check_coefficients", "check_at", "luminosity_bounds", "joint_bounds",
           "write_bounds_csv"]

LUMINOSITY_EVENTS = (2_000, 6_000, 24_000, 70_000)
"""Set sizes of the luminosity study (the seeds' 1 to 100 ab^-1 and the seed study's 24,000)."""

LOW_WINDOWS = ((1.1, 6.0),)
HIGH_WINDOW = (15.0, 19.0)

BOUNDS_COLUMNS = ("windows", "level", "dc9", "prior_scale", "n_events", "n_events_set", "sigma_crb", "sigma_crb_eff",
                  "eff_over_fixed", "recovery", "sigma_crb_eff_pc", "pc_over_fixed", "recovery_pc")
"""The CSV's columns, in order (``recovery`` is nan on the rows of ``[1.1, 6.0]`` alone; the ``_pc`` columns,
the power corrections profiled too, are nan unless they were asked for)."""


def window_label(windows) -> str:
    """``1.1-6.0+15.0-19.0``: the windows of a row."""
    return "+".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in windows)


def check_events(n_events, name: str = "--events") -> tuple[int, ...]:
    """A non-empty tuple of distinct positive integers.

    >>> check_events([2000, 0])
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: --events must be a positive integer, got 0
    """
    values = tuple(n_events) if isinstance(n_events, Iterable) and not isinstance(n_events, str) else (n_events,)
    if not values:
        raise ConfigError(f"{name} needs at least one number of events")
    for v in values:
        positive_int(v, name)
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} lists a number of events twice: {', '.join(map(str, values))}")
    return values


def _finite(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return v


def check_options(n_events, dc9, prior_scale, level) -> tuple[tuple[int, ...], float, float, str]:
    """The options of :func:`luminosity_bounds`, checked (one-line ConfigError) and normalised."""
    from kernels.detector import LEVELS
    from kernels.nuisances import check_prior_scale

    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    return check_events(n_events), _finite(dc9, "--dc9"), check_prior_scale(prior_scale, "--prior-scale"), level


def _signal_rate(table, dc9, model) -> float:
    """The absolute signal rate in the table's windows at ``dc9`` (a shift vector when the table scans several
    coefficients; times the acceptance at detector level)."""
    from kernels.likelihood import PdfModel, normalisation
    from kernels.theory import monomials

    m = monomials(table.shifts_array(np.atleast_1d(dc9)))
    return table.scale * float(m @ normalisation(table, PdfModel(efficiency=model.efficiency)))


def _table(windows, power_corrections: bool, progress, coefficients=("C9_bsmumu",)):
    """The theory tables of a window set over ``coefficients``: bi-quadratic over the form factors, or, with
    the power corrections, built from the amplitudes (:mod:`kernels.amplitudes`)."""
    label = window_label(windows)
    k = len(coefficients)
    if power_corrections:
        from kernels import amplitudes as amp

        n = amp.n_amplitude_evaluations(k, 19, len(amp.power_corrections(windows)))
        with progress(f"amplitude tables {label}", n, "flavio calls") as adv:
            return amp.amplitude_table(list(coefficients), windows, "bsz", workers=2, progress=adv or None)
    from kernels import nuisances as nuis

    with progress(f"theory tables {label}", nuis.n_evaluations(k, 19) + 1, "flavio calls") as adv:
        return nuis.nuisance_table(list(coefficients), windows, "bsz", workers=2, progress=adv or None)


def luminosity_bounds(n_events: Sequence[int] = LUMINOSITY_EVENTS, dc9: float = 0.0, prior_scale: float = 1.0,
                      high_q2: bool = True, level: str = "gen", progress=None,
                      tables: Mapping | None = None, power_corrections: bool = False, detector=None) -> list[dict]:
    """One row per (window set, N) of :data:`BOUNDS_COLUMNS`: the fixed and efficient bounds on delta C9.

    ``tables``: window label -> :class:`~kernels.nuisances.NuisanceTable` (or, with ``power_corrections``,
    :class:`~kernels.amplitudes.AmplitudeTable`) to use instead of building (or loading) them (flavio's 19
    BSZ form factors, and its power corrections; cold, 631 or 281 to 401 flavio calls per window set, in 2
    processes). With ``power_corrections``, ``sigma_crb_eff`` has the form factors profiled and the power
    corrections fixed, and ``sigma_crb_eff_pc`` both profiled. ``detector``: the
    :class:`~kernels.detector.DetectorConfig` of ``det`` and ``det_bkg`` (default: the toy's). ``progress`` is a factory
    ``(description, total, unit)`` (:mod:`orchestrator.runtime.progress`). Every argument is checked
    before any table is built.
    """
    from kernels import likelihood
    from kernels.detector import DetectorConfig

    ns, dc9, s, level = check_options(n_events, dc9, prior_scale, level)
    progress = progress or no_progress
    sets = [LOW_WINDOWS] + ([LOW_WINDOWS + (HIGH_WINDOW,)] if high_q2 else [])
    det = detector or DetectorConfig()
    rows, eff_low, pc_low, rate_low = [], {}, {}, None
    for windows in sets:
        label = window_label(windows)
        ntable = (tables or {}).get(label) or _table(windows, power_corrections, progress)
        nf = getattr(ntable, "n_form_factors", ntable.n_nuisances)  # the rest are power corrections
        if power_corrections and nf == ntable.n_nuisances:
            raise ConfigError(f"the tables of {label} hold no power corrections")
        model = det.pdf_model(level, ntable.windows)
        central = ntable.at(np.zeros(ntable.n_nuisances))
        I = likelihood.fisher_information_nuisances(ntable, [dc9], model=model)
        prior_precision = np.eye(ntable.n_nuisances) / s**2
        rate = _signal_rate(central, dc9, model)
        rate_low = rate if rate_low is None else rate_low
        log.info("%s: %d form factors, signal rate %.4g (x %.4f of [1.1, 6.0])", label, ntable.n_nuisances, rate,
                 rate / rate_low)
        for n in ns:
            n_set = n if windows == LOW_WINDOWS else max(1, round(n * rate / rate_low))
            fixed = float(likelihood.sigma_crb(central, [dc9], n_set, model))
            k = 1 + nf  # delta C9 and the form factors: the power corrections fixed
            eff = float(likelihood.efficient_bound(I[:k, :k], 1, n_set, prior_precision[:nf, :nf])[0][0])
            pc = float(likelihood.efficient_bound(I, 1, n_set, prior_precision)[0][0]) if power_corrections else math.nan
            if windows == LOW_WINDOWS:
                eff_low[n], pc_low[n] = eff, pc
            high = windows != LOW_WINDOWS
            rows.append({"windows": label, "level": level, "dc9": dc9, "prior_scale": s, "n_events": n,
                         "n_events_set": n_set, "sigma_crb": fixed, "sigma_crb_eff": eff, "eff_over_fixed": eff / fixed,
                         "recovery": eff_low[n] / eff if high else math.nan, "sigma_crb_eff_pc": pc,
                         "pc_over_fixed": pc / fixed, "recovery_pc": pc_low[n] / pc if high else math.nan})
    return rows


JOINT_BOUNDS_COLUMNS = ("windows", "level", "coefficients", "at", "prior_scale", "n_events", "n_events_set",
                        "coefficient", "sigma_crb_alone", "sigma_crb", "sigma_crb_eff", "eff_over_fixed", "recovery",
                        "sigma_crb_eff_pc", "pc_over_fixed", "recovery_pc")
"""The columns of :func:`joint_bounds`, then ``corr_crb_<a>_<b>`` and ``corr_crb_eff_<a>_<b>`` for each pair."""


def check_coefficients(coefficients) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(shift columns, flavio names)`` of the coefficients of a joint bound (any names
    :func:`kernels.design.shift_column` reads; none twice)."""
    from kernels.design import shift_columns
    from kernels.theory import coefficient_for

    cols = shift_columns(coefficients)
    return tuple(cols), tuple(coefficient_for(c) for c in cols)


def check_at(at, cols) -> np.ndarray:
    """The shift vector of a joint bound: one finite value per coefficient of ``cols`` (None: 0)."""
    k = len(cols)
    d = np.zeros(k) if at is None else np.array([_finite(v, "--at") for v in np.atleast_1d(at)])
    if d.shape != (k,):
        raise ConfigError(f"--at gives {d.size} value(s) for {k} coefficients ({', '.join(cols)})")
    return d


def joint_bounds(coefficients: Sequence[str], at=None, n_events: Sequence[int] = LUMINOSITY_EVENTS,
                 prior_scale: float = 1.0, high_q2: bool = True, level: str = "gen", progress=None,
                 power_corrections: bool = False, detector=None, tables: Mapping | None = None) -> list[dict]:
    """The bounds on several coefficients at once, from one Fisher matrix per window set: one row per
    (window set, N, coefficient) of :data:`JOINT_BOUNDS_COLUMNS` and the pairs' correlations.

    ``sigma_crb_alone``: that coefficient alone (the others fixed at ``at``); ``sigma_crb``: its marginal bound,
    the other coefficients free, form factors fixed; ``sigma_crb_eff``: and flavio's 19 BSZ form factors
    profiled under their prior (``sigma_crb_eff_pc``: the power corrections too, with ``power_corrections``).
    ``at``: the shift vector (default 0). N is counted as in :func:`luminosity_bounds`. ``tables``: window
    label -> the tables over exactly these coefficients, to use instead of building them. Every argument is
    checked before any table is built.
    """
    from kernels import likelihood
    from kernels.detector import DetectorConfig

    cols, names = check_coefficients(coefficients)
    k = len(cols)
    d = check_at(at, cols)
    ns, _, s, level = check_options(n_events, 0.0, prior_scale, level)
    progress = progress or no_progress
    sets = [LOW_WINDOWS] + ([LOW_WINDOWS + (HIGH_WINDOW,)] if high_q2 else [])
    det = detector or DetectorConfig()
    rows, low, rate_low = [], {}, None
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    for windows in sets:
        label = window_label(windows)
        ntable = (tables or {}).get(label) or _table(windows, power_corrections, progress, names)
        if tuple(ntable.coefficients) != names:
            raise ConfigError(f"the tables of {label} are over {list(ntable.coefficients)}, not {list(names)}")
        nf = getattr(ntable, "n_form_factors", ntable.n_nuisances)
        model = det.pdf_model(level, ntable.windows)
        central = ntable.at(np.zeros(ntable.n_nuisances))
        I = likelihood.fisher_information_nuisances(ntable, d, model=model)
        I_c = likelihood.fisher_information(central, d, model)
        prec = np.eye(ntable.n_nuisances) / s**2
        rate = _signal_rate(central, d, model)
        rate_low = rate if rate_low is None else rate_low
        high = windows != LOW_WINDOWS
        for n in ns:
            n_set = n if not high else max(1, round(n * rate / rate_low))
            fixed_cov = np.linalg.inv(I_c) / n_set
            eff_sig, eff_cov = likelihood.efficient_bound(I[: k + nf, : k + nf], k, n_set, prec[:nf, :nf])
            pc_sig = likelihood.efficient_bound(I, k, n_set, prec)[0] if power_corrections else np.full(k, math.nan)
            fixed = np.sqrt(np.diag(fixed_cov))
            if not high:
                low[n] = (eff_sig, pc_sig)
            corr = {}
            for i, j in pairs:
                corr[f"corr_crb_{cols[i]}_{cols[j]}"] = float(fixed_cov[i, j] / (fixed[i] * fixed[j]))
                corr[f"corr_crb_eff_{cols[i]}_{cols[j]}"] = float(eff_cov[i, j] / (eff_sig[i] * eff_sig[j]))
            for i, c in enumerate(cols):
                rows.append({"windows": label, "level": level, "coefficients": ",".join(cols),
                             "at": ",".join(f"{v:g}" for v in d), "prior_scale": s, "n_events": n,
                             "n_events_set": n_set, "coefficient": c,
                             "sigma_crb_alone": float(1.0 / np.sqrt(n_set * I_c[i, i])), "sigma_crb": float(fixed[i]),
                             "sigma_crb_eff": float(eff_sig[i]), "eff_over_fixed": float(eff_sig[i] / fixed[i]),
                             "recovery": float(low[n][0][i] / eff_sig[i]) if high else math.nan,
                             "sigma_crb_eff_pc": float(pc_sig[i]), "pc_over_fixed": float(pc_sig[i] / fixed[i]),
                             "recovery_pc": float(low[n][1][i] / pc_sig[i]) if high else math.nan, **corr})
    return rows


def write_bounds_csv(rows: Iterable[Mapping], path: Path) -> Path:
    """The rows as CSV with exactly :data:`BOUNDS_COLUMNS` (or, for :func:`joint_bounds`' rows,
    :data:`JOINT_BOUNDS_COLUMNS` and the correlations), written atomically."""
    rows = list(rows)
    columns = BOUNDS_COLUMNS
    if rows and "coefficient" in rows[0]:
        columns = JOINT_BOUNDS_COLUMNS + tuple(c for c in rows[0] if c.startswith("corr_crb"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row[c]) for c in columns])
    out = atomic_write_text(Path(path), buf.getvalue())
    log.info("wrote %s", out)
    return Path(out)

"""``wcscan bounds``: the luminosity study of the hadronic bounds, its CSV and its figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernels.errors import ConfigError
from orchestrator.config.checks import output_file
from orchestrator.evaluate.bounds import (LUMINOSITY_EVENTS, check_at, check_coefficients, check_options, joint_bounds,
                                         luminosity_bounds, write_bounds_csv)
from orchestrator.runtime.progress import no_progress

__all__ = ["BoundsOutcome", "bounds_job", "check_csv_path", "write_bounds"]


@dataclass
class BoundsOutcome:
    rows: list[dict]
    csv: Path
    figure: Path


def check_csv_path(out, name: str = "--out") -> Path:
    """``out`` if it ends in ``.csv`` and a file can be written there (its directory is made if need be)."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"{name} {out}: must end in .csv (the figure goes beside it as .png)")
    return output_file(out, name)


def write_bounds(rows: list[dict], out_csv: Path, title: str = "") -> tuple[Path, Path]:
    """Write the rows as CSV (atomically) and their figure beside it (``.png``); return both paths."""
    from orchestrator.report.plots import plot_luminosity_bounds

    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    csv_path = write_bounds_csv(rows, out_csv)
    return csv_path, plot_luminosity_bounds(rows, out_csv.with_suffix(".png"), title=title)


def bounds_job(n_events=LUMINOSITY_EVENTS, dc9: float = 0.0, prior_scale: float = 1.0, high_q2: bool = True,
               level: str = "gen", out: Path = Path("out/bounds.csv"), progress=no_progress,
               stage=None, power_corrections: bool = False, coefficients=None, at=None) -> BoundsOutcome:
    """The bounds at every N, written to ``out`` and ``out.png``. Every option, and ``out``, is checked
    before the first flavio call, so a bad input writes nothing. ``stage(message)`` announces the tables.

    ``coefficients`` (several): the joint bounds (:func:`~orchestrator.evaluate.bounds.joint_bounds`) at the
    shift vector ``at`` (default 0; ``dc9`` is then not used)."""
    out = check_csv_path(out)
    check_options(n_events, dc9, prior_scale, level)
    if coefficients is not None and len(coefficients) > 1:
        return _joint_job(coefficients, at, n_events, prior_scale, high_q2, level, out, progress, stage,
                          power_corrections)
    if at is not None:
        raise ConfigError("--at goes with --coefficients (several); for delta C9 alone use --dc9")
    if coefficients is not None and check_coefficients(coefficients)[0] != ("dc9",):
        raise ConfigError("--coefficients with one coefficient: only delta C9's bound is studied alone; "
                          "list several (e.g. C9,C10) for the joint bounds")
    if stage is not None:
        stage("amplitude tables over delta C9 x the power corrections x the 19 BSZ form factors (cached after the "
              "first run)" if power_corrections else
              "bi-quadratic theory tables over delta C9 x the 19 BSZ form factors (cached after the first run)")
    rows = luminosity_bounds(n_events, dc9=dc9, prior_scale=prior_scale, high_q2=high_q2, level=level,
                             progress=progress, power_corrections=power_corrections)
    r = rows[0]
    what = "19 BSZ parameters and power corrections" if power_corrections else "19 BSZ parameters"
    title = (f"Cramér–Rao bound on δC9 against luminosity: hadronic inputs fixed vs profiled\n"
             f"(flavio's {what}, prior × {r['prior_scale']:g}; δC9 = {r['dc9']:g}, level {r['level']})")
    csv_path, figure = write_bounds(rows, out, title=title)
    return BoundsOutcome(rows, csv_path, figure)


def _joint_job(coefficients, at, n_events, prior_scale, high_q2, level, out, progress, stage,
               power_corrections) -> BoundsOutcome:
    from orchestrator.report.plots import plot_joint_bounds

    cols, names = check_coefficients(coefficients)
    check_at(at, cols)  # before the tables are announced, or built
    if stage is not None:
        what = "the power corrections x " if power_corrections else ""
        stage(f"tables over {' x '.join(cols)} x {what}the 19 BSZ form factors (cached after the first run)")
    rows = joint_bounds(names, at, n_events, prior_scale=prior_scale, high_q2=high_q2, level=level,
                        progress=progress, power_corrections=power_corrections)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = write_bounds_csv(rows, out)
    r = rows[0]
    title = (f"Marginal Cramér–Rao bounds of {', '.join(cols)} against luminosity\n"
             f"(at {r['at']}; flavio's 19 BSZ parameters{' and power corrections' if power_corrections else ''}, "
             f"prior × {r['prior_scale']:g}; level {r['level']})")
    return BoundsOutcome(rows, csv_path, plot_joint_bounds(rows, out.with_suffix(".png"), title=title))

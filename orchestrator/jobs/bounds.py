"""``wcscan bounds``: the luminosity study of the hadronic bounds, its CSV and its figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kernels.errors import ConfigError
from orchestrator.config.checks import output_file
from orchestrator.evaluate.bounds import LUMINOSITY_EVENTS, check_options, luminosity_bounds, write_bounds_csv
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
               stage=None, power_corrections: bool = False) -> BoundsOutcome:
    """The bounds at every N, written to ``out`` and ``out.png``. Every option, and ``out``, is checked
    before the first flavio call, so a bad input writes nothing. ``stage(message)`` announces the tables."""
    out = check_csv_path(out)
    check_options(n_events, dc9, prior_scale, level)
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

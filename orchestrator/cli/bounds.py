"""``wcscan bounds``."""

from __future__ import annotations

import math
from pathlib import Path

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stage_printer, stdout
from orchestrator.cli.types import COEFFICIENTS, COUNTS, FINITE

EPILOG = """\b
Examples:
  wcscan bounds                                   # N = 2000,6000,24000,70000, both window sets, into out/bounds.csv
  wcscan bounds --events 1000,10000,100000 --out out/lumi/bounds.csv
  wcscan bounds --prior-scale 0.5                 # form-factor prior twice as narrow
  wcscan bounds --no-high-q2 --level det_bkg      # [1.1, 6.0] only, with acceptance and background
  wcscan bounds --power-corrections               # the power corrections profiled too (sigma_crb_eff_pc)
  wcscan bounds --coefficients C9,C10 --no-high-q2 --out out/bounds-c9c10.csv   # several coefficients at once
\b
N is the luminosity, counted as the events of a set in [1.1, 6.0] GeV^2. With --high-q2 (the default) a set
of [1.1, 6.0] + [15.0, 19.0] at that luminosity holds the events of both windows (n_events_set, from the
signal rates), and recovery = sigma_crb_eff([1.1, 6.0]) / sigma_crb_eff(both) says what the high-q2 window
wins back. The bi-quadratic tables over delta C9 x flavio's 19 BSZ form factors (631 flavio calls per window
set, several minutes cold on 2 processes) are cached under $WCSCAN_CACHE (default ~/.cache/wcscan).
\b
The CSV has one row per (window set, N): windows, level, dc9, prior_scale, n_events, n_events_set, sigma_crb
(form factors fixed), sigma_crb_eff (profiled with the prior), eff_over_fixed, recovery (nan for [1.1, 6.0]);
then sigma_crb_eff_pc, pc_over_fixed and recovery_pc, with the power corrections profiled as well (nan without
--power-corrections; their tables, 281 flavio calls for [1.1, 6.0] and 401 with the high-q2 window, are built from
the helicity amplitudes). The figure (.png) beside it plots the bounds against N, log-log, with a 1/sqrt(N) guide.
\b
With --coefficients A,B,... (several; at the shifts --at, default 0) one Fisher matrix per window set gives
every coefficient's bounds: one row per (window set, N, coefficient) with windows, level, coefficients, at,
prior_scale, n_events, n_events_set, coefficient, sigma_crb_alone (the others fixed), sigma_crb (marginal, the
others free), sigma_crb_eff (and the form factors profiled), eff_over_fixed, recovery, the _pc columns, then
corr_crb_<a>_<b> and corr_crb_eff_<a>_<b> for each pair. The tables then cost (k+1)(k+2)/2 x 210 flavio calls
per window set for k coefficients (1260 for two), once.
"""

COLUMNS = (  # (column, header, format): the terminal's table; the CSV has every column
    ("windows", "q² windows", "{}"), ("n_events", "N", "{:,}"), ("n_events_set", "set N", "{:,}"),
    ("sigma_crb", "σ fixed", "{:.4f}"), ("sigma_crb_eff", "σ eff", "{:.4f}"),
    ("eff_over_fixed", "eff/fixed", "{:.2f}"), ("recovery", "recovery", "{:.2f}"),
)
PC_COLUMNS = (  # with --power-corrections: the set N and the form factors' ratio make room
    ("windows", "q² windows", "{}"), ("n_events", "N", "{:,}"), ("sigma_crb", "σ fixed", "{:.4f}"),
    ("sigma_crb_eff", "σ eff", "{:.4f}"), ("sigma_crb_eff_pc", "σ eff+pc", "{:.4f}"),
    ("pc_over_fixed", "pc/fixed", "{:.2f}"), ("recovery_pc", "recov.", "{:.2f}"),
)


@click.command(epilog=EPILOG, short_help="sigma_CRB on delta C9 against luminosity, form factors fixed and profiled.")
@click.option("--events", type=COUNTS, default="2000,6000,24000,70000", show_default=True, metavar="N,N,...",
              help="Luminosities, as events per set in [1.1, 6.0] GeV^2.")
@click.option("--dc9", type=FINITE, default=0.0, show_default=True, help="The delta C9 at which the bounds are taken.")
@click.option("--prior-scale", type=float, default=1.0, show_default=True,
              help="flavio's form-factor prior widths times this (> 0).")
@click.option("--high-q2/--no-high-q2", default=True, show_default=True,
              help="Also the window set [1.1, 6.0] + [15.0, 19.0] GeV^2.")
@click.option("--level", type=click.Choice(["gen", "det", "det_bkg"]), default="gen", show_default=True,
              help="Event level of the pdf: det adds the acceptance, det_bkg also the background.")
@click.option("--power-corrections/--no-power-corrections", default=False, show_default=True,
              help="Also profile flavio's power corrections (delta_C7 below, deltaC9 c above the resonances): "
                   "the sigma_crb_eff_pc columns.")
@click.option("--coefficients", type=COEFFICIENTS, default=None, metavar="C9,C10,...",
              help="Several coefficients at once: each one's marginal bounds and the pairs' correlations.")
@click.option("--at", "at", default=None, metavar="V,V,...",
              help="With --coefficients: the shifts at which the bounds are taken, one per coefficient (default 0).")
@click.option("--out", type=PATH, default=Path("out/bounds.csv"), show_default=True, metavar="FILE.csv",
              help="The CSV; the figure goes beside it as .png.")
@common_options
def bounds(events, dc9, prior_scale, high_q2, level, power_corrections, coefficients, at, out, quiet, verbose):
    """The luminosity study of the hadronic bounds: sigma_CRB on delta C9 with the B -> K* form factors fixed,
    and sigma_CRB,eff with flavio's 19 BSZ parameters profiled under their prior, at each N, with and
    without the high-q2 window."""
    from rich import box
    from rich.table import Table

    from orchestrator.jobs.bounds import bounds_job

    from orchestrator.config.grammar import parse_finite

    at_values = None if at is None else [parse_finite(v, "--at") for v in str(at).split(",")]
    res = bounds_job(events, dc9=dc9, prior_scale=prior_scale, high_q2=high_q2, level=level, out=out,
                     progress=progress_factory(quiet), stage=stage_printer("bounds", quiet),
                     power_corrections=power_corrections, coefficients=coefficients, at=at_values)
    if res.rows and "coefficient" in res.rows[0]:
        _print_joint(res, power_corrections)
        return
    columns = PC_COLUMNS if power_corrections else COLUMNS
    r = res.rows[0]
    what = "form factors (eff) and power corrections (eff+pc)" if power_corrections else "form factors (eff)"
    table = Table(title=f"σ_CRB(δC9), fixed and with the {what} profiled: δC9 = {r['dc9']:g}, "
                  f"level {r['level']}, prior × {r['prior_scale']:g}",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in res.rows:
        table.add_row(*("" if isinstance(row[c], float) and math.isnan(row[c]) else f.format(row[c])
                        for c, _, f in columns))
    console = stdout()
    console.print(table)
    console.print(f"wrote {res.csv} and the figure {res.figure}", soft_wrap=True)


def _print_joint(res, power_corrections: bool) -> None:
    from rich import box
    from rich.table import Table

    r = res.rows[0]
    t = Table(title=f"Bounds on {r['coefficients']} at ({r['at']}), level {r['level']}, prior × {r['prior_scale']:g}",
              box=box.SIMPLE_HEAD, pad_edge=False)
    cols = [("windows", "q² windows", "{}"), ("n_events", "N", "{:,}"), ("coefficient", "coef", "{}"),
            ("sigma_crb_alone", "σ alone", "{:.4f}"), ("sigma_crb", "σ others free", "{:.4f}"),
            ("sigma_crb_eff", "σ eff", "{:.4f}"), ("eff_over_fixed", "eff/free", "{:.2f}")]
    if power_corrections:
        cols.append(("sigma_crb_eff_pc", "σ eff+pc", "{:.4f}"))
    corr = [c for c in r if c.startswith("corr_crb_")]
    for _, h, _ in cols:
        t.add_column(h, justify="right", no_wrap=True)
    for row in res.rows:
        t.add_row(*(f.format(row[c]) for c, _, f in cols))
    console = stdout()
    console.print(t)
    first = {}
    for row in res.rows:
        first.setdefault((row["windows"], row["n_events"]), row)
    for c in corr:  # one value per (window set, N)
        vals = [f"{w} N={n:,}: {row[c]:+.3f}" for (w, n), row in first.items()]
        console.print(f"{c}: {'; '.join(vals)}", soft_wrap=True)
    console.print(f"wrote {res.csv} and the figure {res.figure}", soft_wrap=True)

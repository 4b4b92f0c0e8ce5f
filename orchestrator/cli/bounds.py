"""``wcscan bounds``."""

from __future__ import annotations

import math
from pathlib import Path

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stage_printer, stdout
from orchestrator.cli.types import COUNTS, FINITE

EPILOG = """\b
Examples:
  wcscan bounds                                   # N = 2000,6000,24000,70000, both window sets, into out/bounds.csv
  wcscan bounds --events 1000,10000,100000 --out out/lumi/bounds.csv
  wcscan bounds --prior-scale 0.5                 # form-factor prior twice as narrow
  wcscan bounds --no-high-q2 --level det_bkg      # [1.1, 6.0] only, with acceptance and background
  wcscan bounds --power-corrections               # the power corrections profiled too (sigma_crb_eff_pc)
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
@click.option("--out", type=PATH, default=Path("out/bounds.csv"), show_default=True, metavar="FILE.csv",
              help="The CSV; the figure goes beside it as .png.")
@common_options
def bounds(events, dc9, prior_scale, high_q2, level, power_corrections, out, quiet, verbose):
    """The luminosity study of the hadronic bounds: sigma_CRB on delta C9 with the B -> K* form factors fixed,
    and sigma_CRB,eff with flavio's 19 BSZ parameters profiled under their prior, at each N, with and
    without the high-q2 window."""
    from rich import box
    from rich.table import Table

    from orchestrator.jobs.bounds import bounds_job

    res = bounds_job(events, dc9=dc9, prior_scale=prior_scale, high_q2=high_q2, level=level, out=out,
                     progress=progress_factory(quiet), stage=stage_printer("bounds", quiet),
                     power_corrections=power_corrections)
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

"""``wcscan validate``."""

from __future__ import annotations

import click

from orchestrator.cli.common import common_options, progress_factory, stdout
from orchestrator.cli.types import DC9

EPILOG = """\b
Examples:
  wcscan validate                          # dC9 = 0 and -1, 10^6 events each
  wcscan validate --dc9 -2,0,1 --events 2000000 --fit-sets 200

Events are drawn from the theory tables; AFB comes from <cos theta_mu>, FL and S3..S9 from the method of
moments (orthogonality of the angular functions). Each is compared with flavio's binned prediction: the pull is
(events - flavio) / statistical error. The last line fits toy sets and compares their spread with the
Cramer-Rao bound.
"""


@click.command(epilog=EPILOG, short_help="Check the generator against flavio and the fit against the CRB.")
@click.option("--dc9", type=DC9, default="0,-1", show_default=True, help="Delta C9 values.")
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Events per value.")
@click.option("--fit-sets", type=int, default=100, show_default=True, help="Toy sets for the fit check (0 skips).")
@click.option("--events-per-set", type=int, default=24_000, show_default=True, help="Events per toy set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@common_options
def validate(dc9, events, fit_sets, events_per_set, seed, quiet, verbose):
    """Generate events, measure binned observables from them and compare with flavio; fit toy sets and compare
    their spread with sigma_CRB."""
    from rich import box
    from rich.table import Table

    from orchestrator.jobs.validate import validate_job

    rows, fit = validate_job(dc9, events, fit_sets, events_per_set, seed, progress_factory(quiet))
    table = Table(title=f"generator vs flavio, {events} events per point, q2 in [1.1, 6.0]", box=box.SIMPLE_HEAD)
    for h in ("dC9", "observable", "flavio", "tables", "events", "stat err", "pull"):
        table.add_column(h, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(f"{r['dc9']:+.2f}", r["observable"], f"{r['flavio']:+.5f}", f"{r['tables']:+.5f}",
                      f"{r['events']:+.5f}", f"{r['error']:.5f}", f"{r['pull']:+.2f}")
    console = stdout()
    console.print(table)
    if fit is not None:
        console.print(
            f"ML fit at dC9 = {fit['dc9_true']:+g}: {fit['n_sets']} sets x {fit['n_events']} events: "
            f"bias {fit['bias']:+.4f}, sigma {fit['sigma']:.4f}, sigma_CRB {fit['sigma_crb']:.4f}, "
            f"sigma/sigma_CRB {fit['sigma_over_crb']:.3f}, pulls {fit['pull_mean']:+.2f} +- {fit['pull_width']:.2f}",
            soft_wrap=True)

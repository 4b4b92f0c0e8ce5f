"""``wcscan bench``."""

from __future__ import annotations

import json
import sys

import click

from orchestrator.bench import BENCHMARKS
from orchestrator.cli.common import common_options, fmt, stdout

EPILOG = """\b
Examples:
  wcscan bench generate          # a table of timings
  wcscan bench fit --json        # machine-readable
  wcscan bench fit --nuisances bsz --json   # the profiled fit beside the fixed one, and sigma/sigma_CRB,eff
  wcscan bench fit --nuisances bsz+pc       # the same with the power corrections, and the form-factor-only fit
  wcscan bench images --json     # voxel images vs scipy binned_statistic_dd
  wcscan bench scan --json       # Ray generation, 1 worker vs 2, seed-study projection
  wcscan bench resnet --json     # ResNet-34, 50^3, batch 32, AMP: training images/s (a GPU node)
  wcscan bench resnet --depth 10 --bins 16 --width 16 --batch 8   # something a laptop CPU finishes

Every figure is a median of repeats; ratios are measured side by side in one run.
"""


@click.command(epilog=EPILOG, short_help="Time the generation, fit, images and scan kernels, or ResNet training.")
@click.argument("what", type=click.Choice(BENCHMARKS))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--depth", type=click.Choice(["10", "18", "34"]), default="34", show_default=True, help="resnet: depth.")
@click.option("--width", type=int, default=64, show_default=True, metavar="W", help="resnet: filters of the first stage.")
@click.option("--bins", type=int, default=50, show_default=True, metavar="B", help="resnet: voxels per axis.")
@click.option("--batch", type=int, default=32, show_default=True, metavar="N", help="resnet: images per step.")
@click.option("--steps", type=int, default=10, show_default=True, metavar="N", help="resnet: timed steps per repeat.")
@click.option("--repeats", type=int, default=3, show_default=True, metavar="N", help="resnet: repeats (median).")
@click.option("--no-amp", "amp", is_flag=True, flag_value=False, default=True, help="resnet: full precision.")
@click.option("--device", default=None, metavar="DEV", help="resnet: torch device (default: cuda if available).")
@click.option("--nuisances", type=click.Choice(["none", "bsz", "bsz+pc"]), default="none", show_default=True,
              help="fit: bsz times the profiled fit (delta C9 and flavio's 19 form factors) beside the fixed one; "
                   "bsz+pc profiles flavio's 12 power corrections too, on sets drawn with them.")
@common_options
def bench(what, as_json, depth, width, bins, batch, steps, repeats, amp, device, nuisances, quiet, verbose):
    """Time a kernel on a fixed workload and report the timings."""
    from rich.table import Table

    from orchestrator.bench import run_bench

    result = run_bench(what, depth=int(depth), width=width, bins=bins, batch=batch, steps=steps, repeats=repeats,
                       amp=amp, device=device, nuisances=nuisances)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        return
    table = Table(title=f"bench {what}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(str(key), fmt(value))
    stdout().print(table)

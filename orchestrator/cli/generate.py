"""``wcscan generate``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stdout
from orchestrator.cli.types import DC9, DESIGN, SHIFT, WINDOW

EPILOG = """\b
Examples:
  # 22 points from dC9 = -2 to 1.1 (inclusive), 24k events each, default q2 window
  wcscan generate --dc9 -2:1.1:22 --events 24000 --seed 1 --out out/events
\b
  # three explicit points, two q2 windows
  wcscan generate --dc9 -1.5,0,1 --events 200000 \\
      --q2-window 1.1,6.0 --q2-window 15,19 --out out/events
\b
  # on Ray: 2 local workers, or the cluster at $RAY_ADDRESS / --address
  wcscan generate --dc9 -2:1.1:22 --events 24000 --workers 2 --out out/events
  wcscan generate --dc9 -2:1.1:22 --events 24000 --address ray://head:10001 --out out/events
\b
  # detector level with background
  wcscan generate --dc9 -1:1:5 --events 100000 --level det_bkg --out out/events-det
\b
  # several coefficients: a 3 x 3 grid in (dC9, dC10), or 16 Sobol points in a box (seeded by --seed)
  wcscan generate --shift dc9=-1:1:3 --shift dc10=-0.5:0.5:3 --events 240000 --out out/events-c9c10
  wcscan generate --shift C9=-2:1 --shift C10=-1:1 --shift C9p=-1:1 --shift C10p=-1:1 \\
      --design sobol:16 --events 240000 --out out/events-4wc

The output directory receives level=<level>/point=NNN/part-KKKKK.parquet files, a progress journal _progress/
and, last, manifest.json. If it already holds (part of) a dataset with the same config, the run resumes:
finished parts are verified and kept, missing ones made; a complete dataset is left as it is. A different
config is refused, naming the fields that differ.

--shift NAME=VALUES scans any of the table's coefficients (dc9, dc10, dc9p, dc10p, ...; C10 and C10_bsmumu
name dc10 too), one --shift each, in the order given. --design grid (the default) takes the product of the
values (START:STOP:NUM or A,B,...; the first --shift varies slowest); sobol:N and lhs:N take N points in
the box of LO:HI bounds, from a scrambled Sobol sequence or a Latin hypercube seeded by --seed. n
coefficients need at least n + 1 points that span them. The manifest records each point's shift vector.
"""


@click.command(epilog=EPILOG, short_help="Sample events at scan points into a Parquet dataset.")
@click.option("--dc9", type=DC9, default=None,
              help="delta C9 scan points: START:STOP:NUM (inclusive, NUM >= 1) or A,B,...  (or --shift)")
@click.option("--shift", "shifts", type=SHIFT, multiple=True,
              help="NAME=VALUES: scan this coefficient (repeat for several; see below). Instead of --dc9.")
@click.option("--design", type=DESIGN, default="grid", show_default=True,
              help="How --shift values make points: grid, or sobol:N / lhs:N within LO:HI bounds.")
@click.option("--q2-window", "q2_windows", type=WINDOW, multiple=True,
              help="q2 window in GeV^2; repeat for several (default: 1.1,6.0).")
@click.option("--events", type=int, required=True, metavar="N", help="Events per scan point.")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S", help="Master seed.")
@click.option("--chunk-size", type=int, default=1_000_000, show_default=True, metavar="N",
              help="Events per Parquet part.")
@click.option("--level", type=click.Choice(["gen", "det", "det_bkg"]), default="gen", show_default=True,
              help="Generator, detector, or detector + background level.")
@click.option("--workers", type=int, default=None, metavar="N",
              help="Ray workers, one CPU each (default: one per CPU Ray reports; 0: in this process, no Ray).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (default: $RAY_ADDRESS, else local).")
@click.option("--out", type=PATH, required=True, metavar="DIR",
              help="Dataset directory: new, empty, or a dataset of the same config to resume.")
@common_options
def generate(dc9, shifts, design, q2_windows, events, seed, chunk_size, level, workers, address, out, quiet, verbose):
    """Sample B0 -> K*0 mu mu events at each scan point (delta C9, or a design over several Wilson
    coefficients) into a Hive-partitioned Parquet dataset."""
    from rich.table import Table

    from orchestrator.config.grammar import scan_design
    from orchestrator.jobs.generate import generate_job

    if (dc9 is None) == (not shifts):
        raise click.UsageError("give the scan points once: --dc9 (delta C9 alone) or --shift NAME=VALUES")
    if not shifts and design != ("grid", None):
        raise click.UsageError("--design goes with --shift")
    scan = scan_design(shifts, design, seed) if shifts else None
    result = generate_job(out, dc9, events, seed, q2_windows or None, chunk_size, level, workers, address,
                          progress_factory(quiet), design=scan)
    columns = ("dc9",) if scan is None else scan.columns
    manifest, console = result.manifest, stdout()
    total = events * len(manifest["points"])
    if result.was_complete:
        console.print(f"{out} is complete ({total} events at {len(manifest['points'])} points); nothing to do",
                      soft_wrap=True)
        return
    table = Table()
    for col in ("point", *columns, "events", "parts", "checksum"):
        table.add_column(col, justify="right" if col != "checksum" else "left")
    for p in manifest["points"]:
        table.add_row(f"{p['index']:03d}", *(f"{p['shifts'][c]:.4g}" for c in columns), str(p["events"]),
                      str(len(p["parts"])), p["checksum"][:12])
    console.print(table)
    kept = f" (kept {result.parts_kept} finished parts, made {result.parts_made})" if result.parts_kept else ""
    console.print(f"wrote {total} events at {len(manifest['points'])} points to {out}{kept}", soft_wrap=True)

"""``wcscan fit``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stdout
from orchestrator.cli.types import COEFFICIENTS, COLUMN_MAP, FINITE, TRUTH, WINDOW

EPILOG = """\b
Examples:
  # 50 sets of 2000 events per point; needs >= 100000 events per point
  wcscan fit --dataset out/events --events-per-set 2000 --sets 50 --out out/fit.csv
\b
  # your own events: one point per value of the truth column dc9_gen
  wcscan fit --events-file my.parquet --column-map q2=Q2,cos_theta_mu=ctl \\
      --dc9-column dc9_gen --events-per-set 2000 --sets 20
\b
  # a ROOT ntuple (pip install 'wcscan[root]'), all rows at one known truth
  wcscan fit --events-file my.root:events --dc9-true -0.8 --events-per-set 2000 --sets 20
\b
  # several coefficients at once, on a dataset from 'wcscan generate --shift dc9=... --shift dc10=...'
  wcscan fit --dataset out/events-c9c10 --events-per-set 24000 --sets 10 --out out/fit-c9c10.csv
\b
  # your own events, delta C9 and delta C10 jointly: one point per (dc9, dc10) of the truth columns
  wcscan fit --events-file my.parquet --coefficients C9,C10 --column-map dc10=c10_gen \\
      --events-per-set 24000 --sets 20 --out out/mine-c9c10.csv
\b
  # delta C10 free as well, on a delta C9-only dataset (its delta C10 is 0)
  wcscan fit --dataset out/events --coefficients C9,C10 --events-per-set 2000 --sets 50
\b
  # the form factors profiled with flavio's prior: the bound real data allow (sigma_crb_eff)
  wcscan fit --events-file my.parquet --level gen --nuisances bsz --events-per-set 24000 --sets 20

Sets are consecutive disjoint blocks of each point's events, in stored (file) order. Without --dc9-column,
--dc9-true, --truth or a dc9 column the truth is unknown: bias, mse and the pulls are nan and sigma_crb is
taken at the mean estimate. With --coefficients on --events-file, each coefficient's truth column is its shift
column (dc9, dc10, dc9p, dc10p; --column-map dc10=COL names another): the file has all of them or none. Every part is checked against the manifest's sha256 before it is used.

The CSV has one row per point: dc9_true, n_sets, n_events, mean, bias, sigma, sigma_left, sigma_right,
sigma_crb, sigma_over_crb, mse, pull_mean, pull_width, coverage_68, coverage_95 (of the intervals
estimate +- z * HESSE error; nan when the truth is unknown) and sigma_crb_image (nan: the fit sees no image).
With --nuisances bsz, delta C9 and the 19 BSZ form factors are fitted together (the prior as a constraint;
the errors are the profiled ones), and the CSV adds sigma_crb_eff and sigma_over_crb_eff. The tables over
delta C9 x form factors are built with flavio the first time (630 calls, minutes) and cached. A user's
events then need --level: the profiled pdf depends on it. --nuisances bsz+pc also profiles flavio's power
corrections (12 below the charmonium resonances, 6 above; tables from the helicity amplitudes, 281 calls for
[1.1, 6.0]), and sigma_crb_eff is then the bound with them profiled.

With several coefficients (a dataset that scans them, or --coefficients), every set is fitted for all of them
jointly and the CSV has, per point: <shift>_true for each, n_sets, n_events, then per coefficient the columns
above as <column>_<shift> (mean_dc10, sigma_over_crb_dc10, coverage_68_dc10, ...; sigma_crb_<shift> is the
marginal bound, the other coefficients free), corr_<a>_<b> of the estimates beside corr_crb_<a>_<b> of the
bound, and joint_coverage_68 / joint_coverage_95 of each set's own 68% / 95% ellipsoid (HESSE covariance,
chi-square quantile) with joint_ks_pvalue. The figure draws each pair's 68% regions beside the bound's.
"""

NUISANCE_COLUMNS = (("sigma_crb_eff", "CRB eff", "{:.4f}"), ("sigma_over_crb_eff", "sig/eff", "{:.3f}"))
"""With --nuisances bsz: the efficient bound (form factors profiled) and sigma over it."""

# The terminal shows the headline columns; the CSV (--out) has them all. (column, header, format)
COLUMNS = (
    ("dc9_true", "dC9", "{:+.3f}"), ("mean", "mean", "{:+.4f}"), ("bias", "bias", "{:+.4f}"),
    ("sigma", "sigma", "{:.4f}"), ("sigma_crb", "CRB", "{:.4f}"), ("sigma_over_crb", "sig/CRB", "{:.3f}"),
    ("pull_mean", "pull mu", "{:+.2f}"), ("pull_width", "pull sd", "{:.2f}"),
)


@click.command(epilog=EPILOG, short_help="Unbinned ML fit of delta C9 (or several coefficients) on sets, beside sigma_CRB.")
@click.option("--dataset", type=PATH, metavar="DIR", help="Dataset directory from 'wcscan generate' (or --events-file).")
@click.option("--events-file", metavar="FILE",
              help="Your own events: FILE.parquet, or FILE.root[:TREE] (needs pip install 'wcscan[root]').")
@click.option("--events-per-set", type=int, required=True, metavar="N", help="Events per set.")
@click.option("--sets", type=int, required=True, metavar="M", help="Sets per scan point.")
@click.option("--level", type=click.Choice(["gen", "det", "det_bkg"]), default=None,
              help="Event level (default: the dataset's; gen for --events-file).")
@click.option("--column-map", type=COLUMN_MAP, default=None,
              help="With --events-file: wcscan column = the file's column, e.g. q2=Q2,cos_theta_mu=ctl.")
@click.option("--dc9-column", metavar="COL",
              help="With --events-file: the file's true-dC9 column; one point per value (default: a dc9 column).")
@click.option("--dc9-true", type=FINITE, default=None, help="With --events-file: all rows are one point at this dC9.")
@click.option("--truth", type=TRUTH, default=None, metavar="dc9=V,dc10=V",
              help="With --events-file: all rows are one point with these true shifts, one per fitted coefficient.")
@click.option("--q2-window", "q2_windows", type=WINDOW, multiple=True,
              help="With --events-file: q2 window of the events in GeV^2; repeat for several (default: 1.1,6.0).")
@click.option("--nuisances", type=click.Choice(["none", "bsz", "bsz+pc"]), default="none", show_default=True,
              help="bsz: profile flavio's 19 BSZ B->K* form factors with their correlated prior (the bound real data "
                   "allow, sigma_crb_eff); bsz+pc: and flavio's power corrections; none: the hadronic inputs fixed "
                   "at their central values.")
@click.option("--coefficients", type=COEFFICIENTS, default=None, metavar="C9,C10,...",
              help="Fit these coefficients jointly (default: those the dataset scans, which must be among them).")
@click.option("--prior-scale", type=FINITE, default=None, metavar="S",
              help="With --nuisances bsz: the form-factor prior's widths times S (> 0)  [default: 1]")
@click.option("--out", type=PATH, metavar="FILE.csv", help="Write the per-point table as CSV, and its figure (.png) beside it.")
@common_options
def fit(dataset, events_file, events_per_set, sets, level, column_map, dc9_column, dc9_true, truth, q2_windows,
        nuisances, coefficients, prior_scale, out, quiet, verbose):
    """Cut each scan point's events into disjoint sets, fit delta C9 (or several coefficients jointly) on each
    with an unbinned maximum-likelihood fit, and summarise per point beside the Cramer-Rao bound sigma_CRB."""
    from rich import box
    from rich.table import Table

    from orchestrator.evaluate.fit import POINT_COLUMNS
    from orchestrator.jobs.fit import fit_job

    res = fit_job(events_per_set, sets, dataset, events_file, level, column_map, dc9_column, dc9_true,
                  list(q2_windows) or None, out, progress_factory(quiet), nuisances=nuisances, prior_scale=prior_scale,
                  coefficients=coefficients, truth=truth)
    console = stdout()
    if res.rows and "mean" not in res.rows[0]:
        _print_joint(console, res, sets, events_per_set, nuisances)
        return
    columns = COLUMNS if nuisances == "none" else COLUMNS[:5] + NUISANCE_COLUMNS + COLUMNS[5:]
    what = {"none": "ML fit", "bsz": "Profiled ML fit (delta C9 + 19 BSZ form factors)",
            "bsz+pc": "Profiled ML fit (delta C9 + 19 BSZ form factors + power corrections)"}[nuisances]
    table = Table(title=f"{what}: {sets} sets x {events_per_set} events per point", box=box.SIMPLE_HEAD, pad_edge=False)
    for _, header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in res.rows:
        table.add_row(*(f.format(row[c]) for c, _, f in columns))
    console.print(table)
    if res.csv is not None:
        figure = f", and the figure {res.figure}" if res.figure is not None else " (no figure: the truth is unknown)"
        console.print(f"wrote all {len(POINT_COLUMNS)} columns to {res.csv}{figure}", soft_wrap=True)


def _print_joint(console, res, sets: int, events_per_set: int, nuisances: str) -> None:
    """The joint fit's headline: one line per (point, coefficient); then per point the joint coverage and each
    pair's correlation beside the bound's."""
    from rich import box
    from rich.table import Table

    rows = res.rows
    shifts = [k[: -len("_true")] for k in rows[0] if k.endswith("_true")]
    eff = nuisances != "none"
    t = Table(title=f"Joint ML fit of {', '.join(shifts)}: {sets} sets x {events_per_set} events per point",
              box=box.SIMPLE_HEAD, pad_edge=False)
    heads = ["point", "coef", "true", "mean", "bias", "sigma", "CRB", "sig/CRB"] + (["CRB eff", "sig/eff"] if eff else [])
    for h in heads + ["pull sd"]:
        t.add_column(h, justify="right", no_wrap=True)
    for k, r in enumerate(rows):
        for i, s in enumerate(shifts):
            cells = [f"{k:03d}" if i == 0 else "", s, f"{r[f'{s}_true']:+.3f}", f"{r[f'mean_{s}']:+.4f}",
                     f"{r[f'bias_{s}']:+.4f}", f"{r[f'sigma_{s}']:.4f}", f"{r[f'sigma_crb_{s}']:.4f}",
                     f"{r[f'sigma_over_crb_{s}']:.3f}"]
            if eff:
                cells += [f"{r[f'sigma_crb_eff_{s}']:.4f}", f"{r[f'sigma_over_crb_eff_{s}']:.3f}"]
            t.add_row(*cells, f"{r[f'pull_width_{s}']:.2f}")
    console.print(t)
    pairs = [(a, b) for i, a in enumerate(shifts) for b in shifts[i + 1:]]
    c = Table(title="Joint coverage of each set's ellipsoid; correlation of the estimates (the bound's)",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ["point", "joint 68%", "joint 95%", *(f"corr {a},{b}" for a, b in pairs)]:
        c.add_column(h, justify="right", no_wrap=True)
    for k, r in enumerate(rows):
        c.add_row(f"{k:03d}", f"{r['joint_coverage_68']:.2f}", f"{r['joint_coverage_95']:.2f}",
                  *(f"{r[f'corr_{a}_{b}']:+.2f} ({r[f'corr_crb_{a}_{b}']:+.2f})" for a, b in pairs))
    console.print(c)
    if res.csv is not None:
        console.print(f"wrote {len(rows[0])} columns to {res.csv}, and the figure {res.figure}", soft_wrap=True)

"""``wcscan run``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stage_printer, stdout, warn
from orchestrator.cli.types import RUN_CONFIG

EPILOG = """\b
Examples:
  wcscan run                                   # the demo config into out/demo
  wcscan run --config gen24k --out out/gen24k  # the generator-level study
  wcscan run --config my.yaml --tracking-uri http://127.0.0.1:5000
  wcscan run --config demo --workers 0         # no Ray: generate in this process

Shipped configs: demo, gen24k, det_bkg24k, det_res24k, seed-resnet34; with the form factors' prior demo-ff,
gen24k-ff, det_bkg24k-ff, gen24k-pc; several coefficients at once demo-c9c10, gen24k-c9c10, gen24k-c9c10-ff, gen-4wc (a config whose
theory.coefficients lists several runs the joint job: a design scan, the learned per-event ratio beside the
joint ML fit, evaluated at each N of evaluation.events_per_set). Writes OUT/report.md,
OUT/evaluation/<estimator>/points.csv and OUT/figures/; MLflow defaults to sqlite:///OUT/mlflow.db
(a parent run, one child per estimator). Compare the estimators in the UI:

\b
  mlflow ui --backend-store-uri sqlite:///$PWD/OUT/mlflow.db
"""


@click.command(epilog=EPILOG, short_help="The whole job: generate, images, train, evaluate against the CRB, MLflow.")
@click.option("--config", type=RUN_CONFIG, default="demo", show_default=True, metavar="NAME|FILE", help="Shipped config or a YAML file.")
@click.option("--out", type=PATH, default=None, metavar="DIR", help="Output directory (default: out/<config name>).")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db).")
@click.option("--workers", type=int, default=None, metavar="N", help="Generation actors (default: one per CPU; 0: no Ray).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (default: $RAY_ADDRESS or local).")
@click.option("--device", default=None, metavar="DEV",
              help="Torch device for training: cpu, cuda, cuda:N (default: the config's, else cuda if available).")
@common_options
def run(config, out, tracking_uri, workers, address, device, quiet, verbose):
    """Run the main job of a config: generate events on Ray, build images, train the 3D ResNet, Deep Sets and the
    event-by-event classifier, evaluate them and the ML fit on independent test MC beside the Cramer-Rao bound,
    and track everything in MLflow."""
    from rich import box
    from rich.table import Table

    from orchestrator.jobs.run import run_config
    from orchestrator.report.markdown import TERMINAL_COLUMNS, summary_header, summary_rows

    cfg, result = run_config(config, out, device=device, tracking_uri=tracking_uri, workers=workers, address=address,
                             progress=progress_factory(quiet), stage=stage_printer("run", quiet))
    console = stdout()
    if hasattr(result, "shifts"):  # several coefficients
        _print_joint(console, cfg, result)
        return
    ev0 = result.evaluations[0].rows[0]
    table = Table(title=f"{cfg.name}: {ev0['n_sets']} test sets x {ev0['n_events']} events per point; "
                  "sigma/sigma_CRB = 1 is optimal", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ["estimator"] + summary_header(TERMINAL_COLUMNS, result.evaluations):
        table.add_column(h, justify="right", no_wrap=True)
    for row in summary_rows(result.evaluations, TERMINAL_COLUMNS):
        table.add_row(*row)
    console.print(table)
    _print_where(console, result)


def _print_where(console, result) -> None:
    console.print(f"report: {result.report}", soft_wrap=True)
    if result.unlogged:
        warn(result.unlogged)
    else:
        console.print(f"MLflow: {result.tracking_uri} (parent run {result.run_id})", soft_wrap=True)


def _print_joint(console, cfg, result) -> None:
    from rich import box
    from rich.table import Table

    for n in cfg.evaluation.events_per_set:
        table = Table(title=f"{cfg.name}: {cfg.evaluation.sets} test sets x {n:,} events per point; "
                      "sigma/sigma_CRB = 1 is optimal", box=box.SIMPLE_HEAD, pad_edge=False)
        eff = f"sigma_over_crb_eff_mean_{result.shifts[0]}_N{n}" in result.evaluations[0].summary
        heads = ("estimator", "coef", "s/CRB", "max", "|b|/CRB") + (("s/eff", "|b|/eff") if eff else ()) + (
            "corr gap" + (" (eff)" if eff else ""), "joint68", "joint95")
        for h in heads:
            table.add_column(h, justify="right", no_wrap=True)
        for ev in result.evaluations:
            s = ev.summary
            for i, c in enumerate(result.shifts):
                first = i == 0
                extra = (f"{s[f'sigma_over_crb_eff_mean_{c}_N{n}']:.3f}",
                         f"{s[f'abs_bias_over_crb_eff_max_{c}_N{n}']:.2f}") if eff else ()
                table.add_row(ev.name if first else "", c, f"{s[f'sigma_over_crb_mean_{c}_N{n}']:.3f}",
                              f"{s[f'sigma_over_crb_max_{c}_N{n}']:.3f}", f"{s[f'abs_bias_over_crb_max_{c}_N{n}']:.2f}",
                              *extra, f"{s[f'corr_gap_eff_max_N{n}' if eff else f'corr_gap_max_N{n}']:.3f}"
                              if first else "",
                              f"{s[f'joint_coverage_68_mean_N{n}']:.3f}" if first else "",
                              f"{s[f'joint_coverage_95_mean_N{n}']:.3f}" if first else "")
        console.print(table)
    _print_where(console, result)

"""``wcscan globalfit``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, progress_factory, stage_printer, stdout, warn
from orchestrator.cli.types import GLOBALFIT_CONFIG

EPILOG = """\b
Examples:
  wcscan globalfit                                  # the seed study's 37 observables, into out/globalfit-lhcb-seed
  wcscan globalfit --config demo --out out/gf-demo  # 6 observables on a small grid, about a minute
  wcscan globalfit --config my.yaml --workers 0     # no Ray: flavio in this process
  wcscan globalfit --tracking-uri http://127.0.0.1:5000

Shipped configs: lhcb-seed, demo (orchestrator/config/presets/globalfit/). Writes OUT/summary.csv
(method, c9, c10, chi2, delta_chi2, sigma_c9, sigma_c10, seconds), OUT/chi2_grid.parquet,
OUT/cgan_samples.parquet, OUT/figures/ and OUT/report.md; MLflow defaults to sqlite:///OUT/mlflow.db
(a parent run, one child per method). flavio's theory covariance, the surrogate and the grid predictions
are cached under $WCSCAN_CACHE (default ~/.cache/wcscan)/globalfit: a second run reads them.
"""


@click.command(epilog=EPILOG, short_help="The binned global fit to LHCb data: chi^2 minimum, flavio, NN, cGAN.")
@click.option("--config", type=GLOBALFIT_CONFIG, default="lhcb-seed", show_default=True, metavar="NAME|FILE",
              help="Shipped globalfit config or a YAML file.")
@click.option("--out", type=PATH, default=None, metavar="DIR", help="Output directory (default: out/globalfit-<name>).")
@click.option("--workers", type=int, default=None, metavar="N",
              help="Ray actors for flavio's predictions (default: the config's, else one per CPU; 0: no Ray).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (default: $RAY_ADDRESS or local).")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db).")
@common_options
def globalfit(config, out, workers, address, tracking_uri, quiet, verbose):
    """Fit the shifts of C9 and C10 to binned LHCb measurements: the chi^2 minimum with its contours and the SM's
    pull, flavio's own likelihood as a cross-check, a neural-network inverse map and a conditional GAN, side by side."""
    from rich import box
    from rich.table import Table

    from orchestrator.jobs.globalfit import globalfit_config
    from orchestrator.report.globalfit import SUMMARY_HEADER, summary_cells

    cfg, result = globalfit_config(config, out, tracking_uri=tracking_uri, workers=workers, address=address,
                                   progress=progress_factory(quiet), stage=stage_printer("globalfit", quiet))
    y = result.yardstick
    table = Table(title=f"{cfg.name}: χ²_min {y.fit.chi2_min:.2f} for {len(y.central)} observables; "
                  f"SM pull {y.sm_pull:.2f}σ", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in SUMMARY_HEADER:
        table.add_column(h, justify="right", no_wrap=True)
    for row in summary_cells(result.rows):
        table.add_row(*row)
    console = stdout()
    console.print(table)
    console.print(f"report: {result.report} ({result.seconds:.0f} s)", soft_wrap=True)
    if result.unlogged:
        warn(result.unlogged)
    else:
        console.print(f"MLflow: {result.tracking_uri} (parent run {result.run_id})", soft_wrap=True)

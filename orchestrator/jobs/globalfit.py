"""``wcscan globalfit``: the binned global fit to LHCb data in (C9, C10), the chi^2 optimum beside a NN and a cGAN.

check everything (config, ``--workers``, ``--out``, the observable set against
flavio's database, the experimental covariance) -> theory inputs on Ray, cached
(:mod:`orchestrator.generate.predictions`) -> the chi^2 yardstick -> flavio's
likelihood on a stencil (a Ray task that runs while the networks train; its
result cached like the theory inputs) -> NN inverse map -> cGAN and its
calibration (:mod:`orchestrator.evaluate.globalfit`); with ``nuisances: true``
also the hadronic nuisances, profiled (``chi2_nuisance``) and learned by a
second inverse map of (C9, C10, a) (``nn_nuisance``,
:mod:`orchestrator.evaluate.nuisances`) -> ``OUT/summary.csv``, ``chi2_grid.parquet``, ``cgan_samples.parquet``,
figures and ``report.md`` (:mod:`orchestrator.report.globalfit`) -> MLflow: a
parent run (the config, the observable set's key, the report, tables and
figures) and one child run per method (its point, widths, timings, training
curves and weights).

Nothing is written, to ``OUT`` or to the cache, before every check has passed:
an unknown observable or measurement, a measurement that constrains none of
the listed observables, a singular covariance or an unusable ``--out`` is one
line and exit status 2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.checks import device as check_device
from orchestrator.config.checks import non_negative_int, output_dir
from orchestrator.config.globalfit import GlobalFitConfig, load_globalfit_config
from orchestrator.runtime.progress import ProgressFactory, no_progress

__all__ = ["GlobalFitResult", "run_globalfit", "globalfit_config", "METHOD_ORDER"]

log = logging.getLogger(__name__)

#: The summary's row order (the contract's four first; ``nn_nuisance`` and ``chi2_nuisance`` with ``nuisances: true``).
METHOD_ORDER = ("chi2_min", "flavio", "nn", "nn_nuisance", "cgan", "grid_min", "chi2_nuisance")


@dataclass
class GlobalFitResult:
    out: Path
    rows: list  # MethodResult, in METHOD_ORDER
    yardstick: object
    files: dict
    report: Path
    run_id: str
    tracking_uri: str
    seconds: float
    #: One line, when the tracking store stopped answering: what it did not get and how to log it later.
    unlogged: str | None = None


def _log_method(tracker, r) -> None:
    """One child run: the row, the method's figures and settings, its training curves and weights."""
    from orchestrator.report.globalfit import summary_row

    tracker.params(r.params)
    tracker.tags({"method": r.method})
    tracker.metrics({k: v for k, v in {**summary_row(r), **r.metrics}.items() if k != "method"})
    for key, values in (r.history or {}).items():
        if isinstance(values, list):
            for step, v in enumerate(values):
                tracker.metrics({key: v}, step=step)
    if r.model is not None:
        tracker.model(r.model)


def _train(cfg: GlobalFitConfig, y, stage, nuisance=None):
    """The NN (and, given the ``chi2_nuisance`` row, the NN with nuisances) and the cGAN on one torch thread
    (restored afterwards); returns the rows and the cGAN's samples."""
    import torch

    from orchestrator.evaluate.globalfit import fit_cgan, fit_nn
    from orchestrator.evaluate.nuisances import fit_nn_nuisance

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stage("training the NN inverse map")
        rows = [fit_nn(y, cfg.inverse_map_config(), cfg.asimov, cfg.seed)]
        if nuisance is not None:
            stage("training the NN inverse map of (C9, C10) and the hadronic nuisances")
            rows.append(fit_nn_nuisance(y, cfg.inverse_map_config(), cfg.asimov, cfg.seed, nuisance))
        stage(f"training the cGAN; its coverage on {cfg.coverage.pseudo_experiments} pseudo-experiments")
        cgan, samples = fit_cgan(y, cfg.cgan_config(), cfg.cgan_samples, cfg.coverage, cfg.seed)
    finally:
        torch.set_num_threads(threads)
    return [*rows, cgan], samples


def run_globalfit(cfg: GlobalFitConfig, obs_set, experimental: tuple, out: Path, *, tracking_uri: str | None = None,
                  workers: int | None = None, address: str | None = None, progress: ProgressFactory = no_progress,
                  stage: Callable[[str], None] = log.info) -> GlobalFitResult:
    """Run the global fit of ``cfg`` on ``obs_set`` and its ``experimental`` (central, cov) into ``out``.

    ``workers``: Ray actors for the theory inputs (None: the config's, else one per CPU; 0: no Ray);
    ``address``: a Ray cluster to join; ``progress``/``stage``: see :mod:`orchestrator.runtime.progress`.
    """
    from importlib.metadata import version

    from orchestrator.evaluate import globalfit as ev
    from orchestrator.evaluate.nuisances import nuisance_fit
    from orchestrator.generate.predictions import theory_inputs
    from orchestrator.report import globalfit as rep
    from orchestrator.track.runs import Tracker

    t0 = time.perf_counter()
    workers = cfg.workers if workers is None else workers
    central, cov_exp = experimental
    stage(f"theory inputs: {len(obs_set)} observables on a {len(cfg.grid.c9)} x {len(cfg.grid.c10)} grid, "
          f"Sigma_th from {cfg.theory_covariance.draws} draws (cached after the first run)")
    tc, sc = cfg.theory_covariance, cfg.surrogate
    inputs = theory_inputs(
        obs_set, cfg.grid.c9, cfg.grid.c10, draws=tc.draws, seed=tc.seed, chunks=tc.chunks,
        surrogate=sc.model_dump(exclude={"enabled"}) if sc.enabled else None, chunk=cfg.grid.chunk,
        workers=workers, address=address, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    with Tracker(out, tracking_uri or cfg.mlflow.tracking_uri, cfg.mlflow.experiment, run_name=f"globalfit-{cfg.name}") as tracker:
        tracker.params(cfg.model_dump())
        tracker.tags({"kind": "globalfit", "config": cfg.name, "observable_set_key": obs_set.key,
                      "flavio": version("flavio"), "theory_inputs_cached": all(inputs.cached.values())})
        tracker.metrics({f"seconds_{k}": v for k, v in inputs.seconds.items()})
        stage("chi2: grid, MIGRAD minimum, SM pull, seed spread of Sigma_th")
        y, rows = ev.yardstick(inputs, central, cov_exp)
        nuisance = nuisance_fit(y) if cfg.nuisances else None
        rows += [nuisance] if nuisance is not None else []
        fc = cfg.flavio_check
        finish = ev.start_flavio_check(y, fc.n_exp, fc.stencil, cfg.seed, workers != 0, address) if fc.enabled else None
        learned, samples = _train(cfg, y, stage, nuisance)
        rows += learned
        if finish is not None:
            stage("flavio's FastLikelihood on the stencil around the minimum")
            rows.append(finish())
        rows.sort(key=lambda r: METHOD_ORDER.index(r.method))
        for r in rows:
            with tracker.child(r.method):
                _log_method(tracker, r)

        stage("tables, figures and report")
        files = rep.write_tables(out, rows, y, samples)
        figures = {"contours": rep.plot_contours(y, rows, samples, out / "figures" / "contours.png"),
                   "observables": rep.plot_observables(y, out / "figures" / "observables.png")}
        tracker.metrics({"chi2_min": y.fit.chi2_min, "sm_pull": y.sm_pull, "chi2_sm": y.chi2_sm})
        seconds = time.perf_counter() - t0
        report = rep.write_report(out, cfg, rows, y, figures, {"flavio": version("flavio"), "seconds": seconds},
                                  tracker.uri, tracker.run_id or "(not logged)")
        for path in (report, *files.values()):
            tracker.artifact(path)
        for path in figures.values():
            tracker.artifact(path, "figures")
        tracker.metrics({"seconds_total": time.perf_counter() - t0})
    return GlobalFitResult(out, rows, y, {**files, **figures}, report, tracker.run_id, tracker.uri,
                           time.perf_counter() - t0, tracker.unlogged())


def globalfit_config(config: str | Path = "lhcb-seed", out: Path | None = None, *, workers: int | None = None,
                     **options) -> tuple[GlobalFitConfig, GlobalFitResult]:
    """``wcscan globalfit``: every check first (cheap, nothing written), then :func:`run_globalfit` with ``options``."""
    from kernels.observables import experimental, load_observable_set
    from orchestrator.config.services import check_services
    from orchestrator.track.runs import tracking_source

    cfg = load_globalfit_config(config)
    if workers is not None:
        non_negative_int(workers, "--workers")
    check_device(cfg.device, f"config {cfg.name}: device")
    out = output_dir(Path(out) if out is not None else Path("out") / f"globalfit-{cfg.name}")
    uri, source = tracking_source(out, options.get("tracking_uri"), cfg.mlflow.tracking_uri)
    check_services(out, tracking_uri=uri, tracking_name=source, address=options.get("address"),
                   uses_ray=(cfg.workers if workers is None else workers) != 0)
    obs_set = load_observable_set(cfg.observables)
    data = experimental(obs_set)  # a singular experimental covariance: one line naming the entry
    return cfg, run_globalfit(cfg, obs_set, data, out, workers=workers, **options)

"""``wcscan run`` over several Wilson coefficients: a design scan -> the event ratio -> the joint evaluation.

generate the scan's design on Ray (Parquet, one partition per point) -> train the per-event ratio
(:mod:`models.event_ratio`) on the scan's events, calibrate it on fresh Standard-Model events; Deep Sets and
the 3D ResNet with multivariate Gaussian heads, if configured -> at every
point of the evaluation design and every set size N, draw independent test sets and fit each with every
estimator (the joint ML fit and the learned ratio, on the same sets) -> one row per (point, N) with each
coefficient's metrics beside its marginal bound, the correlations beside the bound's and the joint coverage
(:func:`kernels.metrics.joint_point_metrics`) -> ``OUT/evaluation/<estimator>/points.csv``, figures,
``OUT/report.md`` and MLflow (a parent run, a child per estimator).

Seed streams: the scan's chunks ``(seed, point, chunk)``; the test sets ``(seed, 20000 + point, N index)``;
the calibration events ``(seed, 30000)``; the Deep Sets' rho sets ``(seed, 40000, set)`` and moments
``(seed, 50000, point)`` (:mod:`orchestrator.jobs.joint_train`); the ResNet's images ``(seed, 60000, image)``,
``(seed, 70000, image)`` and ``(seed, 70001, image)`` (:mod:`orchestrator.jobs.joint_resnet`): no test set
shares an event with training or calibration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.config.joint_run import JointRunConfig
from orchestrator.runtime.progress import ProgressFactory, no_progress

log = logging.getLogger(__name__)

__all__ = ["JointEvaluation", "JointJobResult", "joint_run_job", "check_joint_services"]

TEST_POINT_OFFSET = 20_000


@dataclass
class JointEvaluation:
    """One estimator's rows (one per (point, N), :func:`kernels.metrics.joint_columns`) and their summary."""

    name: str
    rows: list[dict]
    summary: dict = field(default_factory=dict)


@dataclass
class JointJobResult:
    out: Path
    shifts: tuple[str, ...]
    evaluations: list[JointEvaluation]
    report: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    unlogged: str | None = None
    histories: dict = field(default_factory=dict)


def check_joint_services(cfg: JointRunConfig, out: Path, tracking_uri: str | None, address: str | None) -> None:
    """The MLflow store, the Ray cluster and the room on disk for the scan's events, before any work."""
    from orchestrator.config.services import check_services, event_bytes
    from orchestrator.track.runs import tracking_source

    n = cfg.scan_design().n_points
    need = event_bytes(n, cfg.scan.events_per_point, "gen") + 8 * n * cfg.scan.events_per_point * (len(cfg.shift_columns) - 1)
    uri, source = tracking_source(out, tracking_uri, cfg.mlflow.tracking_uri)
    check_services(out, need, tracking_uri=uri, tracking_name=source, address=address)


def joint_run_job(cfg: JointRunConfig, out: Path, *, tracking_uri: str | None = None, workers: int | None = None,
                  address: str | None = None, progress: ProgressFactory = no_progress,
                  stage: Callable[[str], None] = lambda msg: log.info(msg)) -> JointJobResult:
    """Run the joint job of ``cfg`` into ``out``; see the module docstring."""
    from kernels import likelihood, metrics, theory
    from kernels.event_store import MANIFEST
    from kernels.files import sha256_file
    from models.event_ratio import fit_sets_learned
    from orchestrator.evaluate.fit import write_points_csv
    from orchestrator.evaluate.joint import add_efficient_bound, add_image_bound, joint_summary
    from orchestrator.generate.dataset import generate
    from orchestrator.jobs.joint_train import train_event_ratio, train_joint_deepsets
    from orchestrator.report.joint import write_joint_report
    from orchestrator.track.runs import Tracker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    windows = [tuple(w) for w in cfg.theory.windows]
    shifts = cfg.shift_columns
    scan, evald = cfg.scan_design(), cfg.evaluation_design()
    nc = cfg.nuisances
    ntable = None
    if nc.form_factors != "none":  # before Ray starts: the table's flavio processes fork from this one
        from kernels import nuisances

        stage(f"bi-quadratic theory tables over {' x '.join(shifts)} x the BSZ form factors (cached after the first run)")
        with progress("theory tables", nuisances.n_evaluations(len(shifts), 19) + 1, "flavio calls") as adv:
            ntable = nuisances.nuisance_table(list(cfg.theory.coefficients), windows, nc.form_factors, workers=2,
                                              progress=adv or None)
    stage(f"generating {scan.n_points} points x {cfg.scan.events_per_point} events over {', '.join(shifts)}")
    events_dir = out / "events"
    with progress("generate", scan.n_points * cfg.scan.events_per_point, "events") as adv:
        generate(events_dir, None, cfg.scan.events_per_point, cfg.seed, windows, cfg.scan.chunk_size, adv,
                 workers=workers if workers is not None else cfg.scan.workers, address=address, design=scan)
    table = theory.jtable(list(cfg.theory.coefficients), windows)
    checksum = sha256_file(events_dir / MANIFEST)
    ec = cfg.evaluation
    fitters: dict = {}
    histories: dict = {}
    with Tracker(out, tracking_uri or cfg.mlflow.tracking_uri, cfg.mlflow.experiment, run_name=cfg.name) as tracker:
        tracker.params(cfg.model_dump())
        tracker.tags({"dataset_manifest_sha256": checksum, "config": cfg.name, "coefficients": ",".join(shifts)})
        if cfg.models.ml_fit.enabled:
            fitters["ml_fit"] = lambda sets, adv: likelihood.fit_sets(table, sets, progress=adv or None)
            if ntable is not None:  # the form factors profiled with their prior: the fit real data allow
                from kernels import profile

                norm = profile.profile_normalisation(ntable)
                fitters["ml_fit_profiled"] = lambda sets, adv: profile.fit_sets_profiled(
                    ntable, sets, prior_scale=nc.prior_scale, progress=adv or None, norm=norm)
        er = cfg.models.event_ratio
        net = None
        if er is not None and er.enabled:
            with tracker.child("event_ratio"):
                net, hist = train_event_ratio(cfg, table, scan, events_dir, tracker, progress, stage)
                histories["event_ratio"] = hist
            fitters["event_ratio"] = lambda sets, adv: fit_sets_learned(net, sets, progress=adv or None)
        ds = cfg.models.deepsets
        deepsets = None
        if ds is not None and ds.enabled:
            with tracker.child("deepsets"):
                deepsets, histories["deepsets"] = train_joint_deepsets(cfg, table, scan, events_dir, tracker,
                                                                       progress, stage)
            fitters["deepsets"] = lambda sets, adv: _Estimates(*deepsets.estimate(sets, progress=adv or None))
        rc = cfg.models.resnet3d
        resnet = None
        if rc is not None and rc.enabled:
            from kernels.image_information import image_information
            from models.resnet_joint import set_images
            from orchestrator.jobs.joint_resnet import train_joint_resnet

            with tracker.child("resnet3d"):
                resnet, histories["resnet3d"] = train_joint_resnet(cfg, table, scan, tracker, progress, stage)
            fitters["resnet3d"] = lambda sets, adv: _Estimates(*resnet.estimate(set_images(sets, rc.bins),
                                                                                progress=adv or None))
        models = {"event_ratio": net, "deepsets": deepsets, "resnet3d": resnet}
        rows: dict[str, list[dict]] = {name: [] for name in fitters}
        n_sets_total = len(evald.points) * len(ec.events_per_set) * ec.sets * len(fitters)
        stage(f"evaluating {', '.join(fitters)} on {len(evald.points)} points x {ec.sets} independent test sets at "
              f"N = {', '.join(f'{n:,}' for n in ec.events_per_set)}")
        columns = metrics.joint_columns(shifts, nuisances=ntable is not None)
        with progress("evaluate", n_sets_total, "sets") as adv:
            for i, c in enumerate(evald.points):
                fisher = likelihood.fisher_information(table, c)
                I_nuis = None if ntable is None else likelihood.fisher_information_nuisances(ntable, c)
                I_image = None if resnet is None else image_information(table, c, rc.bins)["image"]
                for j, n in enumerate(ec.events_per_set):
                    sets = _test_sets(table, ntable, nc.prior_scale, c, n, ec.sets, cfg.seed, i, j)
                    bound = np.linalg.inv(fisher) / n
                    eff = None if ntable is None else likelihood.efficient_bound(
                        I_nuis, len(shifts), n, np.eye(ntable.n_nuisances) / nc.prior_scale**2)
                    for name, fit in fitters.items():
                        res = fit(sets, adv)
                        row = metrics.joint_point_metrics(res.values, res.covariances, truth=c, crb_covariance=bound,
                                                          n_events=n, shifts=shifts)
                        if eff is not None:
                            add_efficient_bound(row, shifts, *eff)
                        extra = ()
                        if name == "resnet3d":  # beside the bound of what its images keep
                            extra = add_image_bound(row, shifts, I_image, n)
                        rows[name].append({k: row[k] for k in columns + extra})
        evaluations = [JointEvaluation(name, r, joint_summary(r, shifts)) for name, r in rows.items()]
        figures = _figures(out / "figures", evaluations, shifts, ec.events_per_set)
        for ev in evaluations:
            path = write_points_csv(ev.rows, out / "evaluation" / ev.name / "points.csv")
            with tracker.child(ev.name, run_id=_child_id(tracker, ev.name)):
                tracker.tags({"estimator": ev.name, "dataset_manifest_sha256": checksum})
                tracker.metrics(ev.summary)
                tracker.artifact(path, "evaluation")
                if models.get(ev.name) is not None:
                    tracker.model(models[ev.name])
        report = write_joint_report(out, cfg, evaluations, figures, checksum, tracker.uri,
                                    tracker.run_id or "(not logged)")
        for f in figures:
            tracker.artifact(f, "figures")
        tracker.artifact(report)
        run_id, uri = tracker.run_id, tracker.uri
    return JointJobResult(out, shifts, evaluations, report, run_id, uri, tracker.unlogged(), histories)


@dataclass
class _Estimates:
    """A network's estimates ``(M, n)`` and per-set covariances ``(M, n, n)``, as a fit's result reads."""

    values: np.ndarray
    covariances: np.ndarray


def _test_sets(table, ntable, prior_scale: float, c, n: int, n_sets: int, seed: int, i: int, j: int) -> np.ndarray:
    """``n_sets`` independent sets of ``n`` events at the shifts ``c``, ``(n_sets, n, 4)``: from ``table``, or, with
    the form factors' tables ``ntable``, each set in its own world drawn from their prior (world k of point i at
    size index j: :func:`kernels.nuisances.draw_worlds` of point ``TEST_POINT_OFFSET + 100 i + j``)."""
    from kernels import sampler

    if ntable is None:
        return sampler.sample_array(table, c, n_sets * n, (seed, TEST_POINT_OFFSET + i, j)).T.reshape(n_sets, n, 4)
    from kernels.nuisances import draw_worlds

    worlds = draw_worlds(n_sets, ntable.n_nuisances, prior_scale, seed, TEST_POINT_OFFSET + 100 * i + j)
    return np.stack([sampler.sample_array(ntable.at(u), c, n, (seed, TEST_POINT_OFFSET + i, j, k)).T
                     for k, u in enumerate(worlds)])


def _child_id(tracker, name: str) -> str | None:
    """The id of this job's child run ``name`` if it exists already (the event ratio's, opened for training)."""
    for run in tracker.children():
        if run.info.run_name == name:
            return run.info.run_id
    return None


def _figures(fig_dir: Path, evaluations, shifts, ns) -> list[Path]:
    from orchestrator.report import plots

    figures = []
    for ev in evaluations:
        for n in ns:
            rows = [r for r in ev.rows if r["n_events"] == n]
            figures.append(plots.plot_joint_fit(
                rows, shifts, fig_dir / f"{ev.name}_regions_N{n}.png",
                title=f"{ev.name}: 68% regions of the estimates beside the bound's, {rows[0]['n_sets']} sets x {n:,} events"))
    figures.append(plots.plot_joint_sigma_over_crb(evaluations, shifts, fig_dir / "sigma_over_crb.png"))
    return figures

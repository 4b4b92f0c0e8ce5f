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

from orchestrator.config.joint_run import JointRunConfig
from orchestrator.jobs.joint_evaluate import JointEvaluation, estimators, evaluate_joint, joint_figures
from orchestrator.runtime.progress import ProgressFactory, no_progress

log = logging.getLogger(__name__)

__all__ = ["JointEvaluation", "JointJobResult", "joint_run_job", "check_joint_services"]


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
    from kernels import theory
    from kernels.event_store import MANIFEST
    from kernels.files import sha256_file
    from orchestrator.evaluate.fit import write_points_csv
    from orchestrator.generate.dataset import generate
    from orchestrator.jobs.joint_train import train_event_ratio, train_joint_deepsets
    from orchestrator.report.joint import write_joint_report
    from orchestrator.track.runs import Tracker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    windows = [tuple(w) for w in cfg.theory.windows]
    shifts = cfg.shift_columns
    scan = cfg.scan_design()
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
    histories: dict = {}
    networks: dict = {}
    with Tracker(out, tracking_uri or cfg.mlflow.tracking_uri, cfg.mlflow.experiment, run_name=cfg.name) as tracker:
        tracker.params(cfg.model_dump())
        tracker.tags({"dataset_manifest_sha256": checksum, "config": cfg.name, "coefficients": ",".join(shifts)})
        er = cfg.models.event_ratio
        if er is not None and er.enabled:
            with tracker.child("event_ratio"):
                networks["event_ratio"], histories["event_ratio"] = train_event_ratio(cfg, table, scan, events_dir,
                                                                                       tracker, progress, stage)
        ds = cfg.models.deepsets
        if ds is not None and ds.enabled:
            with tracker.child("deepsets"):
                networks["deepsets"], histories["deepsets"] = train_joint_deepsets(cfg, table, scan, events_dir,
                                                                                   tracker, progress, stage)
        rc = cfg.models.resnet3d
        if rc is not None and rc.enabled:
            from orchestrator.jobs.joint_resnet import train_joint_resnet

            with tracker.child("resnet3d"):
                networks["resnet3d"], histories["resnet3d"] = train_joint_resnet(cfg, table, scan, tracker, progress,
                                                                                 stage)
        fitters = estimators(cfg, table, ntable, cfg.models.ml_fit.enabled, networks)
        evaluations = evaluate_joint(cfg, table, fitters, ntable, progress, stage)
        figures = joint_figures(out / "figures", evaluations, shifts, ec.events_per_set)
        for ev in evaluations:
            path = write_points_csv(ev.rows, out / "evaluation" / ev.name / "points.csv")
            with tracker.child(ev.name, run_id=_child_id(tracker, ev.name)):
                tracker.tags({"estimator": ev.name, "dataset_manifest_sha256": checksum})
                tracker.metrics(ev.summary)
                tracker.artifact(path, "evaluation")
                if networks.get(ev.name) is not None:
                    tracker.model(networks[ev.name])
        report = write_joint_report(out, cfg, evaluations, figures, checksum, tracker.uri,
                                    tracker.run_id or "(not logged)")
        for f in figures:
            tracker.artifact(f, "figures")
        tracker.artifact(report)
        run_id, uri = tracker.run_id, tracker.uri
    return JointJobResult(out, shifts, evaluations, report, run_id, uri, tracker.unlogged(), histories)


def _child_id(tracker, name: str) -> str | None:
    """The id of this job's child run ``name`` if it exists already (the event ratio's, opened for training)."""
    for run in tracker.children():
        if run.info.run_name == name:
            return run.info.run_id
    return None

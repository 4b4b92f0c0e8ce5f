"""``wcscan run``: the whole job from one config.

generate (Ray) -> images -> train the 3D ResNet, Deep Sets and the event-by-event
classifier -> evaluate them and the ML fit on independent test MC beside the
Cramér–Rao bound -> MLflow (a parent run, a child per estimator), figures,
``OUT/report.md`` and ``OUT/evaluation/<estimator>/points.csv``.

Seed streams (see :mod:`kernels.bootstrap`): generator chunks ``(seed, point,
chunk)``; Deep Sets training sets by index from the training part of each
point's events; evaluation sets ``(seed, evaluation.EVAL_POINT_OFFSET + i, 2*10**6 + k)``,
fresh MC that no training input shares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels.event_store import MANIFEST
from kernels.files import sha256_file
from orchestrator.config.checks import device as check_device
from orchestrator.config.checks import non_negative_int, output_dir
from orchestrator.config.run import RunConfig, load_config
from orchestrator.evaluate.estimators import (
    Evaluation,
    evaluate,
    evaluation_sets,
    evaluation_worlds,
    image_bins,
    image_bounds,
)
from orchestrator.jobs.event_posterior import train_event_posterior, train_nuisance_posterior
from orchestrator.runtime.progress import ProgressFactory, no_progress
from orchestrator.track.epochs import EpochLogger

log = logging.getLogger(__name__)

"""Evaluation points are numbered from here in the seed streams, apart from the scan's points."""


@dataclass
class JobResult:
    out: Path
    evaluations: list[Evaluation]
    histories: dict = field(default_factory=dict)
    report: Path | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    #: One line, when the tracking store stopped answering: what it did not get and how to log it later.
    unlogged: str | None = None


def _train_config(tc, cfg: RunConfig, **override):
    from models.training import TrainConfig

    kw = tc.model_dump()
    kw.update(seed=cfg.seed, device=cfg.device, **override)
    return TrainConfig(**kw)


def _train_resnet(cfg: RunConfig, images_dir: Path, grid, tracker, progress, ntable=None):
    from kernels.image_store import open_images
    from models.data import image_dataset
    from models.resnet3d import ResNet3d
    from models.training import seed_everything, train
    from orchestrator.build.stream import releasing, streamed_data

    rc = cfg.models.resnet3d
    tc = _train_config(rc.train, cfg, loss=rc.training_loss)
    if rc.summary == "score":
        from orchestrator.jobs.resnet_score import train_score_resnet

        return train_score_resnet(cfg, _train_config(rc.phi_train, cfg), tc,
                                  lambda adv, prefix="": EpochLogger(tracker, adv, prefix), progress, ntable=ntable)
    seed_everything(cfg.seed)  # the initial weights are part of the run: same config, same network
    if rc.data == "stream":
        train_set, val_set, fit = streamed_data(cfg, "resnet3d", tc)
    else:
        fit = [open_images(images_dir, "train", p) for p in range(len(grid))]
        va = [open_images(images_dir, "val", p) for p in range(len(grid))]
        train_set, val_set = image_dataset(fit, grid), image_dataset(va, grid)
    net = ResNet3d(depth=rc.depth, width=rc.width, dropout=rc.dropout, head=rc.head).fit_preprocess(fit)
    with progress("train resnet3d", tc.epochs, "epochs") as adv, releasing(train_set):
        hist = train(net, train_set, val_set, tc, on_epoch=EpochLogger(tracker, adv))
    return net, hist


def _train_deepsets(cfg: RunConfig, pools, grid, tracker, progress, table, det, ntable=None):
    from models.deepsets import DeepSets
    from models.splits import deepsets_data
    from models.training import seed_everything, train
    from orchestrator.build.stream import releasing, streamed_data

    dc = cfg.models.deepsets
    tc = _train_config(dc.train, cfg, loss=dc.training_loss)
    if dc.summary == "score":
        from orchestrator.jobs.deepsets_score import train_score_deepsets

        return train_score_deepsets(cfg, table, det, cfg.scan.level, _train_config(dc.phi_train, cfg), tc, pools,
                                    lambda adv, prefix="": EpochLogger(tracker, adv, prefix), progress,
                                    ntable=ntable)
    seed_everything(cfg.seed)
    if dc.data == "stream":
        train_set, val_set, sample = streamed_data(cfg, "deepsets", tc)
    else:
        train_set, val_set, sample = deepsets_data(pools, grid, dc.set_size, dc.sets_per_point, cfg.seed)
    net = DeepSets(hidden=dc.hidden, phi_layers=dc.phi_layers, latent=dc.hidden, rho_layers=dc.rho_layers, pool=dc.pooling,
                   head=dc.head)
    net.fit_features(sample)
    with progress("train deepsets", tc.epochs, "epochs") as adv, releasing(train_set):
        hist = train(net, train_set, val_set, tc, on_epoch=EpochLogger(tracker, adv))
    return net, hist


def _train_classifier(cfg: RunConfig, pools, grid, tracker, progress):
    from models.data import EventDataset
    from models.event_classifier import EventClassifier
    from models.splits import split_pool
    from models.training import seed_everything, train
    from orchestrator.build.stream import releasing, streamed_data

    cc = cfg.models.event_classifier
    seed_everything(cfg.seed)
    tc = _train_config(cc.train, cfg, loss="cross_entropy")
    if cc.data == "stream":
        train_set, val_set, fit_set = streamed_data(cfg, "event_classifier", tc)
    else:
        parts = [split_pool(p, cc.events_per_point) for p in pools]
        classes = list(range(len(grid)))
        train_set = EventDataset.from_pools([t for t, _ in parts], classes)
        val_set = EventDataset.from_pools([v for _, v in parts], classes)
        fit_set = train_set
    net = EventClassifier(grid, hidden=cc.hidden, layers=cc.layers, head=cc.head)
    net.fit_features(fit_set.tensors[0].numpy()).set_prior(fit_set.classes)
    with progress("train event classifier", tc.epochs, "epochs") as adv, releasing(train_set):
        hist = train(net, train_set, val_set, tc, on_epoch=EpochLogger(tracker, adv))
    return net, hist


def _write_worlds(path: Path, worlds: dict, names) -> None:
    """``OUT/evaluation/worlds.csv``: the whitened nuisances of every test set (dc9_true, set, u:<name>...)."""
    from kernels.files import atomic_write_text

    lines = [",".join(["dc9_true", "set", *(f"u:{n}" for n in names)])]
    for d, u in worlds.items():
        lines += [",".join([repr(float(d)), str(k), *(repr(float(x)) for x in row)]) for k, row in enumerate(u)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _luminosity(out: Path, fig_dir: Path, windows, wtable, ntable, level: str, det, prior_scale: float, evaluations):
    """The luminosity study's bounds at δC9 = 0 under the run's level, detector and prior, with every estimator's
    σ measured at δC9 = 0 beside them: ``(rows, csv, figure)``, or None where the run's windows are not
    [1.1, 6.0] (``wcscan bounds`` covers the rest, and the high-q2 window)."""
    from orchestrator.evaluate.bounds import LOW_WINDOWS, luminosity_bounds, window_label, write_bounds_csv
    from orchestrator.report import plots

    if tuple(windows) != LOW_WINDOWS:
        log.info("luminosity bounds: only for windows %s (this run: %s); see wcscan bounds", LOW_WINDOWS, windows)
        return None
    rows = luminosity_bounds(high_q2=False, level=level, prior_scale=prior_scale, detector=det,
                             tables={window_label(LOW_WINDOWS): wtable}, power_corrections=wtable is not ntable)
    measured = {ev.name: (r["n_events"], r["sigma"]) for ev in evaluations for r in ev.rows if r["dc9_true"] == 0.0}
    csv_path = write_bounds_csv(rows, out / "evaluation" / "bounds.csv")
    title = (f"Cramér–Rao bound on δC9 against luminosity, δC9 = 0, level {level}, prior × {prior_scale:g}\n"
             "(the estimators at this run's set size)")
    return rows, csv_path, plots.plot_luminosity_bounds(rows, fig_dir / "luminosity_bounds.png", title, measured)


def _manifest_checksum(events_dir: Path) -> str:
    return sha256_file(events_dir / MANIFEST)


def run_job(
    cfg: RunConfig,
    out: Path,
    *,
    tracking_uri: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: ProgressFactory = no_progress,
    stage: Callable[[str], None] = lambda msg: log.info(msg),
) -> JobResult:
    """Run the job of ``cfg`` into ``out``; see the module docstring."""
    from kernels import detector, likelihood, theory
    from kernels.event_store import read_pools
    from models import estimators
    from orchestrator.evaluate.fit import write_points_csv
    from orchestrator.generate.dataset import generate
    from orchestrator.report import markdown as report
    from orchestrator.report import plots
    from orchestrator.track.runs import Tracker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    windows = [tuple(w) for w in cfg.theory.windows]
    level = cfg.scan.level
    grid = [float(d) for d in cfg.scan.dc9]
    det = detector.DetectorConfig.from_dict(cfg.scan.detector)

    nc = cfg.nuisances
    ntable = wtable = None  # the form factors' tables (the networks), and the worlds' (with the power corrections)
    if nc.form_factors != "none":  # before Ray starts: the table's flavio processes fork from this one
        from kernels import nuisances

        stage("bi-quadratic theory tables over delta C9 x the BSZ form factors (cached after the first run)")
        with progress("theory tables", nuisances.n_evaluations(1, 19) + 1, "flavio calls") as adv:
            ntable = wtable = nuisances.nuisance_table(["C9_bsmumu"], windows, nc.form_factors, workers=2,
                                                       progress=adv or None)
        if nc.power_corrections:
            from kernels import amplitudes

            stage("amplitude tables over delta C9 x the power corrections x the form factors (cached after the first run)")
            n_pc = len(amplitudes.power_corrections(windows))
            with progress("amplitude tables", amplitudes.n_amplitude_evaluations(1, 19, n_pc), "flavio calls") as adv:
                wtable = amplitudes.amplitude_table(["C9_bsmumu"], windows, nc.form_factors, workers=2,
                                                    progress=adv or None)
    stage(f"generating {len(grid)} points x {cfg.scan.events_per_point} events at level {level}")
    events_dir = out / "events"
    with progress("generate", len(grid) * cfg.scan.events_per_point, "events") as adv:
        manifest = generate(
            events_dir, grid, cfg.scan.events_per_point, cfg.seed, windows, cfg.scan.chunk_size, adv,
            level=level, detector=cfg.scan.detector or None, workers=workers if workers is not None else cfg.scan.workers,
            address=address,
        ).manifest
    table = theory.jtable(["C9_bsmumu"], windows)
    pdf = det.pdf_model(level, table.windows)
    checksum = _manifest_checksum(events_dir)

    evaluations: list[Evaluation] = []
    histories: dict = {}
    with Tracker(out, tracking_uri or cfg.mlflow.tracking_uri, cfg.mlflow.experiment, run_name=cfg.name) as tracker:
        tracker.params(cfg.model_dump())
        tracker.tags({"dataset_manifest_sha256": checksum, "config": cfg.name, "level": level})

        # Independent test MC and the bound, shared by every estimator.
        ec = cfg.evaluation
        stage(f"drawing {len(ec.dc9)} x {ec.sets} evaluation sets of {ec.events_per_set} events from independent MC")
        crb_eff = None
        with progress("test MC", len(ec.dc9), "points") as adv:
            if ntable is None:
                sets, crb = evaluation_sets(table, pdf, ec.dc9, ec.events_per_set, ec.sets, cfg.seed, level, det, adv or None)
            else:  # every test set in a world drawn from the prior of the hadronic inputs
                sets, crb, crb_eff, worlds = evaluation_worlds(wtable, pdf, ec.dc9, ec.events_per_set, ec.sets, cfg.seed,
                                                               level, det, nc.prior_scale, nc.worlds, adv or None)
                _write_worlds(out / "evaluation" / "worlds.csv", worlds, wtable.prior.names)

        mc = cfg.models
        need_pools = (mc.deepsets and mc.deepsets.enabled and not (mc.deepsets.summary == "score"
                                                                  and mc.deepsets.data == "stream")) or (
            mc.event_classifier and mc.event_classifier.enabled and mc.event_classifier.head != "score")
        pools = read_pools(events_dir, manifest, level) if need_pools else None
        images_dir = out / "images"
        if mc.resnet3d and mc.resnet3d.enabled:
            ic = cfg.images
            stage(f"building {ic.bins}^3 images: {ic.images_per_point} per point of {ic.events_per_image} events")
            from orchestrator.build.images import build_images

            if images_dir.exists():  # images are cheap next to training: rebuild rather than trust
                import shutil

                shutil.rmtree(images_dir)
            with progress("images", len(grid) * ic.images_per_point, "images") as adv:
                build_images(events_dir, images_dir, ic.bins, ic.events_per_image, ic.images_per_point, ic.val_fraction,
                             progress=adv, test_images=1, seed=cfg.seed, level=level,
                             workers=workers if workers is not None else cfg.scan.workers, address=address)

        # One child run per estimator: its params, training curves, model, evaluation and table.
        jobs = []  # (name, config section or None, trainer or None, estimator factory)
        if mc.ml_fit.enabled:
            jobs.append(("ml_fit", mc.ml_fit, None, lambda net: estimators.MLFitEstimator(table, pdf, name="ml_fit")))
            if ntable is not None:
                jobs.append(("ml_fit_profiled", mc.ml_fit, None, lambda net: estimators.ProfiledFitEstimator(
                    wtable, pdf, nc.prior_scale, name="ml_fit_profiled")))
            if wtable is not ntable:  # the power corrections: the fit that profiles the form factors alone
                jobs.append(("ml_fit_profiled_ff", mc.ml_fit, None, lambda net: estimators.ProfiledFitEstimator(
                    ntable, pdf, nc.prior_scale, name="ml_fit_profiled_ff")))
        if mc.resnet3d and mc.resnet3d.enabled:
            ic = cfg.images
            rn_name = "resnet3d" if ntable is None else "resnet3d_marginal"  # with nuisances, marginalised
            jobs.append((rn_name, mc.resnet3d, lambda: _train_resnet(cfg, images_dir, grid, tracker, progress, ntable),
                         lambda net: estimators.ResNetEstimator(net, ic.bins, ic.events_per_image, name=rn_name)))
        if mc.deepsets and mc.deepsets.enabled:  # with nuisances, the version that marginalises them
            ds_name = "deepsets" if ntable is None else "deepsets_marginal"
            jobs.append((ds_name, mc.deepsets,
                         lambda: _train_deepsets(cfg, pools, grid, tracker, progress, table, det, ntable),
                         lambda net: estimators.DeepSetsEstimator(net, name=ds_name)))
        if mc.event_classifier and mc.event_classifier.enabled:
            train_posterior = (
                (lambda: train_event_posterior(cfg, table, det, level, _train_config(mc.event_classifier.train, cfg,
                                               loss="mse"), lambda adv: EpochLogger(tracker, adv), progress))
                if mc.event_classifier.head == "score" else lambda: _train_classifier(cfg, pools, grid, tracker, progress))
            trained = {}

            def keep(train):  # the nuisance-aware version is built on the trained event posterior
                def run():
                    trained["net"], hist = train()
                    return trained["net"], hist
                return run

            jobs.append(("event_posterior", mc.event_classifier, keep(train_posterior),
                         lambda net: estimators.EventPosteriorEstimator(net, name="event_posterior")))
            if ntable is not None and mc.event_classifier.head == "score":
                jobs.append(("event_posterior_profiled", mc.event_classifier,
                             lambda: train_nuisance_posterior(cfg, wtable, trained["net"], det, level, _train_config(
                                 mc.event_classifier.train, cfg, loss="mse"), lambda adv: EpochLogger(tracker, adv),
                                 progress),
                             lambda net: estimators.NuisanceEventPosteriorEstimator(net, nc.prior_scale,
                                                                                    name="event_posterior_profiled")))
        on_grid = [d for d in ec.dc9 if any(abs(d - g) < 1e-9 for g in grid)]
        for name, section, trainer, make in jobs:
            with tracker.child(name):
                tracker.params(section.model_dump())
                tracker.tags({"estimator": name, "dataset_manifest_sha256": checksum})
                net = None
                if trainer is not None:
                    stage(f"training {name}")
                    net, hist = trainer()
                    histories[name] = hist
                    tracker.model(net)
                    tracker.metrics({"best_epoch": hist["best_epoch"], "epochs_run": hist["epochs_run"],
                                     "train_seconds": hist.get("seconds", float("nan"))})
                est = make(net)
                bins = image_bins(est)  # an image estimator: the bound of its image goes beside sigma_CRB
                crb_image = image_bounds(table, pdf, ec.dc9, bins, ec.events_per_set) if bins else None
                stage(f"evaluating {name} on independent test MC")
                with progress(f"evaluate {name}", len(ec.dc9), "points") as adv:
                    ev = evaluate(est, sets, crb, on_grid=on_grid, progress=adv, sigma_crb_image=crb_image,
                                  sigma_crb_eff=crb_eff)
                evaluations.append(ev)
                path = out / "evaluation" / name / "points.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_points_csv(ev.rows, path)
                tracker.metrics(ev.summary)
                if ev.calibration is not None:
                    tracker.tags({"calibration": ev.calibration["verdict"]})
                tracker.artifact(path, "evaluation")

        stage("figures and report")
        fig_dir = out / "figures"
        d_lo, d_hi = min(ec.dc9), max(ec.dc9)
        dense = np.linspace(d_lo, d_hi, 25)
        crb_curve = (dense, np.array([likelihood.sigma_crb(table, [d], ec.events_per_set, pdf) for d in dense]))
        figures = {
            "linearity": plots.plot_linearity(evaluations, fig_dir / "linearity.png"),
            "sensitivity": plots.plot_sensitivity(evaluations, crb_curve, fig_dir / "sensitivity.png"),
            "bias": plots.plot_bias(evaluations, fig_dir / "bias.png"),
            "sigma_over_crb": plots.plot_sigma_over_crb(evaluations, fig_dir / "sigma_over_crb.png"),
        }
        if any(ev.pit for ev in evaluations):  # the estimators that give widths
            figures["calibration"] = plots.plot_calibration(evaluations, fig_dir / "calibration.png")
        if histories:
            figures["training_curves"] = plots.plot_training_curves(histories, fig_dir / "training_curves.png")
        lum = None if ntable is None else _luminosity(out, fig_dir, windows, wtable, ntable, level, det,
                                                      nc.prior_scale, evaluations)
        if lum is not None:
            figures["luminosity_bounds"] = lum[2]
            tracker.artifact(lum[1], "evaluation")
            tracker.metrics({f"{k}_{r['n_events']}": r[k] for r in lum[0]
                             for k in ("sigma_crb", "sigma_crb_eff", "sigma_crb_eff_pc") if np.isfinite(r[k])})
        if mc.resnet3d and mc.resnet3d.enabled:
            from kernels.image_store import open_images

            ex = [open_images(out / "images", "train", p)[0] for p in (0, len(grid) // 2, len(grid) - 1)]
            figures["image_slices"] = plots.plot_image_slices(np.stack(ex), [grid[0], grid[len(grid) // 2], grid[-1]], fig_dir / "image_slices.png")
        report_path = report.write_report(out, cfg, evaluations, figures, checksum, tracker.uri,
                                          tracker.run_id or "(not logged)", luminosity=lum and lum[0])
        for f in figures.values():
            tracker.artifact(f, "figures")
        tracker.artifact(report_path)
        for ev in evaluations:  # the parent holds every table too, for side-by-side comparison
            tracker.artifact(out / "evaluation" / ev.name / "points.csv", f"evaluation/{ev.name}")
        run_id = tracker.run_id
        uri = tracker.uri
    return JobResult(out, evaluations, histories, report_path, run_id, uri, tracker.unlogged())


def check_job_services(cfg: RunConfig, out: Path, tracking_uri: str | None, address: str | None) -> None:
    """The MLflow store, the Ray cluster and the room on disk for the events and images, before any work."""
    from orchestrator.config.services import check_services, event_bytes, image_bytes
    from orchestrator.track.runs import tracking_source

    need = event_bytes(len(cfg.scan.dc9), cfg.scan.events_per_point, cfg.scan.level)
    if cfg.models.resnet3d and cfg.models.resnet3d.enabled and cfg.images is not None:
        need += image_bytes(len(cfg.scan.dc9) * (cfg.images.images_per_point + 1), cfg.images.bins)
    uri, source = tracking_source(out, tracking_uri, cfg.mlflow.tracking_uri)
    check_services(out, need, tracking_uri=uri, tracking_name=source, address=address)


def run_config(config: str | Path = "demo", out: Path | None = None, *, device: str | None = None,
               tracking_uri: str | None = None, workers: int | None = None, address: str | None = None,
               progress: ProgressFactory = no_progress, stage: Callable[[str], None] = lambda msg: log.info(msg)
               ) -> tuple[RunConfig, JobResult]:
    """``wcscan run``: load the config, check every option, the output directory and the outside services
    (:func:`check_job_services`), then :func:`run_job`.

    The torch device (the flag's, else the config's) is checked here, before
    minutes of generation: a device that does not exist, or ``cuda`` without
    a GPU, is a one-line error and nothing is written.
    """
    from orchestrator.config.joint_run import JointRunConfig

    cfg = load_config(config)
    if device:
        cfg = cfg.model_copy(update={"device": device})
    check_device(cfg.device, "--device" if device else f"config {cfg.name}: device")
    if workers is not None:
        non_negative_int(workers, "--workers")
    out = output_dir(Path(out) if out is not None else Path("out") / cfg.name)
    if isinstance(cfg, JointRunConfig):  # several coefficients: the joint job
        from orchestrator.jobs.joint_run import check_joint_services, joint_run_job

        check_joint_services(cfg, out, tracking_uri, address)
        return cfg, joint_run_job(cfg, out, tracking_uri=tracking_uri, workers=workers, address=address,
                                  progress=progress, stage=stage)
    check_job_services(cfg, out, tracking_uri, address)
    return cfg, run_job(cfg, out, tracking_uri=tracking_uri, workers=workers, address=address, progress=progress,
                        stage=stage)

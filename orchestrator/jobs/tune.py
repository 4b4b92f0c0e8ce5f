"""``wcscan tune`` as a job: Ray, the sweep (:mod:`tune.tuner`), MLflow, and the best trial against sigma_CRB.

:func:`run_tune` starts (or joins) Ray, runs :func:`tune.tuner.run_sweep`, then,
from the driver (one writer, safe for the SQLite default):

- a parent run for the sweep (its settings and data spec as params, tags
  ``kind=tune``, ``model``, ``experiment_path``) and one child run per trial,
  ``trial-<id>``, with the trial's hyperparameters as params and per-epoch
  ``train_loss`` / ``val_loss`` / ``lr`` (from Tune's ``metrics_dataframe``);
- the best trial (lowest ``val_loss`` over all epochs): its hyperparameters as
  ``best.<name>`` tags and ``best_val_loss`` on the parent; its network (from
  its best checkpoint, or trained again from its config when no checkpoint is
  left, tagged ``best_retrained``) is evaluated as
  ``wcscan run`` evaluates a network, on independent test MC at the dataset's
  points beside sigma_CRB (:func:`orchestrator.evaluate.estimators.evaluation_sets`), and
  its per-point table and sigma/sigma_CRB figure go on the parent.

``resume=True`` reopens the parent run of the same sweep (same
``experiment_path``) and its children: trials logged before the interruption
get only their new epochs, new trials get new children. The evaluation of the
best trial is redone and replaces the previous one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tune.trainables import retrain
from tune.tuner import SweepResult, best_checkpoint, load_checkpoint, run_sweep

__all__ = ["tune_job", "run_tune", "evaluate_network", "log_sweep", "log_trial"]

log = logging.getLogger(__name__)

_EPOCH_METRICS = ("val_loss", "train_loss", "lr")  # val_loss first: the MLflow UI plots the first one


def run_tune(
    model: str,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    experiment: str = "wcscan",
    eval_sets: int = 20,
    address: str | None = None,
    resume: bool = False,
    gpu_wait: float = 600.0,
    **sweep,
) -> SweepResult:
    """Run (or continue) a sweep and log it; ``sweep``: the options of :func:`tune.tuner.run_sweep`."""
    from orchestrator.runtime.ray import init_ray, require_gpus

    out = Path(out)
    init_ray(address)
    require_gpus(sweep.get("gpus_per_trial", 0), wait_s=gpu_wait)
    res = run_sweep(model, dataset, out, resume=resume, **sweep)
    _track(res, tracking_uri, experiment, eval_sets, resume)
    if res.interrupted:  # Tune caught Ctrl-C and saved the sweep: logged as KILLED, and the caller exits non-zero
        raise KeyboardInterrupt(f"sweep interrupted; continue it with --resume ({res.experiment_path})")
    return res


def _track(res: SweepResult, tracking_uri, experiment: str, eval_sets: int, resume: bool) -> None:
    from orchestrator.track.runs import Tracker

    spec = res.spec
    path = res.experiment_path
    previous = f"tags.kind = 'tune' AND tags.experiment_path = '{path}'" if resume and "'" not in path else None
    with Tracker(res.out, tracking_uri, experiment, run_name=f"tune-{spec.model}", resume=previous) as tracker:
        if tracker.resumed:
            tracker.tags({"resumed": "true"})
        else:
            tracker.params({"sweep": res.settings, "data": spec.to_dict()})
            tracker.tags({"kind": "tune", "model": spec.model, "experiment_path": path})
        best = log_sweep(tracker, res)
        if best is not None:
            ckpt = best_checkpoint(best["result"])
            if ckpt is not None:
                net, state = load_checkpoint(ckpt)
            else:  # its checkpoints are gone (storage cleaned, or a trial stopped before its first report)
                log.warning("the best trial %s has no checkpoint: training its config again", best["trial_id"])
                net, state = retrain(best["config"], spec)
                tracker.tags({"best_retrained": "true"})
            res.evaluation = evaluate_network(net, state, spec, eval_sets)
            _log_evaluation(tracker, res.evaluation, res.out)
        res.run_id, res.tracking_uri = tracker.run_id, tracker.uri
    res.unlogged = tracker.unlogged()


def log_sweep(tracker, res: SweepResult) -> dict | None:
    """A sweep's trials as child runs (a resumed parent's: only what they lack), the parent KILLED if the sweep
    was interrupted, else the best trial's settings as ``best.*`` tags and its metrics; returns the best trial
    to evaluate, or None."""
    logged = {r.data.tags.get("trial_id"): r.info.run_id for r in tracker.children()} if tracker.resumed else {}
    for t in res.trials:
        if t["status"] == "NOT_STARTED":  # an interrupted sweep's pending trial: logged when resumed
            continue
        log_trial(tracker, t, logged.get(t["trial_id"]))
    if res.interrupted:
        tracker.status = "KILLED"
        tracker.tags({"interrupted": "true"})
        return None
    best = res.best
    if best is not None:
        tracker.tags({"best_trial_id": best["trial_id"], **{f"best.{k}": v for k, v in best["config"].items()}})
        tracker.metrics({"best_val_loss": best["best_val_loss"], "trials": len(res.trials), "trial_errors": res.errors})
    return best


def log_trial(tracker, trial: dict, run_id: str | None) -> None:
    """A trial's child run: new (``run_id`` None), or reopened with only the epochs it does not hold yet."""
    with tracker.child(f"trial-{trial['trial_id']}", run_id=run_id):
        done = 0
        if run_id is None:
            tracker.params(trial["config"])
        else:
            done = tracker.logged_steps(run_id, "val_loss")
        tracker.tags({"trial_id": trial["trial_id"], "status": trial["status"], "trial_path": trial["result"].path})
        df = trial["result"].metrics_dataframe
        if df is not None:
            for i, (_, row) in enumerate(df.iterrows()):
                if i < done:
                    continue
                step = int(row.get("epoch", row.get("training_iteration", i)))
                tracker.metrics({k: row[k] for k in _EPOCH_METRICS if k in row}, step=step)
        tracker.metrics({"best_val_loss": trial["best_val_loss"], "epochs_run": trial["epochs"]})


def evaluate_network(net, state: dict, spec, n_sets: int = 20):
    """Evaluate a trial's network as ``wcscan run`` does: test MC at the dataset's points, beside sigma_CRB.

    ``state``: its checkpoint dict (:func:`tune.trainables.load_checkpoint`): the model family and what
    the estimator needs (bins and events per image, or the set size).
    """
    from kernels import detector, theory
    from kernels.event_store import read_event_manifest
    from models import estimators
    from orchestrator.evaluate.estimators import evaluate, evaluation_sets, image_bins, image_bounds

    if state["model"] == "resnet3d":
        n_events = int(state["events_per_image"])
        est = estimators.ResNetEstimator(net, int(state["bins"]), n_events, name="resnet3d")
    else:
        n_events = int(state["set_size"])
        est = estimators.DeepSetsEstimator(net, name="deepsets")
    m = read_event_manifest(spec.dataset)
    det = detector.DetectorConfig.from_dict(m.detector or {})
    table = theory.jtable(list(m.coefficients), list(m.windows))
    pdf = det.pdf_model(m.level, table.windows)
    sets, crb = evaluation_sets(table, pdf, m.dc9, n_events, n_sets, m.seed, m.level, det)
    bins = image_bins(est)
    crb_image = image_bounds(table, pdf, m.dc9, bins, n_events) if bins else None
    return evaluate(est, sets, crb, on_grid=m.dc9, sigma_crb_image=crb_image)


def _log_evaluation(tracker, ev, out: Path) -> None:
    from orchestrator.evaluate.fit import write_points_csv
    from orchestrator.report import plots

    table = write_points_csv(ev.rows, out / "evaluation" / f"tune-{ev.name}" / "points.csv")
    fig = plots.plot_sigma_over_crb([ev], out / "figures" / f"tune-{ev.name}-sigma_over_crb.png")
    tracker.metrics(ev.summary)
    tracker.artifact(table, "evaluation")
    tracker.artifact(fig, "figures")
    if ev.pit:  # the network gives widths: their calibration
        tracker.tags({"calibration": ev.calibration["verdict"]})
        tracker.artifact(plots.plot_calibration([ev], out / "figures" / f"tune-{ev.name}-calibration.png"), "figures")


def tune_job(model: str, dataset: Path, out: Path | None = None, *, images: Path | None = None,
             num_samples: int = 8, epochs: int = 10, set_size: int = 2000, sets_per_point: int = 150,
             events_per_image: int = 2000, eval_sets: int = 20, device: str | None = None,
             stage=lambda msg: log.info(msg), **options) -> SweepResult:
    """``wcscan tune``: every option checked (and the output proved writable) before Ray starts; then :func:`run_tune`."""
    from kernels.errors import ConfigError
    from kernels.event_store import read_event_manifest
    from models.splits import train_events
    from orchestrator.config.checks import device as check_device
    from orchestrator.config.checks import output_dir, positive_int

    for name, value in (("--num-samples", num_samples), ("--epochs", epochs), ("--set-size", set_size),
                        ("--sets-per-point", sets_per_point), ("--events-per-image", events_per_image),
                        ("--eval-sets", eval_sets)):
        positive_int(value, name)
    if images is not None and model != "resnet3d":
        raise ConfigError("--images is for --model resnet3d")
    check_device(device)
    if model == "deepsets":
        fewest = read_event_manifest(dataset).fewest_events
        if set_size > train_events(fewest):
            raise ConfigError(f"--set-size {set_size}: {dataset} holds {fewest} events per point, of which "
                              f"{train_events(fewest)} train; use a set size of at most that")
    out = output_dir(out if out is not None else Path("out") / f"tune-{model}")
    from orchestrator.config.services import check_services
    from orchestrator.runtime.ray import init_ray, require_gpus
    from orchestrator.track.runs import tracking_source

    uri, source = tracking_source(out, options.get("tracking_uri"))
    check_services(out, tracking_uri=uri, tracking_name=source, address=options.get("address"))

    init_ray(options.get("address"))
    require_gpus(options.get("gpus_per_trial", 0), wait_s=options.get("gpu_wait", 600.0))
    stage(f"{model}: {num_samples} trials, {options.get('search', 'optuna')} search, "
          f"{options.get('scheduler', 'asha')} scheduler")
    return run_tune(model, dataset, out, images=images, num_samples=num_samples, epochs=epochs, eval_sets=eval_sets,
                    spec_overrides={"set_size": set_size, "sets_per_point": sets_per_point,
                                    "events_per_image": events_per_image, "device": device}, **options)

"""``wcscan tune --config``: a Ray Tune sweep over a joint model's hyperparameters, tracked in MLflow, the best
trial evaluated beside the joint ML fit and the bound.

The joint job's learned estimators (the per-event ratio, Deep Sets and the 3D ResNet in several coefficients,
one network for every N: :mod:`orchestrator.jobs.joint_run`) are trained in stages. A trial is one training of
the config's ``models.<model>`` section with the trial's hyperparameters set in it (:func:`trial_config`; the
space: :func:`tune.spaces.joint_space`), exactly as ``wcscan run`` trains it (:mod:`orchestrator.jobs.joint_train`,
:mod:`orchestrator.jobs.joint_resnet`), on the scan's events, which the driver generates once into
``OUT/events`` (the ResNet draws its own). The metric is the last stage's validation loss on fresh simulated
sets or images (rho's Gaussian NLL; the event ratio's loss), reported after every epoch of that stage; ASHA
stops the weak trials early. The trained network is checkpointed when its training ends.

The driver then logs a parent run (``kind=tune``, ``model``, ``config``) with a child per trial, evaluates the
best trial's network with the joint ML fit on the config's evaluation design at every N
(:func:`orchestrator.jobs.joint_evaluate.evaluate_joint`), and writes ``OUT/evaluation/<name>/points.csv``,
the figures and ``OUT/report.md`` (:func:`orchestrator.report.joint.write_joint_report`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from kernels.errors import ConfigError
from orchestrator.config.joint_run import JointRunConfig
from orchestrator.runtime.progress import ProgressFactory, no_progress

__all__ = ["FINAL_STAGE", "trial_config", "joint_trial", "load_joint_checkpoint", "joint_tune_job"]

log = logging.getLogger(__name__)

#: Per model: its last training stage (the section's training block) and the prefix of that stage's metrics.
FINAL_STAGE = {"event_ratio": ("train", ""), "deepsets": ("rho_train", "rho_"), "resnet3d": ("rho_train", "rho_")}
CHECKPOINT_FILE = "model.pt"


def _section(cfg: JointRunConfig, model: str):
    if model not in FINAL_STAGE:
        raise ConfigError(f"--model {model}: a --config sweep tunes one of {', '.join(FINAL_STAGE)}")
    section = getattr(cfg.models, model)
    if section is None:
        raise ConfigError(f"--config {cfg.name} has no models.{model} section to tune; add one (its settings are "
                          "the trials' defaults)")
    return section


def trial_config(cfg: JointRunConfig, model: str, config: dict, epochs: int | None = None) -> JointRunConfig:
    """``cfg`` with the trial's hyperparameters (``config``: field paths of ``models.<model>``, as
    :func:`tune.spaces.joint_space` names them) set, and ``epochs`` for the last stage when given; validated.

    >>> from orchestrator.config.run import load_config
    >>> cfg = trial_config(load_config("demo-c9c10"), "deepsets", {"hidden": 32, "rho_train.lr": 3e-4}, epochs=5)
    >>> cfg.models.deepsets.hidden, cfg.models.deepsets.rho_train.lr, cfg.models.deepsets.rho_train.epochs
    (32, 0.0003, 5)
    """
    section = _section(cfg, model).model_dump()
    updates = dict(config)
    if epochs is not None:
        updates[f"{FINAL_STAGE[model][0]}.epochs"] = int(epochs)
    for key, value in updates.items():
        node, *path = [section, *key.split(".")]
        for part in path[:-1]:
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"models.{model} has no setting {key!r}")
        node[path[-1]] = value
    models = cfg.models.model_copy(update={model: type(_section(cfg, model)).model_validate(section)})
    return cfg.model_copy(update={"models": models})


class _Silent:
    """A tracker that keeps nothing: the best trial trained again on the driver, outside Tune."""

    def metrics(self, values: dict, step: int | None = None) -> None:
        pass


class _TuneReporter:
    """The tracker the training functions log their epochs through (:class:`orchestrator.track.epochs.EpochLogger`):
    the last stage's losses go to Tune as ``val_loss``, ``train_loss``, ``lr`` and ``epoch``."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def metrics(self, values: dict, step: int | None = None) -> None:
        from ray import tune

        p = self.prefix
        if f"{p}val_loss" in values:
            tune.report({"val_loss": float(values[f"{p}val_loss"]), "train_loss": float(values[f"{p}train_loss"]),
                         "lr": float(values[f"{p}lr"]), "epoch": int(step or 0)})


def _train(model: str, cfg: JointRunConfig, events_dir: Path, tracker, progress=no_progress,
           stage: Callable[[str], None] = lambda msg: log.info(msg)):
    """Train ``model`` of ``cfg`` as ``wcscan run`` does; returns ``(network, histories)``."""
    from kernels import theory
    from orchestrator.jobs.joint_train import train_event_ratio, train_joint_deepsets

    table = theory.jtable(list(cfg.theory.coefficients), [tuple(w) for w in cfg.theory.windows])
    scan = cfg.scan_design()
    if model == "resnet3d":
        from orchestrator.jobs.joint_resnet import train_joint_resnet

        return train_joint_resnet(cfg, table, scan, tracker, progress, stage)
    train = train_event_ratio if model == "event_ratio" else train_joint_deepsets
    return train(cfg, table, scan, events_dir, tracker, progress, stage)


def _save(net, model: str, path: Path, extra: dict) -> None:
    import torch

    torch.save({"model": model, "hparams": net.hparams, "state_dict": net.state_dict(), **extra}, path)


def joint_trial(config: dict, *, cfg_dict: dict, model: str, events_dir: str, epochs: int | None = None) -> None:
    """One trial (the module docstring): train, reporting the last stage's epochs, then checkpoint the network."""
    import os

    import torch
    from ray import tune

    cpus = 1
    try:
        import ray

        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # outside Ray
        pass
    torch.set_num_threads(cpus)
    os.environ.setdefault("POLARS_MAX_THREADS", str(cpus))
    cfg = trial_config(JointRunConfig.model_validate(cfg_dict), model, config, epochs)
    reporter = _TuneReporter(FINAL_STAGE[model][1])
    net, hist = _train(model, cfg, Path(events_dir), reporter)
    last = hist.get("rho", hist)
    best, n = float(last["best_val_loss"]), len(last.get("val_loss", []))
    with tempfile.TemporaryDirectory() as tmp:
        _save(net, model, Path(tmp) / CHECKPOINT_FILE, {"val_loss": best, "config": dict(config)})
        # one report past the stage's epochs, with the trained (best-epoch) network
        tune.report({"val_loss": best, "epoch": n, "final": 1.0}, checkpoint=tune.Checkpoint.from_directory(tmp))


def _network(state: dict):
    if state["model"] == "event_ratio":
        from models.event_ratio import EventRatio as cls
    elif state["model"] == "deepsets":
        from models.deepsets_joint import JointDeepSets as cls
    else:
        from models.resnet_joint import JointScoreResNet3d as cls
    net = cls(**state["hparams"])
    net.load_state_dict(state["state_dict"])
    return net.eval()


def load_joint_checkpoint(checkpoint) -> tuple:
    """``(network in eval mode, checkpoint dict)`` of a joint trial's ``tune.Checkpoint``."""
    import torch

    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)
    return _network(state), state


def joint_tune_job(cfg: JointRunConfig, model: str, out: Path | None = None, *, num_samples: int = 8,
                   epochs: int | None = None, eval_sets: int | None = None, cpus_per_trial: float = 1,
                   gpus_per_trial: float = 0, gpu_wait: float = 600.0, max_concurrent: int | None = None,
                   search: str = "optuna", scheduler: str = "asha", storage: str | None = None, resume: bool = False,
                   tracking_uri: str | None = None, address: str | None = None, seed: int = 0, tiny: bool = False,
                   device: str | None = None, verbose: int = 0, progress: ProgressFactory = no_progress,
                   stage: Callable[[str], None] = lambda msg: log.info(msg)):
    """``wcscan tune --config``: every option checked (and ``out`` proved writable) before Ray starts; then the
    scan's events, the sweep, its MLflow runs and the best trial's evaluation (the module docstring)."""
    from orchestrator.config.checks import device as check_device
    from orchestrator.config.checks import output_dir, positive_int
    from orchestrator.jobs.joint_run import check_joint_services

    _section(cfg, model)
    positive_int(num_samples, "--num-samples")
    for name, value in (("--epochs", epochs), ("--eval-sets", eval_sets)):
        if value is not None:
            positive_int(value, name)
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ConfigError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {cpus_per_trial}, "
                          f"{gpus_per_trial}")
    check_device(device)
    updates = {"device": device} if device is not None else {}
    if eval_sets is not None:
        updates["evaluation"] = cfg.evaluation.model_copy(update={"sets": eval_sets})
    cfg = trial_config(cfg.model_copy(update=updates), model, {}, epochs)
    out = output_dir(out if out is not None else Path("out") / f"tune-{model}-{cfg.name}")
    check_joint_services(cfg, out, tracking_uri, address)

    from orchestrator.runtime.ray import init_ray, require_gpus

    init_ray(address)
    require_gpus(gpus_per_trial, wait_s=gpu_wait)
    events_dir = out / "events"
    if model != "resnet3d":  # the ResNet draws its own images; the others train on the scan's events
        from orchestrator.generate.dataset import generate

        scan = cfg.scan_design()
        stage(f"generating {scan.n_points} points x {cfg.scan.events_per_point} events over "
              f"{', '.join(cfg.shift_columns)} (once, for every trial)")
        with progress("generate", scan.n_points * cfg.scan.events_per_point, "events") as adv:
            generate(events_dir, None, cfg.scan.events_per_point, cfg.seed, [tuple(w) for w in cfg.theory.windows],
                     cfg.scan.chunk_size, adv, workers=cfg.scan.workers, address=address, design=scan)
    from ray import tune

    from tune.spaces import joint_space
    from tune.tuner import sweep

    final_epochs = getattr(_section(cfg, model), FINAL_STAGE[model][0]).epochs
    trainable = tune.with_resources(
        tune.with_parameters(joint_trial, cfg_dict=cfg.model_dump(mode="json"), model=model,
                             events_dir=str(events_dir.resolve())),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    stage(f"{model} of {cfg.name}: {num_samples} trials, {search} search, {scheduler} scheduler, "
          f"{final_epochs} epochs of its last stage")
    res = sweep(trainable, joint_space(model, tiny), out, f"{model}-{cfg.name}", num_samples=num_samples,
                max_t=final_epochs + 1, search=search, scheduler=scheduler, storage=storage, resume=resume,
                max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial, seed=seed, verbose=verbose,
                settings=dict(model=model, config=cfg.name, gpus_per_trial=gpus_per_trial, tiny=tiny))
    _track_and_evaluate(res, cfg, model, events_dir, tracking_uri, resume, progress, stage)
    if res.interrupted:
        raise KeyboardInterrupt(f"sweep interrupted; continue it with --resume ({res.experiment_path})")
    return res


def _track_and_evaluate(res, cfg: JointRunConfig, model: str, events_dir: Path, tracking_uri, resume: bool,
                        progress, stage) -> None:
    from kernels import theory
    from kernels.files import sha256_file
    from orchestrator.evaluate.fit import write_points_csv
    from orchestrator.jobs.joint_evaluate import estimators, evaluate_joint, joint_figures
    from orchestrator.jobs.tune import log_sweep
    from tune.tuner import best_checkpoint
    from orchestrator.report.joint import write_joint_report
    from orchestrator.track.runs import Tracker

    path = res.experiment_path
    previous = f"tags.kind = 'tune' AND tags.experiment_path = '{path}'" if resume and "'" not in path else None
    with Tracker(res.out, tracking_uri or cfg.mlflow.tracking_uri, cfg.mlflow.experiment,
                 run_name=f"tune-{model}-{cfg.name}", resume=previous) as tracker:
        if tracker.resumed:
            tracker.tags({"resumed": "true"})
        else:
            tracker.params({"sweep": res.settings, "config": cfg.model_dump()})
            tracker.tags({"kind": "tune", "model": model, "config": cfg.name, "experiment_path": path,
                          "coefficients": ",".join(cfg.shift_columns)})
        best = log_sweep(tracker, res)
        if best is not None:
            best_cfg = trial_config(cfg, model, best["config"])
            ckpt = best_checkpoint(best["result"])  # the one its training saved when it ended
            if ckpt is not None:
                net, _ = load_joint_checkpoint(ckpt)
            else:  # stopped (or its checkpoint gone) before its training ended: train its config again
                log.warning("the best trial %s has no final checkpoint: training its config again", best["trial_id"])
                stage(f"training the best trial's {model} again (no final checkpoint)")
                net, _ = _train(model, best_cfg, events_dir,
                                _Silent(), progress, stage)
                net.eval()
                tracker.tags({"best_retrained": "true"})
            table = theory.jtable(list(cfg.theory.coefficients), [tuple(w) for w in cfg.theory.windows])
            fitters = estimators(best_cfg, table, None, True, {model: net})
            evaluations = evaluate_joint(best_cfg, table, fitters, None, progress, stage)
            shifts, ns = cfg.shift_columns, cfg.evaluation.events_per_set
            figures = joint_figures(res.out / "figures", evaluations, shifts, ns)
            for ev in evaluations:
                csv = write_points_csv(ev.rows, res.out / "evaluation" / ev.name / "points.csv")
                tracker.artifact(csv, "evaluation")
                tracker.metrics({f"{ev.name}.{k}": v for k, v in ev.summary.items()})
            manifest = events_dir / "manifest.json"
            checksum = sha256_file(manifest) if manifest.is_file() else "none: the ResNet draws its own images"
            titled = best_cfg.model_copy(update={"name": f"{cfg.name}, the best {model} of a sweep "
                                                         f"(trial {best['trial_id']})"})
            report = write_joint_report(res.out, titled, evaluations, figures, checksum, tracker.uri,
                                        tracker.run_id or "(not logged)")
            for f in figures:
                tracker.artifact(f, "figures")
            tracker.artifact(report)
            tracker.model(net)
            res.evaluation = evaluations[-1]
            res.evaluations, res.report = evaluations, report
        res.run_id, res.tracking_uri = tracker.run_id, tracker.uri
    res.unlogged = tracker.unlogged()

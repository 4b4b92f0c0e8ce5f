"""``wcscan tune``: a Ray Tune sweep over one model family, tracked in MLflow.

:func:`run_sweep` builds a :class:`ray.tune.Tuner` over
:func:`tune.trainables.train_trial` with ``tune.with_resources`` (CPUs and GPUs
per trial), a scheduler (ASHA on ``val_loss``, mode min, or FIFO) and a search
(Optuna behind a ``ConcurrencyLimiter``, or random). Trials and their
checkpoints live under ``STORAGE/NAME`` (default ``OUT/ray_results/<model>``;
an ``s3://`` URI or a shared volume on a cluster); ``FailureConfig(max_failures=2)``
restarts a crashed trial from its last checkpoint, and ``resume=True`` continues
an interrupted sweep with ``Tuner.restore`` (finished trials are kept, not rerun).

MLflow, all from the driver (one writer, safe for the SQLite default): a parent
run for the sweep and, after it, a child run per trial with the trial's
hyperparameters and per-epoch ``train_loss`` / ``val_loss`` / ``lr`` (from its
``metrics_dataframe``). The best trial (lowest ``val_loss`` over all epochs) is
then evaluated as ``wcscan run`` evaluates a network: on independent test MC
(:func:`kernels.bootstrap.test_sets`) beside sigma_CRB, with
:func:`orchestrator.evaluation.evaluate`; its per-point table, summary metrics
and a sigma/sigma_CRB figure go on the parent run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from kernels.errors import ConfigError
from tune.trainables import CHECKPOINT_FILE, DataSpec, load_grid, make_trainable

__all__ = ["SEARCHES", "SCHEDULERS", "SweepResult", "run_sweep", "evaluate_checkpoint"]

log = logging.getLogger(__name__)

SEARCHES = ("optuna", "random")
SCHEDULERS = ("asha", "fifo")
CRASH_ENV = "WCSCAN_TUNE_CRASH_ONCE"
EVAL_POINT_OFFSET = 10_000  # the evaluation seed streams of wcscan run (orchestrator.pipeline)


@dataclass
class SweepResult:
    out: Path
    experiment_path: str
    trials: list[dict] = field(default_factory=list)
    best: dict | None = None
    evaluation: object | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    errors: int = 0


def _scheduler(name: str, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=2)
    if name == "fifo":
        return FIFOScheduler()
    raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")


def _search(name: str, max_concurrent: int, seed: int):
    if name == "random":
        return None
    if name == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {name!r}")


def _storage(out: Path, storage: str | None) -> str:
    if storage is None:
        return str((out / "ray_results").resolve())
    return storage if "://" in storage else str(Path(storage).resolve())


def run_sweep(
    model: str,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    num_samples: int = 8,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    search: str = "optuna",
    scheduler: str = "asha",
    storage: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    *,
    images: str | os.PathLike | None = None,
    epochs: int = 10,
    tiny: bool = False,
    name: str | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    experiment: str = "wcscan",
    eval_sets: int = 20,
    stop=None,
    callbacks=None,
    address: str | None = None,
    verbose: int = 0,
    spec_overrides: dict | None = None,
) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep; see the module docstring. ``stop``, ``callbacks``: Tune's."""
    from ray import tune

    from orchestrator.ray_runtime import init_ray
    from tune.spaces import space_for

    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ConfigError(f"cpus per trial must be > 0 and gpus >= 0, got {cpus_per_trial}, {gpus_per_trial}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(model=model, dataset=str(Path(dataset).resolve()),
                    images=str(Path(images).resolve()) if images else None, epochs=epochs, seed=seed,
                    crash_once=os.environ.get(CRASH_ENV) or None, **(spec_overrides or {}))
    space = space_for(model, tiny)
    if spec.images is not None and model == "resnet3d":
        space.pop("bins", None)  # fixed by the image dataset
    sched = _scheduler(scheduler, epochs)
    info = init_ray(address)
    if max_concurrent is None:
        max_concurrent = max(1, int(info["cpus"] // cpus_per_trial))
    storage_path = _storage(out, storage)
    name = name or model
    path = f"{storage_path.rstrip('/')}/{name}"
    trainable = make_trainable(spec, cpus_per_trial, gpus_per_trial)

    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"nothing to resume at {path}; run without --resume first")
        log.info("resuming the sweep at %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        if tune.Tuner.can_restore(path):
            raise ConfigError(f"a sweep already exists at {path}; pass --resume to continue it, or another --storage")
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", num_samples=num_samples, scheduler=sched,
                search_alg=_search(search, max_concurrent, seed),
                max_concurrent_trials=max_concurrent if search == "random" else None,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, stop=stop, callbacks=callbacks, verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_loss",
                                                        checkpoint_score_order="min"),
            ),
        )
    grid = tuner.fit()
    return _track(grid, spec, out, path, dict(model=model, num_samples=num_samples, cpus_per_trial=cpus_per_trial,
                  gpus_per_trial=gpus_per_trial, search=search, scheduler=scheduler, storage=storage_path,
                  max_concurrent=max_concurrent, resumed=resume, tiny=tiny),
                  tracking_uri, experiment, eval_sets)


def _trial_rows(grid) -> list[dict]:
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        best = float(df["val_loss"].min()) if df is not None and "val_loss" in df else float("nan")
        epochs = 0 if df is None else len(df)
        status = "ERROR" if r.error is not None else ("TERMINATED" if epochs else "NOT_STARTED")
        rows.append({"trial_id": (r.metrics or {}).get("trial_id") or Path(r.path).name, "config": r.config or {},
                     "best_val_loss": best, "epochs": epochs, "error": r.error is not None, "status": status,
                     "result": r})
    return rows


def _track(grid, spec: DataSpec, out: Path, path: str, sweep: dict, tracking_uri, experiment, eval_sets) -> SweepResult:
    from orchestrator.tracking import Tracker

    trials = _trial_rows(grid)
    res = SweepResult(out, path, trials=trials, errors=sum(t["error"] for t in trials))
    with Tracker(out, tracking_uri, experiment, run_name=f"tune-{spec.model}") as tracker:
        tracker.params({"sweep": sweep, "data": spec.to_dict()})
        tracker.tags({"kind": "tune", "model": spec.model, "experiment_path": path})
        for t in trials:
            if t["status"] == "NOT_STARTED":  # an interrupted sweep's pending trial: logged when resumed
                continue
            with tracker.child(f"trial-{t['trial_id']}"):
                tracker.params(t["config"])
                tracker.tags({"trial_id": t["trial_id"], "status": t["status"],
                              "trial_path": t["result"].path})
                df = t["result"].metrics_dataframe
                if df is not None:
                    for _, row in df.iterrows():
                        step = int(row.get("epoch", row.get("training_iteration", 0)))
                        tracker.metrics({k: row[k] for k in ("train_loss", "val_loss", "lr") if k in row}, step=step)
                tracker.metrics({"best_val_loss": t["best_val_loss"], "epochs_run": t["epochs"]})
        done = [t for t in trials if t["best_val_loss"] == t["best_val_loss"]]  # not NaN
        if done:
            best = min(done, key=lambda t: t["best_val_loss"])
            res.best = {k: best[k] for k in ("trial_id", "config", "best_val_loss")}
            tracker.params({f"best.{k}": v for k, v in best["config"].items()})
            tracker.metrics({"best_val_loss": best["best_val_loss"], "trials": len(trials), "trial_errors": res.errors})
            tracker.tags({"best_trial_id": best["trial_id"]})
            ckpt = _best_checkpoint(best["result"])
            if ckpt is not None:
                ev = evaluate_checkpoint(ckpt, spec, eval_sets)
                res.evaluation = ev
                _log_evaluation(tracker, ev, out)
        res.run_id, res.tracking_uri = tracker.run_id, tracker.uri
    return res


def _best_checkpoint(result):
    """The trial's checkpoint of lowest val_loss, else its latest, else None (a trial stopped mid-report)."""
    if result.best_checkpoints:
        return result.get_best_checkpoint("val_loss", "min")
    return result.checkpoint


def evaluate_checkpoint(checkpoint, spec: DataSpec, n_sets: int = 20):
    """Evaluate a trial checkpoint as ``wcscan run`` does: test MC at the dataset's points, beside sigma_CRB."""
    import torch

    from kernels import detector, likelihood, theory
    from kernels.bootstrap import test_sets
    from models import estimators
    from orchestrator.evaluation import evaluate
    from tune.trainables import build_model

    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)
    if state["model"] == "resnet3d":
        from models.resnet3d import ResNet3d

        net = ResNet3d(**state["hparams"])
    else:
        from models.deepsets import DeepSets

        net = DeepSets(**state["hparams"]) if state.get("hparams") else build_model("deepsets", {})
    net.load_state_dict(state["state_dict"])
    net.eval()
    if state["model"] == "resnet3d":
        n_events = int(state["events_per_image"])
        est = estimators.ResNetEstimator(net, int(state["bins"]), n_events, name="resnet3d")
    else:
        n_events = int(state["set_size"])
        est = estimators.DeepSetsEstimator(net, name="deepsets")
    manifest, grid = load_grid(spec.dataset)
    cfg = manifest["config"]
    level = cfg.get("level", "gen")
    det = detector.DetectorConfig.from_dict(cfg.get("detector") or {})
    table = theory.jtable(["C9_bsmumu"], [tuple(w) for w in cfg["windows"]])
    pdf = det.pdf_model(level, table.windows)
    seed = int(cfg.get("seed", spec.seed))
    sets, crb = {}, {}
    for i, d in enumerate(grid):
        sets[d] = test_sets(table, [d], n_events, n_sets, seed, level, det, point=EVAL_POINT_OFFSET + i).events
        crb[d] = likelihood.sigma_crb(table, [d], n_events, pdf)
    return evaluate(est, sets, crb, on_grid=grid)


def _log_evaluation(tracker, ev, out: Path) -> None:
    from orchestrator import plots
    from orchestrator.fitting import write_points_csv

    table = write_points_csv(ev.rows, out / "evaluation" / f"tune-{ev.name}" / "points.csv")
    fig = plots.plot_sigma_over_crb([ev], out / "figures" / f"tune-{ev.name}-sigma_over_crb.png")
    tracker.metrics(ev.summary)
    tracker.artifact(table, "evaluation")
    tracker.artifact(fig, "figures")

"""``wcscan tune``: a Ray Tune sweep over one model family, tracked in MLflow.

:func:`run_sweep` builds a :class:`ray.tune.Tuner` over
:func:`tune.trainables.train_trial` with ``tune.with_resources`` (CPUs and GPUs
per trial), a scheduler (ASHA on ``val_loss``, mode min, or FIFO) and a search
(Optuna behind a ``ConcurrencyLimiter``, or random). Trials and their
checkpoints live under ``STORAGE/NAME`` (default ``OUT/ray_results/<model>``;
an ``s3://`` URI or a shared volume on a cluster); ``FailureConfig(max_failures=2)``
restarts a crashed trial from its last checkpoint, and ``resume=True`` continues
an interrupted sweep with ``Tuner.restore`` (finished trials are kept, not rerun).

The result lists every trial (its config, per-epoch metrics, best ``val_loss``,
status) and the best one (lowest ``val_loss`` over all epochs).
:func:`load_checkpoint` rebuilds a trial's network from its checkpoint. This
module knows Ray Tune and the models, nothing else: the CLI's
``wcscan tune`` (:mod:`orchestrator.jobs.tune`) starts Ray, logs the trials to
MLflow and evaluates the best one against sigma_CRB.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from kernels.errors import ConfigError
from tune.trainables import DataSpec, load_checkpoint, make_trainable

__all__ = ["SEARCHES", "SCHEDULERS", "CRASH_ENV", "SweepResult", "run_sweep", "sweep", "best_checkpoint",
           "load_checkpoint"]

log = logging.getLogger(__name__)

SEARCHES = ("optuna", "random")
SCHEDULERS = ("asha", "fifo")
#: Where trials read events from: each its own from the dataset path, or one copy in Ray's object store.
DATA_SOURCES = ("path", "object-store")
CRASH_ENV = "WCSCAN_TUNE_CRASH_ONCE"


@dataclass
class SweepResult:
    """A finished (or interrupted) sweep.

    ``trials``: one dict per trial, ``trial_id``, ``config``, ``best_val_loss``,
    ``epochs``, ``status`` (TERMINATED, ERROR or NOT_STARTED), ``error`` and
    ``result`` (Tune's ``Result``: ``metrics_dataframe``, checkpoints, ``path``);
    ``best``: ``trial_id``, ``config``, ``best_val_loss`` and ``result`` of the
    trial of lowest ``val_loss``, or None; ``settings``: the sweep's options;
    ``spec``: the :class:`DataSpec`; ``interrupted``: the sweep was stopped
    (Ctrl-C) before every trial finished. The orchestrator adds ``evaluation``,
    ``run_id`` and ``tracking_uri`` when it has logged the sweep.
    """

    out: Path
    experiment_path: str
    spec: DataSpec | None = None
    settings: dict = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)
    interrupted: bool = False
    best: dict | None = None
    evaluation: object | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    #: One line, when the tracking store stopped answering: what it did not get and how to log it later.
    unlogged: str | None = None
    errors: int = 0
    #: A joint sweep's (``wcscan tune --config``): every estimator's evaluation beside the best, and the report.
    evaluations: list = field(default_factory=list)
    report: Path | None = None


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
    data: str = "path",
    images: str | os.PathLike | None = None,
    epochs: int = 10,
    tiny: bool = False,
    name: str | None = None,
    seed: int = 0,
    stop=None,
    callbacks=None,
    verbose: int = 0,
    spec_overrides: dict | None = None,
) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep; see the module docstring. ``stop``, ``callbacks``: Tune's.

    Ray should be running (``ray.init``); Tune starts a local one otherwise.
    """
    from tune.spaces import space_for

    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ConfigError(f"cpus per trial must be > 0 and gpus >= 0, got {cpus_per_trial}, {gpus_per_trial}")
    if data not in DATA_SOURCES:
        raise ConfigError(f"data must be one of {', '.join(DATA_SOURCES)}, got {data!r}")
    if search not in SEARCHES:
        raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    out = Path(out)
    spec = DataSpec(model=model, dataset=str(Path(dataset).resolve()),
                    images=str(Path(images).resolve()) if images else None, epochs=epochs, seed=seed,
                    crash_once=os.environ.get(CRASH_ENV) or None, **(spec_overrides or {}))
    space = space_for(model, tiny)
    if spec.images is not None and model == "resnet3d":
        space.pop("bins", None)  # fixed by the image dataset
    pools = None
    if data == "object-store" and not (model == "resnet3d" and spec.images is not None):
        from kernels.event_store import read_pools

        pools = read_pools(spec.dataset)  # once, on the driver; tune.with_parameters puts them in the object store
    res = sweep(make_trainable(spec, cpus_per_trial, gpus_per_trial, pools), space, out, name or model,
                num_samples=num_samples, max_t=epochs, search=search, scheduler=scheduler, storage=storage,
                resume=resume, max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial, seed=seed, stop=stop,
                callbacks=callbacks, verbose=verbose,
                settings=dict(model=model, gpus_per_trial=gpus_per_trial, tiny=tiny, data=data))
    res.spec = spec
    return res


def sweep(
    trainable,
    space: dict,
    out: str | os.PathLike,
    name: str,
    *,
    num_samples: int,
    max_t: int,
    search: str = "optuna",
    scheduler: str = "asha",
    storage: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    cpus_per_trial: float = 1,
    seed: int = 0,
    stop=None,
    callbacks=None,
    verbose: int = 0,
    settings: dict | None = None,
) -> SweepResult:
    """Run (or with ``resume`` continue) a sweep of any ``trainable`` (resources declared) over ``space``, at
    ``STORAGE/name``: trials ranked by their lowest ``val_loss``, ASHA over ``max_t`` reports. ``settings`` go
    into the result's beside the sweep's own. :func:`run_sweep` is this over a model family and a dataset."""
    import ray
    from ray import tune

    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if search not in SEARCHES:
        raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    sched = _scheduler(scheduler, max_t)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # after every check: a refused sweep leaves nothing behind
    if max_concurrent is None:
        cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else (os.cpu_count() or 1)
        max_concurrent = max(1, int(cpus // cpus_per_trial))
    storage_path = _storage(out, storage)
    path = f"{storage_path.rstrip('/')}/{name}"
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
    trials = _trial_rows(grid)
    res = SweepResult(out, path, None, trials=trials, errors=sum(t["error"] for t in trials),
                      interrupted=_interrupted(grid, num_samples),
                      settings=dict(**(settings or {}), num_samples=num_samples, cpus_per_trial=cpus_per_trial,
                                    search=search, scheduler=scheduler, storage=storage_path,
                                    max_concurrent=max_concurrent))
    done = [t for t in trials if t["best_val_loss"] == t["best_val_loss"]]  # not NaN
    if done:
        best = min(done, key=lambda t: t["best_val_loss"])
        res.best = {k: best[k] for k in ("trial_id", "config", "best_val_loss", "result")}
    return res


def _interrupted(grid, num_samples: int) -> bool:
    """Whether Tune stopped early on Ctrl-C: trials left unfinished, or fewer trials than asked for.

    Tune catches the first SIGINT itself, saves the experiment and returns normally; this tells the
    caller. (ASHA's early stops end trials as TERMINATED, so they do not count.)
    """
    try:
        statuses = [t.status for t in grid._experiment_analysis.trials]
    except AttributeError:  # another Ray version: only the count is known
        return len(grid) < num_samples
    return len(statuses) < num_samples or any(s not in ("TERMINATED", "ERROR") for s in statuses)


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


def best_checkpoint(result):
    """A trial's checkpoint of lowest val_loss, else its latest, else None (a trial stopped mid-report)."""
    if result.best_checkpoints:
        return result.get_best_checkpoint("val_loss", "min")
    return result.checkpoint

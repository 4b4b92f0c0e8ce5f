"""``wcscan tune``."""

from __future__ import annotations

import click

from orchestrator.cli.common import PATH, common_options, fmt, stage_printer, stdout, warn
from orchestrator.cli.types import RUN_CONFIG

EPILOG = """\b
Examples:
  # make a small dataset first (or use the one 'make demo' writes: demo-out/events)
  wcscan generate --dc9 -2:1:6 --events 20000 --out out/events
\b
  # 16 Deep Sets trials on a laptop: Optuna + ASHA, 1 CPU each
  wcscan tune --model deepsets --dataset out/events --num-samples 16 --epochs 12
\b
  # the ResNet on ready-made images, one GPU per trial, trials on shared storage
  wcscan tune --model resnet3d --dataset /data/events --images /data/images \\
      --num-samples 64 --cpus-per-trial 4 --gpus-per-trial 1 --storage /data/tune \\
      --tracking-uri http://mlflow:5000
\b
  # continue an interrupted sweep (same --out / --storage; the same MLflow parent run)
  wcscan tune --model deepsets --dataset out/events --resume
\b
  # trials share one copy of the events through Ray's object store
  wcscan tune --model deepsets --dataset out/events --data object-store
\b
  # several coefficients at any N: the joint Deep Sets of a joint run config, its settings the defaults
  wcscan tune --model deepsets --config demo-c9c10 --num-samples 8
\b
  # the joint event ratio, or the joint 3D ResNet (--model resnet3d), 12 trials of 6 epochs each
  wcscan tune --model event_ratio --config gen24k-c9c10 --num-samples 12 --epochs 6

Trials and checkpoints: STORAGE/<model> (default OUT/ray_results). MLflow: a parent run for the sweep, a child
run per trial (params, per-epoch losses); the best trial (lowest val_loss) is evaluated on independent test MC
beside sigma_CRB: OUT/evaluation/tune-<model>/points.csv and a sigma/CRB figure. Ctrl-C stops the sweep, saves
it for --resume, marks the MLflow parent KILLED and exits 130. GPUs that the cluster does not have and cannot
get are refused at once; an autoscaling cluster is given --gpu-wait seconds to add GPU nodes.

With --config (a joint run config over several coefficients) instead of --dataset, a trial trains that config's
models.<model> (event_ratio, deepsets or resnet3d) with its sampled settings exactly as 'wcscan run' does, on the
scan's events (generated once into OUT/events); the metric is the last stage's validation loss on fresh
simulated sets (rho's Gaussian NLL; the event ratio's loss), and --epochs sets that stage's epochs (default: the
config's). The best trial is evaluated with the joint ML fit on the config's evaluation design at every N:
OUT/evaluation/<estimator>/points.csv, OUT/figures and OUT/report.md.
"""

DATASET_ONLY = ("images", "set_size", "sets_per_point", "events_per_image", "data")
"""Options of a --dataset (delta C9) sweep that a --config sweep takes from its config instead."""


@click.command(epilog=EPILOG, short_help="Ray Tune sweep over one model family, tracked in MLflow.")
@click.option("--model", type=click.Choice(["resnet3d", "deepsets", "event_ratio"]), required=True,
              help="Model family (event_ratio: with --config).")
@click.option("--dataset", type=PATH, default=None, metavar="DIR", help="Event dataset (wcscan generate): a delta C9 sweep.")
@click.option("--config", "run_config", type=RUN_CONFIG, default=None, metavar="NAME|FILE",
              help="A joint run config (several coefficients): sweep its models.<model> instead (or --dataset).")
@click.option("--images", type=PATH, default=None, metavar="DIR", help="Image dataset (wcscan images) for resnet3d.")
@click.option("--num-samples", type=int, default=8, show_default=True, metavar="K", help="Trials.")
@click.option("--epochs", type=int, default=None, metavar="N",
              help="Maximum epochs per trial (with --config: of its last stage)  [default: 10; the config's]")
@click.option("--cpus-per-trial", type=float, default=1, show_default=True, metavar="C", help="CPUs per trial.")
@click.option("--gpus-per-trial", type=float, default=0, show_default=True, metavar="G", help="GPUs per trial.")
@click.option("--gpu-wait", type=float, default=600, show_default=True, metavar="S",
              help="On an autoscaling cluster: seconds to wait for GPU nodes.")
@click.option("--max-concurrent", type=int, default=None, metavar="N",
              help="Trials at once (default: the cluster's CPUs / --cpus-per-trial).")
@click.option("--search", type=click.Choice(["optuna", "random"]), default="optuna", show_default=True,
              help="Search algorithm.")
@click.option("--scheduler", type=click.Choice(["asha", "fifo"]), default="asha", show_default=True,
              help="Trial scheduler.")
@click.option("--data", type=click.Choice(["path", "object-store"]), default="path", show_default=True,
              help="Trials read the events from the dataset path, or from one copy in Ray's object store.")
@click.option("--storage", default=None, metavar="PATH",
              help="Tune storage: a shared directory or s3:// URI (default: OUT/ray_results).")
@click.option("--out", type=PATH, default=None, metavar="DIR", help="Output directory (default: out/tune-<model>).")
@click.option("--resume", is_flag=True, help="Continue the interrupted sweep at STORAGE/<model>.")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db).")
@click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (default: $RAY_ADDRESS or local).")
@click.option("--set-size", type=int, default=2000, show_default=True, metavar="N", help="deepsets: events per set.")
@click.option("--sets-per-point", type=int, default=150, show_default=True, metavar="N",
              help="deepsets: training sets per point.")
@click.option("--events-per-image", type=int, default=2000, show_default=True, metavar="N",
              help="resnet3d without --images: events per image.")
@click.option("--eval-sets", type=int, default=None, metavar="N",
              help="Test sets per point for the best trial  [default: 20; the config's]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search and of training.")
@click.option("--tiny", is_flag=True, help="Tiny networks (a smoke test of the set-up).")
@click.option("--device", default=None, metavar="DEV", help="Torch device (default: cuda if available, else cpu).")
@common_options
def tune(model, dataset, run_config, images, num_samples, epochs, cpus_per_trial, gpus_per_trial, gpu_wait, max_concurrent,
         search, scheduler, data, storage, out, resume, tracking_uri, address, set_size, sets_per_point,
         events_per_image, eval_sets, seed, tiny, device, quiet, verbose):
    """Search the hyperparameters of the 3D ResNet or Deep Sets with Ray Tune (ASHA, Optuna), log every trial to
    MLflow and evaluate the best against the Cramer-Rao bound."""
    if (dataset is None) == (run_config is None):
        raise click.UsageError("give exactly one of --dataset (a delta C9 sweep) and --config (a joint one)")
    if run_config is not None:
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in DATASET_ONLY
                 if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)}: for --dataset sweeps; a --config sweep takes its data "
                                   "settings from the config")
        return _joint(model, run_config, out, num_samples=num_samples, epochs=epochs, eval_sets=eval_sets,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, gpu_wait=gpu_wait,
                      max_concurrent=max_concurrent, search=search, scheduler=scheduler, storage=storage,
                      resume=resume, tracking_uri=tracking_uri, address=address, seed=seed, tiny=tiny, device=device,
                      quiet=quiet)
    if model == "event_ratio":
        raise click.UsageError("--model event_ratio is a joint model: sweep it with --config")
    from orchestrator.jobs.tune import tune_job

    epochs = 10 if epochs is None else epochs
    eval_sets = 20 if eval_sets is None else eval_sets
    res = tune_job(model, dataset, out, images=images, num_samples=num_samples, epochs=epochs, set_size=set_size,
                   sets_per_point=sets_per_point, events_per_image=events_per_image, eval_sets=eval_sets,
                   device=device, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, gpu_wait=gpu_wait,
                   search=search, scheduler=scheduler, storage=storage, resume=resume, max_concurrent=max_concurrent,
                   data=data, tiny=tiny, seed=seed, tracking_uri=tracking_uri, address=address,
                   verbose=0 if quiet else 1, stage=stage_printer("tune", quiet))
    console = _print_trials(res)
    if res.evaluation is not None:
        console.print("best on test MC: " + ", ".join(f"{k} {fmt(v)}" for k, v in res.evaluation.summary.items()),
                      soft_wrap=True)
    _print_tracking(console, res)


def _print_trials(res):
    """The sweep's trials and its best; returns the console."""
    console = stdout()
    console.print(f"{len(res.trials)} trials ({res.errors} failed) in {res.experiment_path}", soft_wrap=True)
    if res.best is not None:
        chosen = ", ".join(f"{k}={fmt(v)}" for k, v in res.best["config"].items())
        console.print(f"best trial {res.best['trial_id']}: val_loss {res.best['best_val_loss']:.4g} ({chosen})",
                      soft_wrap=True)
    return console


def _print_tracking(console, res) -> None:
    if res.unlogged:
        warn(res.unlogged)
    else:
        console.print(f"MLflow: {res.tracking_uri} (parent run {res.run_id})", soft_wrap=True)


def _joint(model, run_config, out, quiet, **options) -> None:
    from orchestrator.cli.common import progress_factory
    from orchestrator.config.run import load_config
    from orchestrator.config.joint_run import JointRunConfig
    from orchestrator.jobs.joint_tune import joint_tune_job

    cfg = load_config(run_config)
    if not isinstance(cfg, JointRunConfig):
        raise click.UsageError(f"--config {run_config}: not a joint config (theory.coefficients lists one); "
                               "sweep a delta C9 model with --dataset")
    res = joint_tune_job(cfg, model, out, verbose=0 if quiet else 1, progress=progress_factory(quiet),
                         stage=stage_printer("tune", quiet), **options)
    console = _print_trials(res)
    for ev in res.evaluations:  # the ML fit, then the best network, on the same test sets
        for n in cfg.evaluation.events_per_set:
            s = ev.summary
            cells = ", ".join(f"{c} {s[f'sigma_over_crb_mean_{c}_N{n}']:.3f}" for c in cfg.shift_columns)
            console.print(f"{ev.name} at N={n:,}: sigma/sigma_CRB mean {cells}; joint coverage 68% "
                          f"{s[f'joint_coverage_68_mean_N{n}']:.2f}, 95% {s[f'joint_coverage_95_mean_N{n}']:.2f}",
                          soft_wrap=True)
    if res.report is not None:
        console.print(f"report: {res.report}", soft_wrap=True)
    _print_tracking(console, res)

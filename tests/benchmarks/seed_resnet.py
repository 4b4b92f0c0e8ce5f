"""The seed study's network (config ``seed-resnet34``: ResNet-34, width 64, 50^3 images of 24,000 events)
trained on a GPU for a fixed time budget, then evaluated beside the Cramér–Rao bound.

The whole ``wcscan run --config seed-resnet34`` (3,360 images per point, 60 epochs) needs a GPU node for
about an hour. This script runs the same network on the same kind of images with the config's training
settings, shortened in two ways that it prints: fewer images per point (``--images-per-point``) and as many
epochs as fit ``--train-seconds`` at the throughput measured first. It needs neither Ray nor MLflow, so it
runs on a bare GPU machine with torch; the code is the one ``wcscan run`` calls:

- images: the streamed ResNet's worker (``orchestrator.build.stream_work.make_chunk``), in parallel processes;
- network and training: ``models.resnet3d.ResNet3d``, ``models.training.train`` (the config's ``train``
  section, AMP on CUDA), throughput from ``models.bench.resnet_throughput`` (``wcscan bench resnet``);
- evaluation: ``orchestrator.evaluate.estimators`` (``evaluation_sets``, ``evaluate``, ``image_bounds``) on
  independent test sets, as in ``wcscan run``.

    python tests/benchmarks/seed_resnet.py --json                     # a GPU node (defaults)
    python tests/benchmarks/seed_resnet.py --images-per-point 8 --bins 8 --depth 10 --width 8 \\
        --train-seconds 20 --sets 10 --device cpu                     # a smoke run on a laptop

Prints JSON: the card, the measured training images/s (synthetic and in the real loop), the epochs run,
the projected time of the full config's training, and sigma/sigma_CRB, bias and coverage per point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _init_worker():
    from orchestrator.runtime.ray import limit_threads

    limit_threads(1)


def make_training_images(job, per_point: int, phase: int, workers: int) -> list[np.ndarray]:
    """Per point, ``per_point`` fresh images ``(per_point, 2, B, B, B)`` of ``phase``, made by the streamed
    ResNet's own worker code (:func:`orchestrator.build.stream_work.make_chunk`: the same seeds and bytes as
    ``data: stream``), chunk by chunk in ``workers`` processes."""
    from orchestrator.build.stream_work import default_chunk_units, make_chunk, plan_chunks

    chunks = plan_chunks(job, phase, per_point, default_chunk_units(job))
    out = [np.empty((per_point, 2, job.bins, job.bins, job.bins), np.float32) for _ in job.grid]
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        for c, (images, _) in zip(chunks, pool.map(make_chunk, [job] * len(chunks), chunks)):
            out[c.point][c.first:c.first + c.count] = images
    return out


def _positive(kind):
    def parse(text):
        v = kind(text)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="seed_resnet.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="seed-resnet34", help="the run config whose network and data are used")
    ap.add_argument("--images-per-point", type=_positive(int), default=800, help="training + validation images per scan point")
    ap.add_argument("--train-seconds", type=_positive(float), default=150.0, help="training budget: epochs = budget x rate / images")
    ap.add_argument("--max-epochs", type=_positive(int), default=None, help="at most this many epochs (default: the config's)")
    ap.add_argument("--sets", type=_positive(int), default=100, help="independent test sets per evaluation point")
    ap.add_argument("--bins", type=_positive(int), default=None, help="override the config's bins (smoke runs)")
    ap.add_argument("--depth", type=int, default=None, choices=[10, 18, 34], help="override the config's depth")
    ap.add_argument("--width", type=_positive(int), default=None, help="override the config's width")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ap.add_argument("--workers", type=_positive(int), default=os.cpu_count(), help="processes that make images")
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader processes (default: the config's)")
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    args = ap.parse_args(argv)
    if args.images_per_point < 2:
        ap.error("--images-per-point: at least 2 (training and validation images)")
    from kernels.errors import WcscanError
    from orchestrator.config.checks import device as check_device

    try:  # before minutes of image building
        check_device(args.device)
    except WcscanError as e:
        ap.error(str(e))
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    from kernels import detector, theory
    from orchestrator.build.sources import split_counts
    from orchestrator.build.stream_work import EPOCH_PHASE, VAL_PHASE, StreamJob
    from orchestrator.config.run import load_config
    from orchestrator.evaluate.estimators import evaluate, evaluation_sets, image_bounds

    cfg = load_config(args.config)
    rc, ic, ec = cfg.models.resnet3d, cfg.images, cfg.evaluation
    bins, depth, width = args.bins or ic.bins, args.depth or rc.depth, args.width or rc.width
    grid = [float(d) for d in cfg.scan.dc9]
    epi = ic.events_per_image
    table = theory.jtable(["C9_bsmumu"], [tuple(w) for w in cfg.theory.windows])
    pdf = detector.DetectorConfig.from_dict(cfg.scan.detector).pdf_model(cfg.scan.level, table.windows)

    n_val = max(1, split_counts(args.images_per_point, ic.val_fraction)[1])
    n_train_pp = args.images_per_point - n_val
    job = StreamJob("resnet3d", cfg.seed, tuple(grid), unit=epi, bins=bins, level=cfg.scan.level,
                    detector=tuple(sorted((cfg.scan.detector or {}).items())), windows=table.windows,
                    theory_key=table.key)
    t0 = time.perf_counter()
    fit = make_training_images(job, n_train_pp, EPOCH_PHASE, args.workers)
    val = make_training_images(job, n_val, VAL_PHASE, args.workers)
    t_images = time.perf_counter() - t0
    say(f"{len(grid)} x {args.images_per_point} images of {bins}^3 in {t_images:.1f} s")
    t0 = time.perf_counter()
    sets, crb = evaluation_sets(table, pdf, ec.dc9, ec.events_per_set, args.sets, cfg.seed, cfg.scan.level)
    t_test = time.perf_counter() - t0

    import torch

    from models.bench import resnet_throughput
    from models.data import image_dataset
    from models.estimators import ResNetEstimator
    from models.resnet3d import ResNet3d
    from models.training import TrainConfig, resolve_device, seed_everything, train

    dev = resolve_device(args.device)
    tc_cfg = rc.train.model_dump()
    bench = resnet_throughput(depth=depth, bins=bins, batch=tc_cfg["batch_size"], steps=10, device=dev, width=width,
                              amp=True, warmup=3)
    rate = bench["images_per_s"]
    n_train = len(grid) * n_train_pp
    max_epochs = args.max_epochs or tc_cfg["epochs"]
    epochs = int(max(1, min(max_epochs, math.floor(args.train_seconds * rate / n_train))))
    say(f"{bench['device_name']}: {rate:.0f} training images/s (synthetic); {epochs} epochs of {n_train} images")

    seed_everything(cfg.seed)
    tc_cfg.update(epochs=epochs, seed=cfg.seed, device=str(dev), loss=rc.training_loss)
    if args.num_workers is not None:
        tc_cfg["num_workers"] = args.num_workers
    net = ResNet3d(depth=depth, width=width, dropout=rc.dropout, head=rc.head).fit_preprocess(fit)
    hist = train(net, image_dataset(fit, grid), image_dataset(val, grid), TrainConfig(**tc_cfg))
    loop_rate = hist["epochs_run"] * n_train / hist["seconds"]
    say(f"trained {hist['epochs_run']} epochs in {hist['seconds']:.0f} s ({loop_rate:.0f} images/s with validation)")

    est = ResNetEstimator(net, bins, epi, name="resnet3d")
    t0 = time.perf_counter()
    ev = evaluate(est, sets, crb, on_grid=[d for d in ec.dc9 if d in grid],
                  sigma_crb_image=image_bounds(table, pdf, ec.dc9, bins, ec.events_per_set))
    t_eval = time.perf_counter() - t0
    full = rc.train.epochs * len(grid) * split_counts(ic.images_per_point, ic.val_fraction)[0]
    out = {
        "benchmark": "seed_resnet",
        "config": cfg.name,
        "device": str(dev),
        "device_name": bench["device_name"],
        "torch": torch.__version__,
        "depth": depth, "width": width, "bins": bins, "batch": tc_cfg["batch_size"], "amp": bench["amp"],
        "num_workers": tc_cfg["num_workers"],
        "points": len(grid), "images_per_point": args.images_per_point, "train_images": n_train,
        "epochs": hist["epochs_run"], "best_epoch": hist["best_epoch"], "best_val_loss": hist["best_val_loss"],
        "image_build_seconds": t_images, "images_per_s_build": len(grid) * args.images_per_point / t_images,
        "test_sets_seconds": t_test, "evaluate_seconds": t_eval,
        "synthetic_train_images_per_s": rate, "peak_memory_gb": bench["peak_memory_gb"],
        "train_seconds": hist["seconds"], "loop_train_images_per_s": loop_rate,
        "full_config_train_images": full,
        "full_config_projected_train_hours": full / loop_rate / 3600,
        "summary": ev.summary,
        "points_table": [{k: r[k] for k in ("dc9_true", "bias", "sigma", "sigma_crb", "sigma_crb_image",
                                             "sigma_over_crb", "mse", "pull_width", "coverage_68", "coverage_95") if k in r} for r in ev.rows],
    }
    print(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()

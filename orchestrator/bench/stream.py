"""Benchmark behind ``wcscan bench stream``: the trainer's throughput on streamed data against data in memory.

Two small training loops, Deep Sets on sets of ``set_size`` events and a 3D ResNet
on ``bins``^3 images of ``events_per_image`` events, each run on the same amount of
data per epoch (``per_point`` samples at each of ``points`` scan points), two ways,
alternately, ``repeats`` times, with :func:`models.training.train`:

- **memory**: the samples drawn once beforehand and wrapped as ``wcscan run``'s
  stored-pool path wraps them (a :class:`~models.data.SetDataset` indexing
  per-point event pools; per-point image arrays joined by
  :func:`~models.data.image_dataset`), the same every epoch;
- **stream**: :class:`~orchestrator.build.stream.StreamDataset`, new samples every
  epoch from ``workers`` Ray actors through a queue of at most ``in_flight`` refs.

The figure is samples per second of training (forward, backward, optimiser step;
no validation pass), the median of the repeats, from ``train``'s own clock. The
trainer uses ``torch_threads`` threads, and each stream worker one CPU of its own:
streaming costs those CPUs, and the figure says whether they keep the trainer fed.
Actors, torch kernels and theory tables are warmed up by one untimed epoch of each
kind first. Also reported: the share of the streamed training time the trainer
spent waiting for a chunk, the rate at which the stream delivers samples when
nothing trains, and from these the workers it takes to keep the trainer as busy as
from memory (``workers_to_keep_up``: the trainer's samples/s from memory over one
worker's samples/s; set ``stream_workers`` at least that).
"""

from __future__ import annotations

import os
import platform

import numpy as np

__all__ = ["bench_stream"]


def _nets(model: str, x: np.ndarray, bins: int):
    """A fresh, seeded network of ``model`` with its input scaling fitted on ``x``."""
    import torch

    torch.manual_seed(0)
    if model == "deepsets":
        from models.deepsets import DeepSets

        return DeepSets(hidden=32, phi_layers=2, latent=32, rho_layers=2).fit_features(x.reshape(-1, 4))
    from models.resnet3d import ResNet3d

    return ResNet3d(depth=10, width=8).fit_preprocess(x)


def _memory_data(model: str, x: np.ndarray, y: np.ndarray, grid):
    """The samples wrapped as the stored-pool path of ``wcscan run`` wraps its data."""
    from models.data import SetDataset, image_dataset

    per_point = len(x) // len(grid)
    parts = [slice(p * per_point, (p + 1) * per_point) for p in range(len(grid))]
    if model == "deepsets":
        n = x.shape[1]
        pools = [np.ascontiguousarray(x[s].reshape(-1, 4)) for s in parts]
        return SetDataset(pools, grid, [np.arange(per_point * n).reshape(per_point, n) for _ in parts])
    return image_dataset([x[s] for s in parts], grid)


def bench_stream(points: int = 4, per_point: int = 16, set_size: int = 24_000, events_per_image: int = 24_000,
                 bins: int = 16, epochs: int = 2, repeats: int = 3, workers: int = 1, in_flight: int | None = None,
                 torch_threads: int = 1, seed: int = 0, address: str | None = None) -> dict:
    """Samples/s of Deep Sets and ResNet training, streamed against from memory (see the module docstring)."""
    import torch

    from kernels import theory
    from models.training import TrainConfig, train
    from orchestrator.bench.timing import seconds
    from orchestrator.build.stream import StreamDataset, StreamSource
    from orchestrator.build.stream_work import FIT_PHASE, StreamJob
    from orchestrator.runtime.ray import cluster_cpus, init_ray

    torch.set_num_threads(torch_threads)
    init_ray(address)
    windows = ((1.1, 6.0),)
    key = theory.jtable(["C9_bsmumu"], [list(w) for w in windows]).key
    grid = tuple(float(d) for d in np.linspace(-2.0, 1.0, points))
    out: dict = {"benchmark": "stream", "points": points, "per_point_per_epoch": per_point, "epochs": epochs,
                 "repeats": repeats, "workers": workers, "torch_threads": torch_threads, "seed": seed}
    for model, unit, batch in (("deepsets", set_size, 8), ("resnet3d", events_per_image, 8)):
        job = StreamJob(model, seed, grid, unit=unit, bins=bins if model == "resnet3d" else 0, windows=windows,
                        theory_key=key)
        tc = TrainConfig(epochs=epochs, batch_size=batch, lr=1e-3, scheduler="none", patience=0, seed=seed,
                         device="cpu")
        with StreamDataset(StreamSource(job, workers, in_flight, address), per_point, batch) as stream:
            source = stream.source
            x, y = source.draw(FIT_PHASE, per_point, stream.chunk_units)
            memory = _memory_data(model, x, y, grid)
            runs: dict[str, list[float]] = {"memory": [], "stream": []}
            waits: list[float] = []
            for r in range(repeats + 1):  # the first round warms up, untimed
                for mode, data in (("memory", memory), ("stream", stream)):
                    cfg = tc if r else TrainConfig(**{**tc.to_dict(), "epochs": 1})
                    wait0 = source.stats["wait_s"]
                    hist = train(_nets(model, x, bins), data, None, cfg)
                    if r:
                        runs[mode].append(cfg.epochs * stream.steps_per_epoch * batch / hist["seconds"])
                        if mode == "stream":
                            waits.append((source.stats["wait_s"] - wait0) / hist["seconds"])
            # the stream alone: draw an epoch, train nothing
            data_only = len(stream) / seconds(lambda: [None for _ in stream.epoch(0)])
            mem, st = float(np.median(runs["memory"])), float(np.median(runs["stream"]))
            out.update({
                f"{model}_memory_samples_per_s": mem,
                f"{model}_stream_samples_per_s": st,
                f"{model}_stream_over_memory": st / mem,
                f"{model}_stream_wait_fraction": float(np.median(waits)),
                f"{model}_stream_data_only_samples_per_s": data_only,
                # what the trainer eats from memory against what one worker draws: the workers to keep it fed
                f"{model}_trainer_events_per_s": mem * unit,
                f"{model}_stream_events_per_s_per_worker": data_only * unit / source.workers,
                f"{model}_workers_to_keep_up": mem / (data_only / source.workers),
                f"{model}_memory_runs": runs["memory"],
                f"{model}_stream_runs": runs["stream"],
                f"{model}_batch": batch,
                f"{model}_events_per_sample": unit,
                "in_flight": source.in_flight,
                "in_flight_max": max(out.get("in_flight_max", 0), source.stats["in_flight_max"]),
            })
    out.update(bins=bins, ray_cpus=cluster_cpus(), cpu_count=os.cpu_count(), python=platform.python_version(),
               torch=torch.__version__, machine=platform.machine())
    return out

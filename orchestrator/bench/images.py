"""Benchmark behind ``wcscan bench images``: voxel images, ours against scipy.

Both sides make the same two channels (mean q2 and count per voxel) of the same
events, cut into images of ``events_per_image`` events, and are timed
alternately in one process on one thread (BLAS pools limited to one thread,
``POLARS_MAX_THREADS=1`` set before Polars is first imported), so "per core"
means what it says. Each figure is the median over ``repeats`` runs.

- ours: :func:`kernels.voxels.voxelize` (one flat index per event, two
  ``np.bincount`` calls per cache-sized group of images);
- baseline: ``scipy.stats.binned_statistic_dd`` per image, once with
  ``statistic="mean"`` on q2 and once with ``"count"``, the way earlier studies
  made the images (the sample passed as float64, so that scipy's bin edges are
  the exact ones, as ours);
- also reported: the baseline reusing the first call's bin numbers for the
  count (``binned_statistic_result=``), a stronger scipy baseline, and
  :func:`kernels.voxels_polars.voxelize_polars`, the Polars group-by version.

The events are uniform in the angles and in q2 in [1.1, 6] (float32): the
timing of binning does not depend on the physics, and this keeps the
benchmark free of flavio.
"""

from __future__ import annotations

import math
import os
import platform

import numpy as np

from orchestrator.bench.timing import one_thread, seconds

__all__ = ["bench_images"]


def _events(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    cl = rng.uniform(-1, 1, n).astype(np.float32)
    ck = rng.uniform(-1, 1, n).astype(np.float32)
    chi = rng.uniform(0, 2 * math.pi, n).astype(np.float32)
    # float32(2 pi) rounds above 2 pi: scipy would drop such an event as out of range, we
    # put it in the last bin. Keep the benchmark's events inside both conventions.
    np.minimum(chi, np.nextafter(np.float32(2 * math.pi), np.float32(0)), out=chi)
    q2 = rng.uniform(1.1, 6.0, n).astype(np.float32)
    return cl, ck, chi, q2


def _baseline(cl, ck, chi, q2, bins: int, epi: int, reuse: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    from scipy.stats import binned_statistic_dd

    ranges = [(-1.0, 1.0), (-1.0, 1.0), (0.0, 2 * math.pi)]
    out = []
    for s in range(0, cl.shape[0], epi):
        e = s + epi
        # float64: with a float32 sample scipy rounds its edges to float32, and an event
        # within a float32 ulp of an edge lands in the other bin than the exact edges say.
        sample = np.stack([cl[s:e], ck[s:e], chi[s:e]], axis=1, dtype=np.float64)
        mean = binned_statistic_dd(sample, q2[s:e], statistic="mean", bins=bins, range=ranges)
        if reuse:
            count = binned_statistic_dd(
                sample, q2[s:e], statistic="count", bins=bins, range=ranges, binned_statistic_result=mean
            )
        else:
            count = binned_statistic_dd(sample, q2[s:e], statistic="count", bins=bins, range=ranges)
        out.append((mean.statistic, count.statistic))
    return out


def bench_images(
    events: int = 960_000,
    bins: int = 50,
    repeats: int = 5,
    events_per_image: int = 24_000,
    seed: int = 0,
    polars: bool = True,
) -> dict:
    """Events/s per core of our voxelisation against ``scipy.stats.binned_statistic_dd``.

    ``events`` (a multiple of ``events_per_image``) are cut into images; the
    default is the seed study's images, 40 of them. Returns a flat dict with
    ``ours_events_per_s_per_core``, ``baseline_events_per_s_per_core`` and
    ``ratio`` (ours / baseline), plus the stronger scipy baseline, the Polars
    version, and whether ours agrees with scipy on every voxel.
    """
    os.environ.setdefault("POLARS_MAX_THREADS", "1")  # only takes effect before polars is imported
    from kernels.voxels import voxelize
    from kernels.voxels_polars import voxelize_polars

    if events <= 0 or events_per_image <= 0 or events % events_per_image:
        raise ValueError(f"events ({events}) must be a positive multiple of events_per_image ({events_per_image})")
    n_images = events // events_per_image
    cl, ck, chi, q2 = _events(events, seed)

    def ours():
        return voxelize(cl, ck, chi, q2, bins, n_images=n_images)

    def base():
        return _baseline(cl, ck, chi, q2, bins, events_per_image)

    def base_reuse():
        return _baseline(cl, ck, chi, q2, bins, events_per_image, reuse=True)

    def pl_version():
        return voxelize_polars(cl, ck, chi, q2, bins, n_images=n_images)

    runs = {"ours": ours, "baseline": base, "baseline_reuse": base_reuse}
    if polars:
        runs["polars"] = pl_version
    times: dict[str, list[float]] = {k: [] for k in runs}
    with one_thread():
        img = ours()  # warm-up, and the agreement check
        ref = base()
        for fn in runs.values():  # warm-up (imports, page faults of the allocator)
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(seconds(fn))

    means = np.stack([m for m, _ in ref])
    counts = np.stack([c for _, c in ref])
    agrees = bool(
        np.array_equal(img[:, 1], counts)
        and np.array_equal(np.isnan(img[:, 0]), np.isnan(means))
        and np.allclose(img[:, 0], means, rtol=3e-7, atol=0, equal_nan=True)
    )
    rate = {k: events / float(np.median(v)) for k, v in times.items()}
    result = {
        "benchmark": "images",
        "events": events,
        "events_per_image": events_per_image,
        "images": n_images,
        "bins": bins,
        "repeats": repeats,
        "threads": 1,
        "ours_events_per_s_per_core": rate["ours"],
        "baseline_events_per_s_per_core": rate["baseline"],
        "ratio": rate["ours"] / rate["baseline"],
        "baseline": "scipy.stats.binned_statistic_dd per image: statistic='mean' (q2) and 'count'",
        "baseline_reuse_events_per_s_per_core": rate["baseline_reuse"],
        "ratio_vs_baseline_reuse": rate["ours"] / rate["baseline_reuse"],
        "ours_ms_per_image": 1e3 * float(np.median(times["ours"])) / n_images,
        "agrees_with_baseline": agrees,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    if polars:
        import polars as pl

        result["polars_events_per_s_per_core"] = rate["polars"]
        result["polars_threads"] = pl.thread_pool_size()
    return result

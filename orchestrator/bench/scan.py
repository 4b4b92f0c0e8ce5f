"""Benchmark behind ``wcscan bench scan``: distributed generation, 1 worker against 2.

The same scan (same seed and config) is generated into fresh directories by a
pool of 1 and by a pool of 2 Ray workers, alternately, ``repeats`` times; the
median time of each counts. Ray is started once; each pool is started
and warmed up (actors up, kernels imported, theory table loaded, one small
part made by every actor) before the clock starts, so the timings are of the
generation itself: sampling, Parquet writes, checksums, journal and manifest.
The two datasets must come out byte-identical; the result says whether they
did.

The seed-study projection scales the per-core rate measured with 1 worker
linearly to the cores of a node; ``projection_note`` states its assumptions.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from orchestrator.bench.timing import seconds as wall_seconds

__all__ = ["bench_scan", "SEED_STUDY"]

#: The seed study: 22 scan points x 3360 images x 24000 events per image.
SEED_STUDY = {"points": 22, "images_per_point": 3360, "events_per_image": 24_000}
PROJECTION_CORES = 16


def _dataset_bytes(root: Path) -> tuple[int, dict[str, bytes]]:
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}
    files["manifest.json"] = (root / "manifest.json").read_bytes()
    return sum(len(b) for k, b in files.items() if k.endswith(".parquet")), files


def bench_scan(
    events_per_point: int = 2_000_000,
    points: int = 4,
    chunk_size: int = 500_000,
    seed: int = 0,
    repeats: int = 3,
    address: str | None = None,
) -> dict:
    """Wall time of generating ``points`` x ``events_per_point`` events with 1 and with 2 Ray workers.

    Each is timed ``repeats`` times, alternating, into a fresh directory; the
    medians count (the best times are reported too). Returns a flat
    dict: ``seconds_1_worker``, ``seconds_2_workers``,
    ``speedup``, ``events_per_s`` (2 workers), ``events_per_s_per_core``
    (1 worker), ``identical`` (the two datasets' bytes), and the projection
    ``projected_seed_study_hours_16_cores`` with its ``projection_note``.
    """
    from kernels import theory
    from orchestrator.generate.dataset import generate, generation_pool
    from orchestrator.runtime.ray import init_ray

    windows = [(1.1, 6.0)]
    dc9 = [-2.0 + 3.1 * i / max(points - 1, 1) for i in range(points)]
    scan = dict(dc9=dc9, events=events_per_point, seed=seed, windows=windows, chunk_size=chunk_size)
    cluster = init_ray(address)
    theory.jtable(["C9_bsmumu"], windows)  # build the cache once, outside the timings

    times: dict[int, list[float]] = {1: [], 2: []}
    identical = True
    with tempfile.TemporaryDirectory(prefix="wcscan-bench-scan-") as tmp:
        tmp = Path(tmp)
        for r in range(repeats):  # alternate 1 and 2 workers, so a burst of other load hits both
            for workers in (1, 2):
                with generation_pool(workers) as pool:
                    pool.warm_up()
                    # every actor makes one small part: imports, theory table, first-call costs
                    warm = tmp / f"warm-{workers}-{r}"
                    generate(warm, [0.0], 2_000 * workers, seed + 1, windows, 2_000, pool=pool)
                    run = tmp / f"run-{workers}"
                    times[workers].append(wall_seconds(lambda run=run, pool=pool: generate(run, pool=pool, **scan)))
                if workers == 1:
                    size, one = _dataset_bytes(tmp / "run-1")
                else:
                    identical = identical and _dataset_bytes(tmp / "run-2")[1] == one
                shutil.rmtree(tmp / f"run-{workers}")
    seconds = {w: float(np.median(t)) for w, t in times.items()}  # medians, as every wcscan benchmark

    total = points * events_per_point
    rate_1 = total / seconds[1]
    study_events = SEED_STUDY["points"] * SEED_STUDY["images_per_point"] * SEED_STUDY["events_per_image"]
    hours = study_events / (rate_1 * PROJECTION_CORES) / 3600
    bytes_per_event = size / total
    return {
        "benchmark": "scan",
        "points": points,
        "events_per_point": events_per_point,
        "chunk_size": chunk_size,
        "parts": points * -(-events_per_point // chunk_size),
        "ray_cluster_cpus": cluster["cpus"],
        "repeats": repeats,
        "seconds_1_worker": seconds[1],
        "seconds_2_workers": seconds[2],
        "seconds_1_worker_best": min(times[1]),
        "seconds_2_workers_best": min(times[2]),
        "seconds_1_worker_all": times[1],
        "seconds_2_workers_all": times[2],
        "speedup": seconds[1] / seconds[2],
        "events_per_s": total / seconds[2],
        "events_per_s_per_core": rate_1,
        "identical": identical,
        "bytes_per_event": bytes_per_event,
        "seed_study_events": study_events,
        "projected_seed_study_hours_16_cores": hours,
        "projected_seed_study_storage_gb": study_events * bytes_per_event / 1e9,
        "projection_note": (
            f"generation only (gen level: sampling, zstd Parquet parts, sha256, journal) of "
            f"{SEED_STUDY['points']} points x {SEED_STUDY['images_per_point']} images x "
            f"{SEED_STUDY['events_per_image']} events, at the per-core rate measured here with 1 Ray worker, "
            f"scaled linearly to {PROJECTION_CORES} workers on a {PROJECTION_CORES}-core node (no contention "
            "for memory bandwidth or disk; the writes need about "
            f"{rate_1 * PROJECTION_CORES * bytes_per_event / 1e6:.0f} MB/s); detector levels and the imaging "
            "cost (wcscan bench images) come on top"
        ),
        "machine": platform.processor() or platform.machine(),
        "os_cpus": os.cpu_count(),
    }

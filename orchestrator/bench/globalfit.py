"""Benchmark behind ``wcscan bench globalfit``: the global fit's flavio predictions on Ray, the cache, the surrogate.

1. **Workers.** Direct flavio predictions of the ``lhcb-seed`` set (37
   observables) on a ``grid`` x ``grid`` grid over the seed study's box, in
   items of ``chunk`` points, by an actor pool of 1 and of 2 Ray workers,
   alternately, ``repeats`` times; the medians count. Each pool is started
   and warmed up (every actor imports flavio and predicts one chunk: flavio's
   first call in a process fills its caches) before the clock starts. The two
   tables must be identical.
2. **Cache.** The theory inputs of the ``lhcb-seed`` job on its 50 x 50 grid
   (surrogate fit, Sigma_th from ``draws`` draws in 2 chunks, grid), cold into
   an empty cache directory, then again from it.
3. **Surrogate.** Seconds per point of direct flavio calls (1 worker) against
   the closed forms; a 50 x 50 grid directly (projected from the 1-worker
   rate) against the surrogate (its measured fit plus the closed forms); and
   the closed forms' largest deviation from the direct table of step 1, at
   points the fit never saw.
"""

from __future__ import annotations

import os
import platform
import tempfile

import numpy as np

from orchestrator.bench.timing import median_time, seconds

__all__ = ["bench_globalfit"]

SEED_GRID = 50 * 50


def _direct(pool, obs_set, points, chunk: int) -> np.ndarray:
    """Direct predictions (M, K) of ``points`` through ``pool``, ``chunk`` points per item."""
    from orchestrator.generate.predictions import grid_chunks, run_items

    items = grid_chunks(points, range(len(obs_set)), chunk)
    table = np.empty((len(points), len(obs_set)))

    def done(item, result):
        table[item.start : item.start + len(item.points)] = result["entry"]["value"]

    run_items(pool, obs_set, items, done)
    return table


def bench_globalfit(grid: int = 6, chunk: int = 2, repeats: int = 3, draws: int = 8, address: str | None = None) -> dict:
    """Run the three measurements of the module docstring; a flat dict of figures (medians)."""
    from kernels.chi2 import grid_points
    from kernels.observables import load_observable_set
    from orchestrator.config.globalfit import load_globalfit_config
    from orchestrator.generate.predictions import WORKER, theory_inputs
    from orchestrator.runtime.pool import ActorPool
    from orchestrator.runtime.ray import init_ray

    cfg = load_globalfit_config("lhcb-seed")
    obs_set = load_observable_set(cfg.observables)
    cluster = init_ray(address)
    points = grid_points(np.linspace(-2, 0, grid), np.linspace(-1, 1, grid))

    times: dict[int, list[float]] = {1: [], 2: []}
    tables: dict[int, np.ndarray] = {}
    for _ in range(repeats):  # alternate 1 and 2 workers, so a burst of other load hits both
        for workers in (1, 2):
            with ActorPool(WORKER, workers, address) as pool:
                _direct(pool, obs_set, points[: workers * chunk], chunk)  # one warm-up chunk per actor
                times[workers].append(seconds(lambda pool=pool, w=workers: tables.__setitem__(
                    w, _direct(pool, obs_set, points, chunk))))
    med = {w: float(np.median(t)) for w, t in times.items()}

    surrogate = cfg.surrogate.model_dump(exclude={"enabled"})
    axes = (cfg.grid.c9, cfg.grid.c10)
    with tempfile.TemporaryDirectory(prefix="wcscan-bench-globalfit-") as cache:
        kw = dict(draws=draws, seed=0, chunks=2, surrogate=surrogate, chunk=cfg.grid.chunk, workers=2,
                  address=address, cache=cache)
        cold_inputs = None

        def cold():
            nonlocal cold_inputs
            cold_inputs = theory_inputs(obs_set, *axes, **kw)

        t_cold = seconds(cold)
        t_cached = median_time(lambda: theory_inputs(obs_set, *axes, **kw), repeats)
    sur = cold_inputs.surrogate
    seed_points = cold_inputs.points
    t_closed = median_time(lambda: sur.closed_form(seed_points), repeats) / len(seed_points)
    per_point = med[1] / len(points)
    fit_s = cold_inputs.seconds["surrogate_fit"]
    deviation = np.abs(sur.closed_form(points) - tables[1]) / sur.scale
    direct_grid = SEED_GRID * per_point
    return {
        "benchmark": "globalfit",
        "observables": len(obs_set),
        "grid_points": len(points),
        "chunk": chunk,
        "repeats": repeats,
        "ray_cluster_cpus": cluster["cpus"],
        "seconds_1_worker": med[1],
        "seconds_2_workers": med[2],
        "seconds_1_worker_all": times[1],
        "seconds_2_workers_all": times[2],
        "speedup_2_workers": med[1] / med[2],
        "identical_1_vs_2_workers": bool(np.array_equal(tables[1], tables[2])),
        "direct_seconds_per_point_1_core": per_point,
        "theory_inputs_cold_seconds": t_cold,
        "theory_inputs_cached_seconds": t_cached,
        "cached_over_cold": t_cached / t_cold,
        "theory_inputs_note": (f"lhcb-seed set, {len(cfg.grid.c9)} x {len(cfg.grid.c10)} grid, surrogate fit "
                               f"({cfg.surrogate.n_design + cfg.surrogate.n_check} direct calls) and Sigma_th from "
                               f"{draws} draws in 2 chunks on 2 workers, cold cache then warm"),
        "surrogate_exact": int(sur.exact.sum()),
        "surrogate_fit_seconds": fit_s,
        "closed_form_seconds_per_point": t_closed,
        "surrogate_speedup_per_point": per_point / t_closed,
        "grid_50x50_direct_seconds_1_core_projected": direct_grid,
        "grid_50x50_surrogate_seconds": fit_s + SEED_GRID * t_closed,
        "grid_50x50_surrogate_speedup": direct_grid / (fit_s + SEED_GRID * t_closed),
        "surrogate_max_rel_deviation_vs_direct": float(np.max(deviation[:, sur.exact])),
        "machine": platform.processor() or platform.machine(),
        "os_cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }

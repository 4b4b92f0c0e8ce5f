r"""The global fit's theory inputs, made as Ray work and cached: theory covariance, exact surrogate, grid predictions.

Three kinds of work item, each a pure function ``item.compute(obs_set)`` run by
:class:`TheoryWorker` on an :class:`~orchestrator.runtime.pool.ActorPool` (or in
this process with ``workers=0``):

- :class:`CovarianceChunk`: flavio's SM covariance :math:`C_k` from :math:`n_k`
  draws of all nuisance parameters, seeded ``SeedSequence([seed, k])``. The
  chunks are pooled as the within-chunk estimate

  .. math:: \Sigma_\mathrm{th} = \sum_k (n_k - 1)\, C_k \Big/ \sum_k (n_k - 1),

  unbiased like each :math:`C_k` (``np.cov`` has ``ddof=1``); the first and
  second half of the chunks, pooled alike, are two independent estimates
  from :math:`n/2` draws each, whose fits give the seed-to-seed spread.
- :class:`SurrogateFit`: :func:`kernels.observables.fit_surrogate`, the closed
  forms verified against direct flavio calls (``n_design + n_check`` of them).
- :class:`GridChunk`: direct flavio predictions of some columns at a chunk of
  grid points, for the observables the surrogate does not reproduce (all of
  them when it is disabled).

The surrogate fit and the covariance chunks run in one batch (the surrogate
first, it is the longest item); the grid follows from the surrogate's closed
forms plus a second batch of direct chunks if any observable is not exact.

The driver reads and writes the cache, workers never touch it (so it needs no
shared file system), under ``cache_dir()/globalfit`` (``$WCSCAN_CACHE``), each
file named by the sha256 of what determines it (the observable set's key holds
the observables, the measurements and the flavio version)::

    smcov-<h>.npz        chunks (k, K, K), draws (k,)     <- set, draws, seed, chunks
    surrogate-<h>.npz    the Surrogate's arrays and forms   <- set, surrogate settings
    grid-<h>.parquet     c9, c10, one column per observable <- set, grid axes, source (surrogate settings or direct)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels.files import atomic_path
from kernels.observables import ObservableSet, Surrogate
from orchestrator.runtime.progress import ProgressFactory, no_progress

__all__ = ["CovarianceChunk", "SurrogateFit", "GridChunk", "TheoryWorker", "TheoryInputs", "theory_inputs",
           "run_items", "grid_chunks", "WORKER"]

#: The worker factory handed to the actor pool.
WORKER = "orchestrator.generate.predictions:TheoryWorker"


@dataclass(frozen=True)
class CovarianceChunk:
    """``draws`` draws of flavio's SM covariance, chunk ``point`` of a covariance seeded ``seed``."""

    point: int
    draws: int
    seed: int

    def compute(self, obs_set: ObservableSet) -> np.ndarray:
        from kernels.observables import theory_covariance

        chunk_seed = int(np.random.SeedSequence([self.seed, self.point]).generate_state(1)[0])
        return theory_covariance(obs_set, n=self.draws, seed=chunk_seed, cache=False)


@dataclass(frozen=True)
class SurrogateFit:
    """:func:`kernels.observables.fit_surrogate` with ``settings`` (its keyword arguments)."""

    point: int
    settings: tuple[tuple[str, object], ...]

    def compute(self, obs_set: ObservableSet) -> Surrogate:
        from kernels.observables import fit_surrogate

        return fit_surrogate(obs_set, **dict(self.settings))


@dataclass(frozen=True)
class GridChunk:
    """Direct flavio predictions of the observables ``columns`` at ``points`` (M, 2), rows ``start:start+M``."""

    point: int
    start: int
    points: np.ndarray = field(compare=False)
    columns: tuple[int, ...]

    def compute(self, obs_set: ObservableSet) -> np.ndarray:
        from kernels.observables import predict

        return predict(obs_set.subset(self.columns), self.points)


class TheoryWorker:
    """The actor-pool worker: ``TheoryWorker()(obs_set, item)`` -> ``{"value": ..., "seconds": ...}``."""

    def __init__(self):
        import flavio  # noqa: F401  (imported once per actor, before the first item)

    def __call__(self, obs_set: ObservableSet, item) -> dict:
        t0 = time.perf_counter()
        value = item.compute(obs_set)
        return {"value": value, "seconds": time.perf_counter() - t0}


def grid_chunks(points: np.ndarray, columns, chunk: int, first: int = 0) -> list[GridChunk]:
    """The grid's points ``chunk`` at a time, items numbered from ``first``.

    >>> [(c.point, c.start, len(c.points)) for c in grid_chunks(np.zeros((5, 2)), (0, 1), 2, first=3)]
    [(3, 0, 2), (4, 2, 2), (5, 4, 1)]
    """
    return [GridChunk(first + i, s, points[s : s + chunk], tuple(columns)) for i, s in enumerate(range(0, len(points), chunk))]


class _Runner:
    """Runs batches of items on one lazily started actor pool (``workers=0``: in this process)."""

    def __init__(self, stack: ExitStack, workers: int | None, address: str | None, progress: ProgressFactory):
        self.stack, self.workers, self.address, self.progress = stack, workers, address, progress
        self.pool = None

    def __call__(self, obs_set: ObservableSet, items: list, description: str) -> dict:
        results: dict = {}
        if not items:
            return results
        with self.progress(description, len(items), "items") as advance:
            def done(item, result):
                results[item.point] = result["entry"]
                if advance is not None:
                    advance(1)

            run_items(self._pool(), obs_set, items, done)
        return results

    def _pool(self):
        if self.workers == 0:
            return None
        if self.pool is None:
            from orchestrator.runtime.pool import ActorPool

            self.pool = self.stack.enter_context(ActorPool(WORKER, self.workers, self.address))
        return self.pool


def run_items(pool, obs_set: ObservableSet, items: list, on_done: Callable[[object, dict], None]) -> None:
    """Every item through ``pool`` (an ActorPool), or in this process when it is None, as ``on_done(item, result)``."""
    if pool is not None:
        pool.run(obs_set, items, on_done)
        return
    worker = TheoryWorker()
    for item in items:
        on_done(item, {"entry": worker(obs_set, item)})


@dataclass
class TheoryInputs:
    """What the fit needs from flavio: grid predictions, Sigma_th (and its halves), the surrogate (or None)."""

    obs_set: ObservableSet
    c9: np.ndarray
    c10: np.ndarray
    points: np.ndarray  # (M, 2), C9 slowest: row i * n10 + j is (c9[i], c10[j])
    grid: np.ndarray  # (M, K)
    theory_cov: np.ndarray  # (K, K), all draws pooled
    theory_cov_halves: np.ndarray  # (2, K, K), the first and the second half of the chunks
    draws: int
    surrogate: Surrogate | None
    cached: dict = field(default_factory=dict)  # part -> whether it was read from the cache
    seconds: dict = field(default_factory=dict)  # stage timings, and the surrogate fit's own (in its worker)
    paths: dict = field(default_factory=dict)

    def predict(self, points) -> np.ndarray:
        """Predictions (M, K) at any points: the surrogate (direct flavio for its inexact columns), else flavio."""
        from kernels.observables import predict

        pts = np.atleast_2d(np.asarray(points, float))
        return self.surrogate.predict(pts) if self.surrogate is not None else predict(self.obs_set, pts)


def _digest(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_covariances(chunks: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The within-chunk pooled covariance sum_k (n_k - 1) C_k / sum_k (n_k - 1) of chunks (k, K, K).

    >>> pool_covariances(np.array([[[1.0]], [[3.0]]]), np.array([3, 5]))
    array([[2.33333333]])
    """
    w = np.asarray(draws, float) - 1
    return np.tensordot(w, np.asarray(chunks, float), axes=1) / w.sum()


def _save_surrogate(path: Path, s: Surrogate) -> None:
    arrays = {f.name: np.asarray(getattr(s, f.name)) for f in dataclasses.fields(Surrogate)
              if f.name not in ("obs_set", "form", "predict_fn")}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, form=np.array([f or "" for f in s.form]), **arrays)


def _load_surrogate(path: Path, obs_set: ObservableSet) -> Surrogate:
    with np.load(path) as z:
        kw = {k: z[k] for k in z.files if k != "form"}
        form = tuple(str(f) or None for f in z["form"])
    return Surrogate(obs_set=obs_set, form=form, **{**kw, "tol": float(kw["tol"])})


def _save_grid(path: Path, obs_set: ObservableSet, points: np.ndarray, grid: np.ndarray, ident: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"c9": points[:, 0], "c10": points[:, 1], **{lab: grid[:, k] for k, lab in enumerate(obs_set.labels)}}
    table = pa.table(cols).replace_schema_metadata({"wcscan.globalfit": json.dumps(ident, default=str)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _load_grid(path: Path, obs_set: ObservableSet) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return np.stack([table.column(lab).to_numpy() for lab in obs_set.labels], axis=1)


def theory_inputs(
    obs_set: ObservableSet,
    c9,
    c10,
    *,
    draws: int = 200,
    seed: int = 0,
    chunks: int = 8,
    surrogate: dict | None = None,
    chunk: int = 50,
    workers: int | None = None,
    address: str | None = None,
    cache: Path | None = None,
    progress: ProgressFactory = no_progress,
) -> TheoryInputs:
    """Sigma_th, the surrogate (``surrogate``: fit_surrogate's keyword arguments, None: no surrogate) and the grid.

    Reads what the cache holds, makes the rest on Ray (``workers`` actors, one
    per CPU by default; 0: in this process), and writes it to the cache.
    """
    from kernels.chi2 import grid_points
    from kernels.theory import cache_dir

    t0 = time.perf_counter()
    c9, c10 = np.asarray(c9, float), np.asarray(c10, float)
    points = grid_points(c9, c10)
    root = Path(cache) if cache is not None else cache_dir() / "globalfit"
    settings = tuple(sorted((surrogate or {}).items()))
    cov_id = {"set": obs_set.key, "draws": draws, "seed": seed, "chunks": chunks}
    sur_id = {"set": obs_set.key, "surrogate": settings}
    grid_id = {"set": obs_set.key, "c9": c9.tolist(), "c10": c10.tolist(), "source": settings or "direct"}
    paths = {"theory_cov": root / f"smcov-{_digest(cov_id)}.npz", "grid": root / f"grid-{_digest(grid_id)}.parquet"}
    if surrogate is not None:
        paths["surrogate"] = root / f"surrogate-{_digest(sur_id)}.npz"
    cached = {k: p.exists() for k, p in paths.items()}
    sizes = np.full(chunks, draws // chunks) + (np.arange(chunks) < draws % chunks)
    K = len(obs_set)
    seconds: dict = {}

    with ExitStack() as stack:
        run = _Runner(stack, workers, address, progress)
        first: list = []
        if surrogate is not None and not cached["surrogate"]:
            first.append(SurrogateFit(0, settings))
        if not cached["theory_cov"]:
            first += [CovarianceChunk(1 + k, int(n), seed) for k, n in enumerate(sizes)]
        direct = grid_chunks(points, range(K), chunk, first=1 + chunks) if surrogate is None and not cached["grid"] else []
        done = run(obs_set, first + direct, "theory: covariance, surrogate, grid")

        sur = None
        if surrogate is not None:
            if cached["surrogate"]:
                sur = _load_surrogate(paths["surrogate"], obs_set)
            else:
                sur, seconds["surrogate_fit"] = done[0]["value"], done[0]["seconds"]
                _save_surrogate(paths["surrogate"], sur)
        if cached["theory_cov"]:
            with np.load(paths["theory_cov"]) as z:
                cov_chunks, sizes = z["chunks"], z["draws"]
        else:
            cov_chunks = np.stack([np.atleast_2d(done[1 + k]["value"]) for k in range(chunks)])
            with atomic_path(paths["theory_cov"]) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, chunks=cov_chunks, draws=sizes)
        if cached["grid"]:
            grid = _load_grid(paths["grid"], obs_set)
        else:
            grid = np.full((len(points), K), np.nan) if sur is None else sur.predict(points, direct=False)
            if sur is not None and not sur.exact.all():
                direct = grid_chunks(points, np.flatnonzero(~sur.exact).tolist(), chunk)
                done = run(obs_set, direct, "theory: direct grid predictions")
            for item in direct:
                grid[item.start : item.start + len(item.points), list(item.columns)] = done[item.point]["value"]
            _save_grid(paths["grid"], obs_set, points, grid, grid_id)
    half = chunks // 2
    seconds["theory_inputs"] = time.perf_counter() - t0
    return TheoryInputs(
        obs_set, c9, c10, points, grid,
        pool_covariances(cov_chunks, sizes),
        np.stack([pool_covariances(cov_chunks[:half], sizes[:half]), pool_covariances(cov_chunks[half:], sizes[half:])]),
        int(np.sum(sizes)), sur, cached, seconds, {k: str(p) for k, p in paths.items()},
    )

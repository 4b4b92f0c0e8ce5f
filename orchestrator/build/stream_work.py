"""The work of streamed training data: seeds, chunks, and the worker that turns a chunk into a model's inputs.

Apart from :mod:`orchestrator.build.stream` (which explains the design and the seeds)
so that the Ray actors that import it do not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kernels.errors import ConfigError, DatasetError

__all__ = ["STREAM_SEED_OFFSET", "MODEL_STREAMS", "KINDS", "VAL_PHASE", "FIT_PHASE", "EPOCH_PHASE", "EVENT_BLOCK",
           "CHUNK_EVENTS", "CHUNK_BYTES", "OTHER_STREAMS_LIMIT", "WORKER", "stream_seed", "check_seed_space",
           "StreamJob", "Chunk", "default_chunk_units", "plan_chunks", "make_chunk", "StreamWorker"]

#: Third entry of every streamed-training seed: ``4 * 10**6 + MODEL_STREAMS[model]``.
STREAM_SEED_OFFSET = 4 * 10**6
#: The stream id of each model.
MODEL_STREAMS = {"resnet3d": 0, "deepsets": 1, "event_classifier": 2, "deepsets_score": 3, "resnet3d_score": 4,
                 "resnet3d_rho": 5, "deepsets_marginal": 6, "resnet3d_rho_marginal": 7}
#: What each model is fed: voxel images, sets of events, single labelled events.
KINDS = {"resnet3d": "images", "deepsets": "sets", "event_classifier": "events", "deepsets_score": "sets",
         "resnet3d_score": "voxel_scores", "resnet3d_rho": "images", "deepsets_marginal": "sets",
         "resnet3d_rho_marginal": "images"}
#: Phases: validation data, the standardisation sample, then epoch ``e`` is ``EPOCH_PHASE + e``.
VAL_PHASE, FIT_PHASE, EPOCH_PHASE = 0, 1, 2
#: Events per seeded unit of the event classifier's stream.
EVENT_BLOCK = 1 << 16
#: Most events a chunk draws, and most bytes a chunk returns.
CHUNK_EVENTS = 1 << 18
CHUNK_BYTES = 8 << 20
#: Every other stream of a run keeps its third seed word below this, per point (:mod:`orchestrator.build.stream`).
OTHER_STREAMS_LIMIT = 10**6
#: The worker factory of the actors.
WORKER = "orchestrator.build.stream_work:StreamWorker"

_WORD = 2**32


def stream_seed(seed: int, point: int, model: str, phase: int, k: int) -> tuple[int, int, int, int, int]:
    """Seed entropy of unit ``k`` of ``point`` in ``phase`` of ``model``'s stream.

    >>> stream_seed(7, 2, "deepsets", EPOCH_PHASE + 3, 11)
    (7, 2, 4000001, 5, 11)
    """
    if model not in MODEL_STREAMS:
        raise ConfigError(f"no training stream for model {model!r}; known: {', '.join(MODEL_STREAMS)}")
    for name, v, top in (("seed", seed, math.inf), ("point", point, _WORD), ("phase", phase, _WORD), ("k", k, _WORD)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < top:
            raise ConfigError(f"stream seed: {name} must be an integer in [0, {top}), got {v!r}")
    return (int(seed), int(point), STREAM_SEED_OFFSET + MODEL_STREAMS[model], int(phase), int(k))


def check_seed_space(cfg) -> None:
    """Refuse a run config whose generator chunks, test images or test sets per point reach 10**6:
    their seeds would reach the offsets of other streams (the table in :mod:`orchestrator.build.stream`)."""
    counts = {"generator chunks": math.ceil(cfg.scan.events_per_point / cfg.scan.chunk_size),
              "test sets": cfg.evaluation.sets,
              "images": cfg.images.images_per_point if cfg.images is not None else 0}
    for what, n in counts.items():
        if n >= OTHER_STREAMS_LIMIT:
            raise ConfigError(f"{n} {what} per point: streamed training seeds stay apart from the other streams "
                              f"only below {OTHER_STREAMS_LIMIT}")


# --- the work: one chunk -> the model's inputs --------------------------------------------


@dataclass(frozen=True)
class StreamJob:
    """What a worker needs to draw a model's data (small, picklable).

    ``unit``: events per image (ResNet), per set (Deep Sets) or per block (:data:`EVENT_BLOCK`, classifier).

    ``form_factors``: "none", or the nuisance set of :func:`kernels.nuisances.nuisance_table` ("bsz", or a
    tuple of BSZ names) whose tables have the key ``nuisance_key`` (the worker loads them from the cache, and
    refuses other tables). With ``worlds``, every unit is drawn in its own world, :func:`kernels.nuisances.world_of`
    its seed with ``prior_scale``; otherwise at the central form factors. ``nuisance_points`` (kind
    "voxel_scores", at the central world): the per-voxel sums of the nuisances' joint scores at these
    shifts follow those at ``score_points``.
    """

    model: str
    seed: int
    grid: tuple[float, ...]
    unit: int
    bins: int = 0
    level: str = "gen"
    detector: tuple[tuple[str, float], ...] = ()
    windows: tuple[tuple[float, float], ...] = ((1.1, 6.0),)
    theory_key: str | None = None
    fill: float = 0.0  # empty voxels' q2, as the stored images (build_images' default)
    score_points: tuple[float, ...] = ()  # kind "voxel_scores": the shifts of the per-voxel joint-score sums
    form_factors: str | tuple[str, ...] = "none"
    prior_scale: float = 1.0
    nuisance_key: str | None = None
    worlds: bool = False
    nuisance_points: tuple[float, ...] = ()

    @property
    def kind(self) -> str:
        return KINDS[self.model]


@dataclass(frozen=True)
class Chunk:
    """Units ``[first, first + count)`` of point ``point`` in ``phase``; ``part``: its index there.

    ``per_point``: the phase's units per point, or its events per point for the classifier's stream
    (the last block of a point is then shorter).
    """

    point: int
    phase: int
    part: int
    first: int
    count: int
    per_point: int


def default_chunk_units(job: StreamJob) -> int:
    """Units per chunk: at most :data:`CHUNK_EVENTS` events drawn and :data:`CHUNK_BYTES` returned."""
    labels = len(job.score_points) + len(job.nuisance_points) * (
        _nuisance_table(job.windows, job.form_factors, job.nuisance_key).n_nuisances if job.nuisance_points else 0)
    out_bytes = {"images": 2 * job.bins**3 * 4, "voxel_scores": (2 + labels) * job.bins**3 * 4}.get(
        job.kind, job.unit * 16)
    return max(1, min(CHUNK_EVENTS // job.unit, CHUNK_BYTES // out_bytes))


def plan_chunks(job: StreamJob, phase: int, per_point: int, chunk_units: int) -> list[Chunk]:
    """The chunks of one phase, in round order (chunk r of every point, then chunk r + 1).

    >>> job = StreamJob("deepsets", 0, (0.0, 1.0), unit=10)
    >>> [(c.point, c.first, c.count) for c in plan_chunks(job, VAL_PHASE, 5, 2)]
    [(0, 0, 2), (1, 0, 2), (0, 2, 2), (1, 2, 2), (0, 4, 1), (1, 4, 1)]
    """
    units = math.ceil(per_point / job.unit) if job.kind == "events" else per_point
    parts = math.ceil(units / chunk_units)
    return [Chunk(p, phase, r, r * chunk_units, min(chunk_units, units - r * chunk_units), per_point)
            for r in range(parts) for p in range(len(job.grid))]


@lru_cache(maxsize=4)
def _theory(windows: tuple, key: str | None):
    from kernels import theory

    table = theory.jtable(["C9_bsmumu"], [list(w) for w in windows])
    if key is not None and table.key != key:
        raise DatasetError(f"this worker's theory table {table.key} differs from the driver's {key} "
                           "(another flavio version?)")
    return table


@lru_cache(maxsize=2)
def _nuisance_table(windows: tuple, form_factors, key: str | None):
    from kernels import nuisances

    ntable = nuisances.nuisance_table(["C9_bsmumu"], [list(w) for w in windows], form_factors)
    if key is not None and ntable.key != key:
        raise DatasetError(f"this worker's nuisance tables {ntable.key} differ from the driver's {key} "
                           "(another flavio version?)")
    return ntable


def _world(job: StreamJob, seed: tuple):
    """The theory table a unit is drawn from: the central one, or the unit's own prior-drawn world."""
    if not job.worlds:
        return _theory(job.windows, job.theory_key)
    from kernels.nuisances import world_of

    ntable = _nuisance_table(job.windows, job.form_factors, job.nuisance_key)
    return ntable.at(world_of(seed, ntable.n_nuisances, job.prior_scale))


def _events(job: StreamJob, dc9: float, n: int, seed: tuple) -> np.ndarray:
    """``n`` events (4, n) float32 at ``job.level``: the bytes of ``sample_level(..., seed)``, in the
    unit's world (:func:`_world`)."""
    table = _world(job, seed)
    if job.level == "gen":  # sample_level's gen path is this very call; its Arrow table is skipped
        from kernels.sampler import sample_array

        return sample_array(table, [dc9], n, seed)
    from kernels.detector import DetectorConfig, sample_level
    from kernels.event_store import COLUMNS

    t = sample_level(table, [dc9], n, seed, job.level, DetectorConfig.from_dict(dict(job.detector)))
    return np.stack([t.column(c).to_numpy() for c in COLUMNS])


@lru_cache(maxsize=4)
def _norm(windows: tuple, key: str | None, level: str, detector: tuple):
    from kernels import joint
    from kernels.detector import DetectorConfig

    det = DetectorConfig.from_dict(dict(detector))
    return joint.normalisation(_theory(windows, key), joint.true_efficiency(level, windows, det))


@lru_cache(maxsize=2)
def _linear_norm(windows: tuple, form_factors, key: str | None, level: str, detector: tuple):
    from kernels import joint, joint_nuisance
    from kernels.detector import DetectorConfig

    det = DetectorConfig.from_dict(dict(detector))
    return joint.normalisation(joint_nuisance.nuisance_linear_table(_nuisance_table(windows, form_factors, key)),
                               joint.true_efficiency(level, windows, det))


def _voxel_scores(job: StreamJob, dc9: float, seed: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One image (2, B, B, B) and its per-voxel joint-score sums (K, B, B, B) (:func:`kernels.joint.voxel_score_sums`)."""
    from kernels.detector import DetectorConfig, sample_level_truth
    from kernels.joint import voxel_score_sums
    from kernels.voxels import voxelize

    if job.worlds:
        raise ConfigError("voxel scores are drawn at the central form factors, not in prior-drawn worlds")
    table = _theory(job.windows, job.theory_key)
    s = sample_level_truth(table, [dc9], job.unit, seed, job.level, DetectorConfig.from_dict(dict(job.detector)))
    ev = s.events
    image = voxelize(ev[1], ev[2], ev[3], ev[0], job.bins, n_images=1, fill=job.fill)[0]
    norm = _norm(job.windows, job.theory_key, job.level, job.detector)
    labels = voxel_score_sums(table, s.truth.T, ev.T, job.score_points, job.bins, norm, s.is_signal)
    if job.nuisance_points:
        from kernels.joint_nuisance import voxel_nuisance_score_sums

        ntable = _nuisance_table(job.windows, job.form_factors, job.nuisance_key)
        lin = _linear_norm(job.windows, job.form_factors, job.nuisance_key, job.level, job.detector)
        labels = np.concatenate([labels] + [voxel_nuisance_score_sums(ntable, s.truth.T, ev.T, d, job.bins, lin, s.is_signal)
                                            for d in job.nuisance_points])
    return image, labels


def make_chunk(job: StreamJob, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of one chunk: images (n, 2, B, B, B) or sets (n, N, 4) with their dC9
    (float32), events (n, 4) with their point index (int64), or images with their per-voxel joint-score
    sums (n, K, B, B, B) (kind "voxel_scores")."""
    d = job.grid[chunk.point]
    units = range(chunk.first, chunk.first + chunk.count)
    seeds = [stream_seed(job.seed, chunk.point, job.model, chunk.phase, k) for k in units]
    if job.kind == "voxel_scores":
        pairs = [_voxel_scores(job, d, s) for s in seeds]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if job.kind == "events":
        ev = np.concatenate([_events(job, d, min(job.unit, chunk.per_point - k * job.unit), s)
                             for k, s in zip(units, seeds)], axis=1)
        return np.ascontiguousarray(ev.T), np.full(ev.shape[1], chunk.point, dtype=np.int64)
    draws = [_events(job, d, job.unit, s) for s in seeds]
    labels = np.full(chunk.count, d, dtype=np.float32)
    if job.kind == "sets":
        return np.stack([e.T for e in draws]), labels
    from kernels.voxels import voxelize

    ev = np.concatenate(draws, axis=1)
    return voxelize(ev[1], ev[2], ev[3], ev[0], job.bins, n_images=chunk.count, fill=job.fill), labels


class StreamWorker:
    """The actors' worker: ``StreamWorker()(job, chunk)`` is :func:`make_chunk`."""

    def __call__(self, job: StreamJob, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        return make_chunk(job, chunk)

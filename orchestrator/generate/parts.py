"""The unit of generation: one (scan point, chunk) work item -> one Parquet part.

:class:`PartMaker` is the worker that :class:`~orchestrator.runtime.pool.ActorPool`
actors build (by its path, :data:`WORKER`) and the in-process path calls
directly; it keeps each job's theory table and detector config between
items.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kernels.errors import DatasetError, ServiceError
from kernels.event_store import part_path, write_part

__all__ = ["WorkItem", "Job", "PartMaker", "WORKER", "work_items", "generate_part"]

#: The worker factory handed to the actor pool.
WORKER = "orchestrator.generate.parts:PartMaker"


@dataclass(frozen=True)
class WorkItem:
    """One unit of generation: ``events`` events of scan point ``point`` (its coefficient shifts ``shifts``),
    part ``part``."""

    point: int
    part: int
    shifts: tuple[float, ...]
    events: int
    seed: tuple[int, int, int]


@dataclass(frozen=True)
class Job:
    """What a worker needs to make the parts of one dataset (small, picklable)."""

    out: str
    coefficients: tuple[str, ...]
    windows: tuple[tuple[float, float], ...]
    theory_key: str
    level: str = "gen"
    detector: str | None = None  # DetectorConfig.to_dict() as canonical JSON (hashable)


def _chunks(events: int, chunk_size: int) -> list[int]:
    """Full chunks of ``chunk_size``, then the remainder."""
    full, rest = divmod(events, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def work_items(points: Sequence, events: int, seed: int, chunk_size: int) -> Iterator[WorkItem]:
    """The (point, chunk) work items of a scan, in point-major order. ``points``: one shift vector per point
    (or one number per point when delta C9 alone is scanned).

    >>> [(w.point, w.part, w.events, w.seed) for w in work_items([0.0, 1.0], 5, 7, 3)]
    [(0, 0, 3, (7, 0, 0)), (0, 1, 2, (7, 0, 1)), (1, 0, 3, (7, 1, 0)), (1, 1, 2, (7, 1, 1))]
    >>> next(work_items([[0.5, -1.0]], 5, 7, 3)).shifts
    (0.5, -1.0)
    """
    for i, v in enumerate(points):
        shifts = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
        for k, n in enumerate(_chunks(events, chunk_size)):
            yield WorkItem(point=i, part=k, shifts=shifts, events=n, seed=(seed, i, k))


def generate_part(out: Path, table, item: WorkItem, level: str = "gen", detector=None) -> dict:
    """Sample one work item's events at ``level`` and write them as one part; return the part entry.

    ``gen`` events come from :func:`kernels.sampler.sample`; ``det`` and
    ``det_bkg`` from :func:`kernels.detector.sample_level` with the
    ``detector`` config (a ``DetectorConfig``).
    """
    if level == "gen":
        from kernels import sampler

        events = sampler.sample(table, shifts=list(item.shifts), n=item.events, seed=item.seed)
    else:
        from kernels import detector as detector_module

        events = detector_module.sample_level(table, list(item.shifts), item.events, item.seed, level, detector)
    if events.num_rows != item.events:
        raise DatasetError(
            f"{level} sampler returned {events.num_rows} events for point {item.point} "
            f"part {item.part}, expected {item.events}"
        )
    try:
        return write_part(out, level, item.point, item.part, events)
    except OSError as err:  # the temporary part is gone already (atomic write); say where, and how to go on
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        path = part_path(out, level, item.point, item.part)
        raise ServiceError(f"{path}: {err.strerror or 'no space left on device'}; the finished parts are kept: "
                           "free some space and run the same command again to resume") from None


class PartMaker:
    """Makes parts of jobs; keeps each job's theory table and detector config after the first part.

    ``PartMaker()(job, item)`` is what a worker runs per item. Tables come from
    :func:`kernels.theory.jtable` (cached on disk); a table whose key differs
    from the job's (another flavio, another table version) is refused rather
    than mixed into the dataset.
    """

    def __init__(self, tables: Mapping | None = None):
        self._tables: dict = dict(tables or {})
        self._detectors: dict = {}

    def table(self, job: Job):
        key = (job.coefficients, job.windows)
        if key not in self._tables:
            from kernels import theory

            self._tables[key] = theory.jtable(list(job.coefficients), [list(w) for w in job.windows])
        table = self._tables[key]
        if table.key != job.theory_key:
            raise DatasetError(
                f"this worker's theory table {table.key} differs from the driver's {job.theory_key} "
                "(another flavio version?)"
            )
        return table

    def detector(self, job: Job):
        if job.detector is None:
            return None
        if job.detector not in self._detectors:
            from kernels.detector import DetectorConfig

            self._detectors[job.detector] = DetectorConfig.from_dict(json.loads(job.detector))
        return self._detectors[job.detector]

    def __call__(self, job: Job, item: WorkItem) -> dict:
        return generate_part(Path(job.out), self.table(job), item, job.level, self.detector(job))

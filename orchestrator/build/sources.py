"""Where the events of an image come from, and the unit of image work.

A :class:`SplitTask` is the images of one split of one scan point; its
``source`` holds the events: :class:`StoredEvents` (parts of an event
dataset, each checked against the manifest's sha256 as it is read),
:class:`TableEvents` (a user's events in memory) or :class:`SampledEvents`
(fresh MC, seeded per image). :func:`split_events` shows the events a task
turns into images. The seeding of each split is described in
:mod:`orchestrator.build.images`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DatasetError
from kernels.event_store import COLUMNS
from kernels.image_store import SPLITS

__all__ = ["TEST_SEED_OFFSET", "STREAM_SPLIT_IDS", "StoredEvents", "TableEvents", "SampledEvents", "SplitTask",
           "split_counts", "image_blocks", "split_events", "split_tasks"]

#: Offset of the image index in sampled seeds: ``(seed, point, 10**6 + k)`` for test
#: images, ``(seed, point, split_id, 10**6 + k)`` when streaming.
TEST_SEED_OFFSET = 10**6
#: Split ids in streamed seeds.
STREAM_SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Events read and voxelised per batch from stored events (16 MiB of float32).
_BATCH_EVENTS = 1 << 20


# --- where events come from -------------------------------------------------------


@dataclass(frozen=True)
class StoredEvents:
    """Events of one point of an event dataset: its parts at one level, in manifest order."""

    root: str
    level: str
    parts: tuple[tuple[str, int, str | None], ...]  # (path relative to root, rows, sha256)

    @property
    def rows(self) -> int:
        return sum(part[1] for part in self.parts)

    def _read_part(self, rel: str, rows: int, sha256: str | None) -> pa.Table:
        import pyarrow.parquet as pq

        path = Path(self.root) / rel
        if not path.is_file():
            raise DatasetError(f"{path}: part listed in the manifest is missing")
        try:
            data = path.read_bytes()
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                raise DatasetError(f"{path}: sha256 differs from the manifest's (the part changed since it was "
                                   "written); generate the dataset again")
            table = pq.ParquetFile(pa.BufferReader(data)).read(columns=list(COLUMNS))
        except (OSError, pa.ArrowException) as err:
            msg = str(err).strip().splitlines()
            raise DatasetError(f"{path}: cannot read Parquet part ({msg[0] if msg else err})") from None
        if table.num_rows != rows:
            raise DatasetError(f"{path}: has {table.num_rows} rows, the manifest says {rows}")
        return table

    def blocks(self, start: int, stop: int, size: int) -> Iterator[np.ndarray]:
        """Rows ``[start, stop)`` as ``(4, m)`` float32 arrays (COLUMNS order) of ``size`` rows,
        the last one shorter. One buffer is reused: use each block before taking the next."""
        buf = np.empty((len(COLUMNS), min(size, max(stop - start, 0))), dtype=np.float32)
        filled = 0
        pos = 0
        for rel, rows, sha256 in self.parts:
            lo, hi = max(start, pos), min(stop, pos + rows)
            if lo < hi:
                table = self._read_part(rel, rows, sha256).slice(lo - pos, hi - lo)
                cols = [table.column(c).to_numpy() for c in COLUMNS]
                done = 0
                while done < hi - lo:
                    take = min(buf.shape[1] - filled, hi - lo - done)
                    for i, col in enumerate(cols):
                        buf[i, filled : filled + take] = col[done : done + take]
                    filled += take
                    done += take
                    if filled == buf.shape[1]:
                        yield buf
                        filled = 0
            pos += rows
            if pos >= stop:
                break
        if pos < stop:
            raise DatasetError(f"{self.root}: the point has {pos} events, {stop} needed")
        if filled:
            yield buf[:, :filled]


@dataclass(frozen=True)
class TableEvents:
    """Events of one point held in memory (a user's events file)."""

    table: pa.Table

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def blocks(self, start: int, stop: int, size: int) -> Iterator[pa.Table]:
        for s in range(start, stop, size):
            yield self.table.slice(s, min(size, stop - s))


@dataclass(frozen=True)
class SampledEvents:
    """Fresh MC at one point: image ``k`` is sampled with the seed ``(*prefix, offset + k)``."""

    table: Any  # kernels.theory.JTable
    dc9: float
    prefix: tuple[int, ...]
    offset: int = TEST_SEED_OFFSET

    def seed(self, k: int) -> tuple[int, ...]:
        return (*self.prefix, self.offset + k)

    def image(self, k: int, events: int) -> pa.Table:
        from kernels import sampler

        t = sampler.sample(self.table, [self.dc9], events, seed=self.seed(k))
        if t.num_rows != events:
            raise DatasetError(f"sampler returned {t.num_rows} events, expected {events}")
        return t


@dataclass(frozen=True)
class SplitTask:
    """One unit of work: the ``images`` images of one split of one point, written to one file.

    ``source`` holds the events; for stored and in-memory events, image ``k``
    uses rows ``first_event + k * events_per_image`` onwards of the point.
    """

    point: int
    split: str
    images: int
    events_per_image: int
    bins: int
    fill: float
    source: StoredEvents | TableEvents | SampledEvents
    first_event: int = 0

    @property
    def events(self) -> int:
        return self.images * self.events_per_image


def split_counts(images_per_point: int, val_fraction: float) -> tuple[int, int]:
    """``(n_train, n_val)``: ``n_val = round(K * val_fraction)`` (halves up), the rest train.

    >>> split_counts(3300, 0.2), split_counts(5, 0.5), split_counts(4, 0.0)
    ((2640, 660), (2, 3), (4, 0))
    """
    n_val = int(math.floor(images_per_point * val_fraction + 0.5))
    return images_per_point - n_val, n_val


# --- events of a task -------------------------------------------------------------


def image_blocks(task: SplitTask) -> Iterator[tuple[int, Any]]:
    """``(first image, events of a run of whole images)`` for the task, in image order."""
    epi = task.events_per_image
    if task.images == 0:
        return
    if isinstance(task.source, SampledEvents):
        for k in range(task.images):
            yield k, task.source.image(k, epi)
        return
    per_block = max(1, _BATCH_EVENTS // epi) * epi
    k = 0
    for block in task.source.blocks(task.first_event, task.first_event + task.events, per_block):
        yield k, block
        k += (block.shape[1] if isinstance(block, np.ndarray) else block.num_rows) // epi


def split_events(task: SplitTask) -> pa.Table:
    """All events the task turns into images, in image order, as an Arrow table.

    The same events :func:`build_point_split` reads; for inspection and tests.
    """
    tables = []
    for _, block in image_blocks(task):
        if isinstance(block, np.ndarray):
            block = pa.table({c: pa.array(block[i].copy()) for i, c in enumerate(COLUMNS)})
        tables.append(block.select(list(COLUMNS)))
    if not tables:
        return pa.table({c: pa.array([], pa.float32()) for c in COLUMNS})
    return pa.concat_tables(tables)


def split_tasks(
    points: Sequence[Mapping],
    cfg,
    *,
    stored: Mapping[int, StoredEvents | TableEvents] | None,
    table: Any,
    seed: int,
    test_images: int,
) -> list[SplitTask]:
    """The (point, split) tasks of a build, point-major, splits in :data:`SPLITS` order.

    ``cfg`` gives ``n_train``, ``n_val``, ``events_per_image``, ``bins`` and ``fill``.

    ``stored[point]`` holds a point's train and val events; with ``stored=None``
    (streaming) every split is sampled.
    """
    tasks = []
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": test_images}
    for p in points:
        i, dc9 = int(p["index"]), p.get("dc9")
        for split in SPLITS:
            n = counts[split]
            if split != "test" and stored is not None:
                first = 0 if split == "train" else cfg.n_train * cfg.events_per_image
                source = stored[i]
            else:
                if n and table is None:
                    raise ConfigError("test images need a theory table")
                prefix = (seed, i) if stored is not None else (seed, i, STREAM_SPLIT_IDS[split])
                first = 0
                source = SampledEvents(table, math.nan if dc9 is None else float(dc9), prefix)
            tasks.append(SplitTask(i, split, n, cfg.events_per_image, cfg.bins, cfg.fill, source, first))
    return tasks

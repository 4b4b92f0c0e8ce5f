"""Generate an event dataset: scan points x events -> Hive-partitioned Parquet.

The work is split into independent items, one per (scan point, chunk). Each
item samples ``n`` events with the seed ``(seed, point, chunk)`` and writes one
Parquet part, so the bytes of a dataset depend only on its config, never on
how many workers ran the items or in what order. This module runs the items
locally, in order; the Ray version maps :func:`generate_part` over the same
items.

The manifest is written last and atomically: a directory without one is an
incomplete dataset. If generation fails midway, the partitions written so far
are removed.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kernels.dataset import MANIFEST, point_checksum, write_manifest, write_part
from kernels.errors import ConfigError, DatasetError

__all__ = ["FORMAT", "WorkItem", "work_items", "generate_part", "generate_dataset"]

log = logging.getLogger(__name__)

#: Value of ``manifest["format"]`` for datasets written by this module.
FORMAT = "wcscan-events/1"
LEVEL = "gen"
COEFFICIENTS = ("C9_bsmumu",)


@dataclass(frozen=True)
class WorkItem:
    """One unit of generation: ``events`` events of scan point ``point``, part ``part``."""

    point: int
    part: int
    dc9: float
    events: int
    seed: tuple[int, int, int]


def _chunks(events: int, chunk_size: int) -> list[int]:
    """Full chunks of ``chunk_size``, then the remainder."""
    full, rest = divmod(events, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def work_items(dc9: Sequence[float], events: int, seed: int, chunk_size: int) -> Iterator[WorkItem]:
    """The (point, chunk) work items of a scan, in point-major order.

    >>> [(w.point, w.part, w.events, w.seed) for w in work_items([0.0, 1.0], 5, 7, 3)]
    [(0, 0, 3, (7, 0, 0)), (0, 1, 2, (7, 0, 1)), (1, 0, 3, (7, 1, 0)), (1, 1, 2, (7, 1, 1))]
    """
    for i, v in enumerate(dc9):
        for k, n in enumerate(_chunks(events, chunk_size)):
            yield WorkItem(point=i, part=k, dc9=float(v), events=n, seed=(seed, i, k))


def generate_part(out: Path, table, item: WorkItem) -> dict:
    """Sample one work item's events and write them as one part; return the part entry."""
    from kernels import sampler

    events = sampler.sample(table, shifts=[item.dc9], n=item.events, seed=item.seed)
    if events.num_rows != item.events:
        raise DatasetError(
            f"sampler returned {events.num_rows} events for point {item.point} part {item.part}, "
            f"expected {item.events}"
        )
    return write_part(out, LEVEL, item.point, item.part, events)


def _generator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wcscan")
    except PackageNotFoundError:
        return "0.1.0"


def _check_config(dc9, events, seed, chunk_size) -> list[float]:
    if isinstance(events, bool) or not isinstance(events, int) or events <= 0:
        raise ConfigError(f"--events must be a positive integer, got {events!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ConfigError(f"--chunk-size must be a positive integer, got {chunk_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    values = [float(v) for v in dc9]
    if not values:
        raise ConfigError("--dc9 gives no scan point")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"--dc9 values must be finite, got {bad}")
    return values


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a directory")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if MANIFEST in entries:
            raise ConfigError(
                f"{out}: already holds a dataset (manifest.json); choose a new --out or remove it"
            )
        if entries:
            raise ConfigError(
                f"{out}: output directory is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
                "choose a new --out or remove it"
            )


def generate_dataset(
    out: Path,
    dc9: list[float],
    events: int,
    seed: int,
    windows: list[tuple[float, float]],
    chunk_size: int = 1_000_000,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Generate ``events`` events at each ``dc9`` scan point into the dataset ``out``.

    Every argument is checked before anything is created on disk; ``out`` must
    be absent or empty. ``progress(n)`` is called with the number of events
    after each part is written. Returns the manifest, which is also written to
    ``out/manifest.json`` once all parts are in place.
    """
    from kernels import theory

    out = Path(out)
    values = _check_config(dc9, events, seed, chunk_size)
    windows = [tuple(w) for w in theory.validate_windows(windows)]
    _check_out(out)

    table = theory.jtable(list(COEFFICIENTS), windows)
    if table.shift_columns != ("dc9",):
        raise ConfigError(f"theory table scans {table.shift_columns}, expected ('dc9',)")

    created_out = not out.exists()
    level_dir = out / f"level={LEVEL}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        # Keyed by (point, part): the manifest does not depend on the order items finish in.
        done: dict[tuple[int, int], dict] = {}
        for item in work_items(values, events, seed, chunk_size):
            if item.part == 0:
                log.info("point %d (dc9=%g): sampling %d events", item.point, item.dc9, events)
            done[item.point, item.part] = generate_part(out, table, item)
            if progress is not None:
                progress(item.events)
        parts = {i: [done[key] for key in sorted(done) if key[0] == i] for i in range(len(values))}

        manifest = {
            "format": FORMAT,
            "generator_version": _generator_version(),
            "flavio_version": getattr(table, "flavio_version", None) or _flavio_version(),
            "theory_key": table.key,
            "config": {
                "coefficients": list(table.coefficients),
                "windows": [list(w) for w in windows],
                "events": events,
                "seed": seed,
                "chunk_size": chunk_size,
                "level": LEVEL,
                "dc9": values,
            },
            "points": [
                {
                    "index": i,
                    "shifts": {"dc9": v},
                    "events": events,
                    "seed": [seed, i],
                    "parts": parts[i],
                    "checksum": point_checksum(parts[i]),
                }
                for i, v in enumerate(values)
            ],
        }
        write_manifest(out, manifest)
    except BaseException:
        log.info("generation failed; removing the partial dataset under %s", out)
        shutil.rmtree(level_dir, ignore_errors=True)
        if created_out:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    log.info("wrote %s: %d points x %d events", out, len(values), events)
    return manifest


def _flavio_version() -> str:
    from importlib.metadata import version

    return version("flavio")

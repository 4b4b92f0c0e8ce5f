"""Build a voxel-image dataset from events: train and val from stored events, test from fresh MC.

The work is split into independent items, one per (scan point, split): a
:class:`SplitTask` says which images to make and where their events come from,
and :func:`build_point_split` makes them and writes one image file. The items
are independent and their output depends only on the task, so a Ray version
will map :func:`build_point_split` over ``plan_build(...).tasks`` unchanged;
this module runs them locally, in order.

Where the events come from, per point (``K`` images per point, ``epi`` events
per image, ``n_val = round(K * val_fraction)``, ``n_train = K - n_val``):

- **train**: events ``[0, n_train * epi)`` of the point, in stored order
  (parts in manifest order), one consecutive block of ``epi`` per image;
- **val**: the next ``n_val * epi`` events, so train and val never share an event;
- **test**: independently seeded MC, never stored: image ``k`` is
  ``kernels.sampler.sample(table, [dc9], epi, seed=(seed, point, 10**6 + k))``.
  The event generator seeds chunk ``c`` of point ``p`` with ``(seed, p, c)``,
  so the test stream cannot meet a generator chunk as long as a point has
  fewer than 10**6 parts, which :func:`build_images` checks. The default seed
  is the event dataset's own, so the test images are a function of the
  dataset alone.

In **streaming** mode (``stream=True``) there is no event dataset: every split
is sampled straight into its images, image ``k`` of split ``s`` with the seed
``(seed, point, split_id[s], 10**6 + k)``, split ids train 0, val 1, test 2.
numpy's ``SeedSequence`` ignores trailing zeros, so the last entry is kept
non-zero (the ``10**6`` offset) to keep these 4-entry seeds apart from the
generator's 3-entry ones. Storage was the seed study's bottleneck: streaming
writes only the images.

A user's own events (``--events-file``) make train and val images the same way;
the points are the distinct ``dc9`` values of the file (one point if it has no
``dc9`` column), and there is no test split (there is no theory to sample).

The manifest is written last and atomically; a directory without one is
incomplete. If the build fails midway, the files written so far are removed.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DatasetError
from kernels.event_store import MANIFEST, read_manifest, validate_events
from kernels.files import sha256_file
from kernels.image_store import FORMAT, SPLITS, image_file, image_path, write_manifest
from kernels.theory import SCAN_COEFFICIENTS
from kernels.voxels import AXES, CHANNELS, RANGES, check_bins, make_images
from orchestrator.build.sources import (
    STREAM_SPLIT_IDS,
    TEST_SEED_OFFSET,
    SampledEvents,
    SplitTask,
    StoredEvents,
    TableEvents,
    image_blocks,
    split_counts,
    split_events,
    split_tasks,
)
from orchestrator.config.checks import non_negative_int, positive_int
from orchestrator.runtime.versions import generator_version

__all__ = [
    "TEST_SEED_OFFSET",
    "STREAM_SPLIT_IDS",
    "DEFAULT_VAL_FRACTION",
    "StoredEvents",
    "TableEvents",
    "SampledEvents",
    "SplitTask",
    "split_counts",
    "BuildPlan",
    "plan_build",
    "split_events",
    "build_point_split",
    "build_images",
    "run_plan",
]

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.2

def _describe(task: SplitTask) -> dict:
    src = task.source
    if isinstance(src, SampledEvents):
        return {"events_from": "sampler", "seed_prefix": list(src.prefix), "seed_offset": src.offset}
    kind = "dataset" if isinstance(src, StoredEvents) else "events_file"
    return {"events_from": kind, "first_event": task.first_event}


def build_point_split(
    out: str | Path, task: SplitTask, progress: Callable[[int], None] | None = None
) -> dict:
    """Make the task's images and write them to their file; return the manifest entry.

    Images are voxelised straight into a memory map of the new file, a batch
    of whole images at a time, so memory stays bounded whatever the split's
    size. ``progress(n)`` is called with the number of images after each batch.
    """
    out = Path(out)
    epi = task.events_per_image
    with image_file(out, task.split, task.point, task.images, task.bins) as arr:
        for k, block in image_blocks(task):
            n = (block.shape[1] if isinstance(block, np.ndarray) else block.num_rows) // epi
            make_images(block, task.bins, epi, n, fill=task.fill, out=arr[k : k + n])
            if progress is not None:
                progress(n)
    return {
        "path": image_path(out, task.split, task.point).relative_to(out).as_posix(),
        "images": task.images,
        "events": task.events,
        **_describe(task),
    }


class SplitBuilder:
    """The actor-pool worker: ``SplitBuilder()(out, task)`` builds one (point, split)."""

    def __call__(self, out: str, task: SplitTask) -> dict:
        return build_point_split(out, task)


def _build_on_ray(out: Path, tasks, progress, workers: int | None, address: str | None) -> dict:
    """One (point, split) at a time per actor of an :class:`~orchestrator.runtime.pool.ActorPool`.

    The output must be on storage every node sees. Each task writes its own file;
    the driver collects the manifest entries, so the bytes equal an in-process build.
    """
    from orchestrator.runtime.pool import ActorPool

    entries: dict[tuple[int, str], dict] = {}

    def done(task: SplitTask, result: dict) -> None:
        entries[task.point, task.split] = result["entry"]
        if progress is not None:
            progress(task.images)

    with ActorPool("orchestrator.build.images:SplitBuilder", workers, address) as pool:
        pool.run(str(out), tasks, done)
    return entries


# --- planning -------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    bins: int
    events_per_image: int
    images_per_point: int
    val_fraction: float
    n_train: int
    n_val: int
    test_images: int | None
    seed: int | None
    fill: float


def _check_config(bins, events_per_image, images_per_point, val_fraction, test_images, seed, fill) -> _Config:
    bins = check_bins(bins, "--bins")
    epi = positive_int(events_per_image, "--events-per-image")
    k = positive_int(images_per_point, "--images-per-point")
    try:
        vf = float(val_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"--val-fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if not 0.0 <= vf < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction!r}")
    n_train, n_val = split_counts(k, vf)
    if n_train < 1:
        raise ConfigError(
            f"--val-fraction {vf:g} of {k} images leaves no training image; lower it or raise --images-per-point"
        )
    if test_images is not None:
        test_images = non_negative_int(test_images, "--test-images")
    if seed is not None:
        seed = non_negative_int(seed, "--seed")
    fill = float(fill)
    if math.isinf(fill):
        raise ConfigError(f"fill must be finite or NaN, got {fill}")
    return _Config(int(bins), epi, k, vf, n_train, n_val, test_images, seed, fill)


# --- sources ---------------------------------------------------------------------


def _too_few(short: list[tuple[int, Any, int]], cfg: _Config, what: str) -> DatasetError:
    i, dc9, have = short[0]
    need = cfg.images_per_point * cfg.events_per_image
    at = f" (dc9={dc9:g})" if isinstance(dc9, (int, float)) else ""
    more = f"; {len(short) - 1} more point(s) are short too" if len(short) > 1 else ""
    return DatasetError(
        f"point {i}{at} has {have} {what}; {cfg.images_per_point} images x {cfg.events_per_image} events "
        f"({cfg.n_train} train + {cfg.n_val} val) need {need}{more}"
    )


def _dataset_points(root: Path, level: str, cfg: _Config) -> tuple[dict, list[dict], dict[int, StoredEvents]]:
    manifest = read_manifest(root)
    points = manifest.get("points")
    if not isinstance(points, list) or not points:
        raise DatasetError(f"{root}: the manifest lists no scan points")
    prefix = f"level={level}/"
    need = cfg.images_per_point * cfg.events_per_image
    out, sources, short = [], {}, []
    for p in points:
        i = p.get("index")
        parts = tuple((q["path"], int(q["rows"]), q.get("sha256")) for q in p.get("parts", ())
                      if q["path"].startswith(prefix))
        if not parts:
            raise DatasetError(f"{root}: point {i} has no {level!r}-level parts in the manifest")
        if len(parts) >= TEST_SEED_OFFSET:
            raise DatasetError(
                f"{root}: point {i} has {len(parts)} parts; test seeds (seed, point, {TEST_SEED_OFFSET} + k) "
                "would collide with the generator's chunk seeds"
            )
        src = StoredEvents(str(root), level, parts)
        dc9 = (p.get("shifts") or {}).get("dc9")
        if src.rows < need:
            short.append((i, dc9, src.rows))
        out.append({"index": i, "dc9": dc9, "shifts": dict(p.get("shifts") or {})})
        sources[i] = src
    if short:
        raise _too_few(short, cfg, f"{level} events")
    return manifest, out, sources


def _table_points(table: pa.Table, cfg: _Config) -> tuple[list[dict], dict[int, TableEvents]]:
    if "dc9" in table.column_names:
        import pyarrow.compute as pc

        values = sorted(float(v) for v in pc.unique(table.column("dc9")).to_pylist() if v is not None)
        if table.column("dc9").null_count:
            raise DatasetError(f"events: column 'dc9' has {table.column('dc9').null_count} null value(s)")
        groups = [(v, table.filter(pc.equal(table.column("dc9"), v))) for v in values]
    else:
        groups = [(None, table)]
    need = cfg.images_per_point * cfg.events_per_image
    points, sources, short = [], {}, []
    for i, (v, t) in enumerate(groups):
        if t.num_rows < need:
            short.append((i, v, t.num_rows))
        points.append({"index": i, "dc9": v, "shifts": {} if v is None else {"dc9": v}})
        sources[i] = TableEvents(t)
    if short:
        raise _too_few(short, cfg, "events in the file")
    return points, sources


def _check_out(out: Path, dataset: Path | None) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a directory")
    if dataset is not None and out.resolve() == dataset.resolve():
        raise ConfigError(f"{out}: the output directory is the event dataset itself; choose a new --out")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if MANIFEST in entries:
            raise ConfigError(f"{out}: already holds a dataset (manifest.json); choose a new --out or remove it")
        if entries:
            raise ConfigError(
                f"{out}: output directory is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
                "choose a new --out or remove it"
            )


def _theory(coefficients, windows):
    from kernels import theory

    table = theory.jtable(list(coefficients), [tuple(w) for w in windows])
    if tuple(table.shift_columns) != ("dc9",):
        raise ConfigError(f"theory table scans {table.shift_columns}, expected ('dc9',)")
    return table


# --- the build --------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    """A checked image build: its tasks and the manifest minus the per-point entries."""

    out: Path
    tasks: list[SplitTask]
    points: list[dict]
    header: dict


def plan_build(
    dataset: str | Path | pa.Table | None,
    out: str | Path,
    bins: int,
    events_per_image: int,
    images_per_point: int,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    *,
    test_images: int | None = None,
    seed: int | None = None,
    level: str = "gen",
    fill: float = 0.0,
    stream: bool = False,
    dc9: Sequence[float] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
    source: Mapping | None = None,
) -> BuildPlan:
    """Check a build and list its tasks, writing nothing; arguments as :func:`build_images`."""
    cfg = _check_config(bins, events_per_image, images_per_point, val_fraction, test_images, seed, fill)
    out = Path(out)
    theory_table = None
    stored: Mapping[int, StoredEvents | TableEvents] | None
    if stream:
        if dataset is not None:
            raise ConfigError("--stream samples every split and reads no events; drop --dataset/--events-file")
        if not dc9:
            raise ConfigError("--stream needs --dc9 scan points")
        values = [float(v) for v in dc9]
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"--dc9 values must be finite, got {values}")
        from kernels import theory

        win = [tuple(map(float, w)) for w in theory.validate_windows(windows or theory.DEFAULT_WINDOWS)]
        seed_v = cfg.seed if cfg.seed is not None else 0
        n_test = cfg.test_images if cfg.test_images is not None else cfg.n_val
        points = [{"index": i, "dc9": v, "shifts": {"dc9": v}} for i, v in enumerate(values)]
        stored = None
        _check_out(out, None)
        theory_table = _theory(SCAN_COEFFICIENTS, win)
        src_info = {
            "kind": "stream",
            "coefficients": list(theory_table.coefficients),
            "windows": [list(w) for w in win],
            "theory_key": theory_table.key,
        }
    elif isinstance(dataset, pa.Table):
        if cfg.test_images:
            raise ConfigError(
                "--test-images needs theory to sample from; an events file has none "
                "(make test MC with 'wcscan generate' or use --stream)"
            )
        validate_events(dataset, str((source or {}).get("path", "events")))
        points, stored = _table_points(dataset, cfg)
        seed_v, n_test = (cfg.seed if cfg.seed is not None else 0), 0
        _check_out(out, None)
        src_info = {"kind": "events_file", **dict(source or {})}
    elif dataset is not None:
        dataset_dir = Path(dataset)
        manifest_src, points, stored = _dataset_points(dataset_dir, level, cfg)
        config = manifest_src.get("config", {})
        seed_v = cfg.seed if cfg.seed is not None else int(config.get("seed", 0))
        n_test = cfg.test_images if cfg.test_images is not None else cfg.n_val
        _check_out(out, dataset_dir)
        if n_test:
            if "coefficients" not in config or "windows" not in config:
                raise DatasetError(f"{dataset_dir}: manifest config lacks coefficients/windows for test MC")
            theory_table = _theory(config["coefficients"], config["windows"])
        src_info = {
            "kind": "dataset",
            "path": str(dataset_dir.resolve()),
            "format": manifest_src.get("format"),
            "level": level,
            "manifest_sha256": sha256_file(dataset_dir / MANIFEST),
            "theory_key": manifest_src.get("theory_key"),
        }
    else:
        raise ConfigError("give an event dataset (--dataset), an events file (--events-file) or --stream")

    tasks = split_tasks(points, cfg, stored=stored, table=theory_table, seed=seed_v, test_images=n_test)
    header = {
        "format": FORMAT,
        "generator_version": generator_version(),
        "bins": cfg.bins,
        "events_per_image": cfg.events_per_image,
        "channels": list(CHANNELS),
        "axes": list(AXES),
        "ranges": {k: list(v) for k, v in RANGES.items()},
        "occupancy": "events per voxel (float32 count); divide by events_per_image for a fraction",
        "fill": None if math.isnan(cfg.fill) else cfg.fill,
        "dtype": "float32",
        "image_shape": [2, cfg.bins, cfg.bins, cfg.bins],
        "splits": list(SPLITS),
        "config": {
            "images_per_point": cfg.images_per_point,
            "val_fraction": cfg.val_fraction,
            "train_images": cfg.n_train,
            "val_images": cfg.n_val,
            "test_images": n_test,
            "seed": seed_v,
            "stream": bool(stream),
            "level": level if src_info["kind"] == "dataset" else None,
        },
        "seeding": (
            f"streamed image k of split s at point p: seed (seed, p, split_id[s], {TEST_SEED_OFFSET} + k), "
            "split_id train 0, val 1, test 2"
            if stream
            else f"test image k at point p: seed (seed, p, {TEST_SEED_OFFSET} + k); train and val are "
            "consecutive disjoint blocks of the stored events of p, train first"
        ),
        "source": src_info,
    }
    return BuildPlan(out, tasks, points, header)


def build_images(*args, progress: Callable[[int], None] | None = None, workers: int | None = 0,
                 address: str | None = None, **options) -> dict:
    """Build the image dataset ``out``; return its manifest (also written, last, to ``out``).

    ``dataset`` is an event-dataset directory, or an Arrow table of a user's
    events, or None with ``stream=True`` (then ``dc9=[...]`` gives the scan
    points and ``windows`` the q2 windows, default (1.1, 6.0)). Per point,
    ``images_per_point`` images are made for train and val together,
    ``round(images_per_point * val_fraction)`` of them val. Keyword options:

    - ``test_images``: test images per point from independent MC (default: as
      many as val; an events table has none);
    - ``seed``: seed of the sampled MC (default: the event dataset's, else 0);
    - ``level``: event level of the dataset (default ``"gen"``);
    - ``fill``: mean q2 of an empty voxel (default 0: the occupancy channel
      tells empty voxels apart; NaN is allowed);
    - ``stream``, ``dc9``, ``windows``: streaming mode;
    - ``source``: what to record about an events table (path, checksum).

    See the module docstring for which events and seeds each split uses.
    Everything is checked before anything is written (:func:`plan_build`); too
    few events at a point is a one-line DatasetError naming the point and the
    counts. ``progress(n)`` is called with the number of images after each batch.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"workers must be an integer >= 0 or None, got {workers!r}")
    return run_plan(plan_build(*args, **options), progress, workers, address)


def run_plan(plan: BuildPlan, progress: Callable[[int], None] | None = None, workers: int | None = 0,
             address: str | None = None) -> dict:
    """Make the images of a checked :class:`BuildPlan` (in this process with ``workers=0``, else on Ray)."""
    out = plan.out
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        entries: dict[tuple[int, str], dict] = {}
        if workers == 0:
            for task in plan.tasks:
                if task.split == "train":
                    log.info("point %d: building images", task.point)
                entries[task.point, task.split] = build_point_split(out, task, progress)
        else:
            entries = _build_on_ray(out, plan.tasks, progress, workers, address)
        manifest = {
            **plan.header,
            "points": [
                {"index": p["index"], "shifts": p["shifts"], "splits": {s: entries[p["index"], s] for s in SPLITS}}
                for p in plan.points
            ],
        }
        write_manifest(out, manifest)
    except BaseException:
        log.info("image build failed; removing the partial image dataset under %s", out)
        for split in SPLITS:
            shutil.rmtree(out / f"split={split}", ignore_errors=True)
        if created_out:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    log.info("wrote %s: %d points", out, len(plan.points))
    return manifest

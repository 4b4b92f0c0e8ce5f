"""Generate an event dataset: scan points x events -> Hive-partitioned Parquet.

The work is split into independent items, one per (scan point, chunk). Each
item samples ``n`` events with the seed ``(seed, point, chunk)`` and writes one
Parquet part, so the bytes of a dataset depend only on its config, never on
how many workers ran the items or in what order. ``workers=0`` runs the items
in this process, in order; otherwise a pool of Ray actors
(:mod:`orchestrator.runtime.pool`) runs them, one CPU each.

Resuming: each finished part is recorded in the progress journal
(:mod:`orchestrator.generate.journal`). Generating into an output that already holds
(part of) a dataset with the same config verifies the recorded parts
(present, same sha256), keeps them, and makes only the missing ones; a
complete dataset is left untouched. A different config is refused, naming the
fields that differ. If a run fails, the parts it finished stay (with their
records) for the next run to resume from; only a run that finished nothing
removes what it created.

The manifest is written last and atomically: a directory without one is an
incomplete dataset.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kernels.errors import ConfigError
from kernels.event_store import LEVELS, MANIFEST, part_path, point_checksum, write_manifest
from kernels.files import sha256_file
from orchestrator.config.checks import non_negative_int, positive_int
from orchestrator.config.grammar import distinct
from orchestrator.generate import journal
from orchestrator.generate.parts import WORKER, Job, PartMaker, WorkItem, work_items
from orchestrator.runtime.versions import flavio_version, generator_version

__all__ = ["FORMAT", "GenerateResult", "generation_pool", "generate"]

log = logging.getLogger(__name__)

#: Value of ``manifest["format"]`` for datasets written by this module.
FORMAT = "wcscan-events/1"


@dataclass
class GenerateResult:
    """What :func:`generate` did: the manifest, and which parts it made or kept."""

    manifest: dict
    parts_made: int = 0
    parts_kept: int = 0
    #: True when the dataset was complete before the call: nothing was written.
    was_complete: bool = False
    #: ``(point, part) -> {"node_id": ..., "pid": ...}`` for parts made by Ray workers.
    ran_on: dict = field(default_factory=dict)


# --- checks ---------------------------------------------------------------------


def _check_config(dc9, events, seed, chunk_size) -> list[float]:
    _check_counts(events, seed, chunk_size)
    values = [float(v) for v in dc9]
    if not values:
        raise ConfigError("--dc9 gives no scan point")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"--dc9 values must be finite, got {bad}")
    try:
        return distinct(values)
    except ConfigError as err:
        raise ConfigError(f"--dc9: {err}") from None


def _check_counts(events, seed, chunk_size) -> None:
    positive_int(events, "--events")
    positive_int(chunk_size, "--chunk-size")
    non_negative_int(seed, "--seed")


def _scan(dc9, design, events, seed, chunk_size) -> tuple[tuple[str, ...], list[list[float]], dict | None]:
    """``(shift columns, points, design spec)`` of a scan given as delta C9 values or as a Design (not both)."""
    if (dc9 is None) == (design is None):
        raise ConfigError("give the scan points once: --dc9 (delta C9 alone) or --shift (any coefficients)")
    if design is None:
        return ("dc9",), [[v] for v in _check_config(dc9, events, seed, chunk_size)], None
    from kernels.design import check

    _check_counts(events, seed, chunk_size)
    design = check(design)
    if design.columns == ("dc9",):  # delta C9 alone: recorded as --dc9 records it, so the bytes are the same
        return ("dc9",), design.rows(), None
    return design.columns, design.rows(), design.spec


def _check_workers(workers, address) -> None:
    if workers is not None:
        non_negative_int(workers, "--workers")
    if workers == 0 and address:
        raise ConfigError("--address joins a Ray cluster, but --workers 0 runs in this process")


def _detector_config(level: str, detector, windows) -> dict | None:
    """The detector config of ``level`` as a plain dict (None at ``gen``), checked against ``windows``."""
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if level == "gen":  # a detector config (e.g. from a job config) does not apply: not recorded
        return None
    if importlib.util.find_spec("kernels.detector") is None:
        raise ConfigError(f"--level {level} needs kernels.detector, which this install lacks; use --level gen")
    from kernels.detector import DetectorConfig

    if detector is None:
        detector = DetectorConfig()
    elif isinstance(detector, Mapping):
        detector = DetectorConfig.from_dict(dict(detector))
    if hasattr(detector, "check"):
        detector.check(tuple(windows))
    return _json_normal(detector.to_dict())


def _json_normal(obj):
    """``obj`` as it reads back from JSON (tuples become lists), so configs compare equal."""
    return json.loads(json.dumps(obj, allow_nan=False))


def _existing_identity(out: Path) -> tuple[dict | None, dict | None]:
    """``(identity, manifest)`` of what ``out`` holds; refuses what cannot be resumed."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a directory")
    if not out.is_dir():
        return None, None
    manifest = None
    if (out / MANIFEST).is_file():
        try:
            manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            manifest = None
        if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT
                and isinstance(manifest.get("config"), dict)):
            raise ConfigError(
                f"{out}: already holds a dataset (manifest.json) that is not a resumable {FORMAT} "
                "dataset; choose a new --out or remove it"
            )
        return _identity_of(manifest), manifest
    identity = journal.read_identity(out)
    if identity is not None:
        return identity, None
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        raise ConfigError(
            f"{out}: output directory is not empty and holds no wcscan dataset ({len(entries)} entries, "
            f"e.g. {entries[0]!r}); choose a new --out or remove it"
        )
    return None, None


def _identity_of(record: Mapping) -> dict:
    keys = ("format", "generator_version", "theory_key", "config")
    return {k: record.get(k) for k in keys}


def _check_same(out: Path, existing: Mapping, requested: Mapping) -> None:
    diffs = journal.differences(existing.get("config") or {}, requested["config"])
    diffs += journal.differences(
        {k: v for k, v in existing.items() if k != "config"},
        {k: v for k, v in requested.items() if k != "config"},
    )
    if diffs:
        raise ConfigError(
            f"{out}: holds a dataset made with another config ({'; '.join(diffs)}; existing != requested); "
            "generate with the same config to resume, or choose a new --out"
        )


# --- resume ---------------------------------------------------------------------


def _verified_parts(out: Path, level: str, items: list[WorkItem], known: Mapping[str, dict]) -> dict:
    """``(point, part) -> entry`` for the items whose part is on disk with its recorded sha256."""
    candidates = []
    for item in items:
        path = part_path(out, level, item.point, item.part).relative_to(out).as_posix()
        entry = known.get(path)
        if entry is not None and entry.get("rows") == item.events:
            candidates.append((item, entry))
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashing and reading release the GIL
        digests = list(pool.map(lambda c: sha256_file(out / c[1]["path"], missing_ok=True), candidates))
    ok = {}
    for (item, entry), digest in zip(candidates, digests):
        if digest == entry["sha256"]:
            ok[item.point, item.part] = {"path": entry["path"], "rows": entry["rows"], "sha256": entry["sha256"]}
        else:
            log.info("part %s is %s; making it again", entry["path"], "missing" if digest is None else "changed")
    return ok


def _remove_stale_temporaries(out: Path, level: str) -> None:
    """Temporary files of parts whose writer died (named ``.part-*.tmp`` by the atomic writer)."""
    for tmp in (out / f"level={level}").glob("point=*/.part-*.tmp"):
        tmp.unlink(missing_ok=True)


# --- the run --------------------------------------------------------------------


def generate(
    out: Path,
    dc9: list[float],
    events: int,
    seed: int,
    windows: list[tuple[float, float]],
    chunk_size: int = 1_000_000,
    progress: Callable[[int], None] | None = None,
    *,
    level: str = "gen",
    detector=None,
    workers: int | None = 0,
    address: str | None = None,
    pool=None,
    design=None,
) -> GenerateResult:
    """Generate (or complete) the dataset ``out``: ``events`` events at each ``dc9`` scan point, or at each
    point of ``design`` (a :class:`kernels.design.Design` over any coefficients; ``dc9`` is then None).

    ``level`` is ``gen``, ``det`` or ``det_bkg``; ``detector`` a
    ``DetectorConfig`` or its dict (default config when None; ignored at
    ``gen``). ``workers=0`` runs in this process; ``None`` runs
    one Ray actor per CPU of the cluster, ``N`` runs ``N`` actors; ``address``
    joins an existing Ray cluster (default ``$RAY_ADDRESS``, else a local
    instance is started). ``pool``: an open
    :func:`generation_pool` to use instead.

    Every argument is checked before anything is created on disk. ``out`` must
    be absent, empty, or hold (part of) a dataset with the same config, which
    is then completed. ``progress(n)`` is called with the number of events of
    each part kept or made, as it is. The manifest is written last.
    """
    from kernels import theory

    out = Path(out)
    columns, points, spec = _scan(dc9, design, events, seed, chunk_size)
    windows = [tuple(w) for w in theory.validate_windows(windows)]
    detector_config = _detector_config(level, detector, windows)
    if pool is None:
        _check_workers(workers, address)
    existing, old_manifest = _existing_identity(out)

    table = theory.jtable([theory.coefficient_for(c) for c in columns], windows)
    if table.shift_columns != columns:
        raise ConfigError(f"theory table scans {table.shift_columns}, expected {columns}")
    config = {
        "coefficients": list(table.coefficients),
        "windows": [list(w) for w in windows],
        "events": events,
        "seed": seed,
        "chunk_size": chunk_size,
        "level": level,
    }
    if spec is None:  # delta C9 alone: the config of every dataset before several coefficients
        config["dc9"] = [p[0] for p in points]
    else:
        config["shifts"] = points
        config["design"] = spec
    if detector_config is not None:
        config["detector"] = detector_config
    identity = _json_normal({"format": FORMAT, "generator_version": generator_version(),
                             "theory_key": table.key, "config": config})
    if existing is not None:
        _check_same(out, _json_normal(existing), identity)

    items = list(work_items(points, events, seed, chunk_size))
    known = journal.recorded_parts(out) if existing is not None else {}
    if old_manifest is not None:
        for p in old_manifest.get("points", ()):
            for entry in p.get("parts", ()):
                known.setdefault(entry.get("path"), entry)
    done = _verified_parts(out, level, items, known) if known else {}
    todo = [item for item in items if (item.point, item.part) not in done]
    if progress is not None:
        for item in items:
            if (item.point, item.part) in done:
                progress(item.events)

    result = GenerateResult(manifest={}, parts_kept=len(done))
    if todo:
        if done:
            log.info("%s: keeping %d finished parts, making %d", out, len(done), len(todo))
        _make_parts(out, identity, level, table, detector_config, todo, done, result, progress,
                    workers, address, pool)

    manifest = {
        "format": FORMAT,
        "generator_version": identity["generator_version"],
        "flavio_version": getattr(table, "flavio_version", None) or flavio_version(),
        "theory_key": table.key,
        "config": config,
        "points": [],
    }
    for i, v in enumerate(points):
        parts = [done[key] for key in sorted(done) if key[0] == i]
        manifest["points"].append({
            "index": i,
            "shifts": dict(zip(columns, v)),
            "events": events,
            "seed": [seed, i],
            "parts": parts,
            "checksum": point_checksum(parts),
        })
    result.manifest = manifest
    if not todo and old_manifest == _json_normal(manifest):
        result.was_complete = True
        log.info("%s: dataset is complete; nothing to do", out)
        return result
    write_manifest(out, manifest)
    log.info("wrote %s: %d points x %d events (%d parts made, %d kept)",
             out, len(points), events, result.parts_made, result.parts_kept)
    return result


def _make_parts(out, identity, level, table, detector_config, todo, done, result, progress,
                workers, address, pool) -> None:
    """Make the ``todo`` items into ``done``, journaling each part as it lands."""
    created_out = not out.exists()
    job = Job(
        out=str(out),
        coefficients=tuple(identity["config"]["coefficients"]),
        windows=tuple(tuple(w) for w in identity["config"]["windows"]),
        theory_key=identity["theory_key"],
        level=level,
        detector=None if detector_config is None else json.dumps(detector_config, sort_keys=True),
    )
    own_pool = None
    if pool is None and workers != 0:
        pool = own_pool = generation_pool(workers, address)  # refuses before the disk is touched
    made_any = False

    def on_done(item: WorkItem, entry: dict, where: dict | None = None) -> None:
        nonlocal made_any
        journal.record_part(out, entry)
        made_any = True
        done[item.point, item.part] = entry
        result.parts_made += 1
        if where is not None:
            result.ran_on[item.point, item.part] = where
        if progress is not None:
            progress(item.events)

    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # the dataset is incomplete until the parts are back
        journal.write_identity(out, identity)
        _remove_stale_temporaries(out, level)
        if pool is None:
            job_columns = table.shift_columns
            maker = PartMaker({(job.coefficients, job.windows): table})
            for item in todo:
                if item.part == 0:
                    log.info("point %d (%s): sampling", item.point,
                             ", ".join(f"{c}={v:g}" for c, v in zip(job_columns, item.shifts)))
                on_done(item, maker(job, item))
        else:
            pool.run(job, todo, lambda item, r: on_done(
                item, r["entry"], {"node_id": r["node_id"], "pid": r["pid"]}))
    except BaseException:
        if not made_any and not done:
            log.info("generation failed before any part was finished; removing what it created")
            shutil.rmtree(out / journal.JOURNAL, ignore_errors=True)
            shutil.rmtree(out / f"level={level}", ignore_errors=True)
            if created_out:
                shutil.rmtree(out, ignore_errors=True)
        else:
            log.info("generation failed; %d parts are finished and recorded for a resume", len(done))
        raise
    finally:
        if own_pool is not None:
            own_pool.close()


def generation_pool(workers: int | None = None, address: str | None = None):
    """An actor pool of generation workers (:class:`~orchestrator.generate.parts.PartMaker`)."""
    from orchestrator.runtime.pool import ActorPool

    return ActorPool(WORKER, workers, address)

"""The event dataset on disk: layout, atomic Parquet parts, manifest, validation.

A dataset is a directory holding Hive partitions of Parquet parts and, written
last, ``manifest.json``::

    <root>/manifest.json
    <root>/level=gen/point=000/part-00000.parquet
    <root>/level=gen/point=000/part-00001.parquet
    <root>/level=gen/point=001/part-00000.parquet
    ...

Partitions use the integer point index (float partition values do not
round-trip); the Wilson-coefficient shifts of each point are in the manifest
and in the shift columns (``dc9``, ...) of the parts. A directory without a
manifest is an incomplete dataset.

Every file is written atomically (a temporary name in the same directory, then
``os.replace``), and the same table always gives the same bytes, so a dataset's
checksums depend only on its seed and config.

Example:

>>> import tempfile, pyarrow as pa
>>> root = tempfile.mkdtemp()
>>> t = pa.table({c: pa.array([0.5, 0.25], pa.float32()) for c in COLUMNS})
>>> info = write_part(root, "gen", 3, 0, t)
>>> info["path"], info["rows"]
('level=gen/point=003/part-00000.parquet', 2)
>>> validate_events(t, "example")  # passes silently

Pure pyarrow / numpy: no Ray, no torch, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kernels.errors import DatasetError
from kernels.files import atomic_write_bytes, atomic_write_json

__all__ = [
    "COLUMNS",
    "LEVELS",
    "MANIFEST",
    "part_path",
    "write_part",
    "write_manifest",
    "read_manifest",
    "point_checksum",
    "read_point",
    "read_pools",
    "validate_events",
    "load_events",
    "events_file",
]

log = logging.getLogger(__name__)

#: Kinematic columns of an event, in the order used for arrays of shape (..., 4).
COLUMNS: tuple[str, ...] = ("q2", "cos_theta_mu", "cos_theta_k", "chi")
#: Simulation levels: generator, after detector response, detector plus background.
LEVELS: tuple[str, ...] = ("gen", "det", "det_bkg")
#: File name of the manifest at the dataset root.
MANIFEST = "manifest.json"

_COMPRESSION = "zstd"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def part_path(root: str | os.PathLike, level: str, point: int, part: int) -> Path:
    """Path of one Parquet part: ``root/level=<level>/point=<NNN>/part-<KKKKK>.parquet``.

    >>> part_path("ds", "gen", 7, 12).as_posix()
    'ds/level=gen/point=007/part-00012.parquet'
    """
    if level not in LEVELS:
        raise DatasetError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    return Path(root) / f"level={level}" / f"point={point:03d}" / f"part-{part:05d}.parquet"


def write_part(
    root: str | os.PathLike, level: str, point: int, part: int, table: pa.Table
) -> dict:
    """Write ``table`` as one Parquet part, atomically and byte-deterministically.

    The file is serialised in memory (zstd, no timestamps), hashed, and moved
    into place with ``os.replace``; the same table gives the same bytes on
    every run. Dictionary encoding is used only for the columns that repeat
    (shifts, flags), not for the continuous kinematics, where it never pays:
    trying it costs most of the encoding time and makes the file larger. Returns ``{"path": <posix path relative to root>, "rows": n,
    "sha256": <hex digest of the file>}``, the entry the manifest records.
    """
    path = part_path(root, level, point, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()
    dictionary = [c for c in table.column_names if c not in COLUMNS]
    pq.write_table(table, sink, compression=_COMPRESSION, use_dictionary=dictionary)
    data = memoryview(sink.getvalue())  # no copy: hashed and written from Arrow's buffer
    atomic_write_bytes(path, data)
    info = {
        "path": path.relative_to(Path(root)).as_posix(),
        "rows": table.num_rows,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    log.debug("wrote %s (%d rows, %d bytes)", path, table.num_rows, len(data))
    return info


def write_manifest(root: str | os.PathLike, manifest: Mapping) -> Path:
    """Write ``manifest.json`` atomically (sorted keys, indent 2); return its path."""
    path = Path(root) / MANIFEST
    atomic_write_json(path, manifest)
    log.debug("wrote %s", path)
    return path


def read_manifest(root: str | os.PathLike) -> dict:
    """Read ``root/manifest.json``. A missing or corrupt manifest is a DatasetError."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root}: " + ("is a file; a dataset is a directory (wcscan generate --out)" if root.exists()
                                          else "no such dataset directory"))
    if not path.is_file():
        raise DatasetError(
            f"{root}: no manifest.json — dataset is incomplete or not a wcscan dataset"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: corrupt manifest ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read manifest ({_one_line(err)})") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: corrupt manifest (top level is not a JSON object)")
    return manifest


def point_checksum(parts: Sequence[Mapping]) -> str:
    """Content checksum of one point: sha256 over its parts' sha256 digests, in order.

    >>> point_checksum([]) == hashlib.sha256().hexdigest()
    True
    """
    h = hashlib.sha256()
    for p in parts:
        h.update(bytes.fromhex(p["sha256"]))
    return h.hexdigest()


def _find_point(manifest: Mapping, point: int) -> Mapping:
    for entry in manifest.get("points", ()):
        if entry.get("index") == point:
            return entry
    known = [e.get("index") for e in manifest.get("points", ())]
    raise DatasetError(f"point {point} is not in the manifest (points: {known})")


@dataclass(frozen=True)
class EventManifest:
    """A typed view of an event dataset's ``manifest.json`` (:func:`read_event_manifest`).

    ``points`` are the per-point entries in index order (each a dict with
    ``index``, ``shifts``, ``events``, ``parts``, ``seed`` and ``checksum``);
    ``raw`` is the manifest as read, for what the view does not name.
    """

    root: Path
    format: str
    level: str
    coefficients: tuple[str, ...]
    windows: tuple[tuple[float, float], ...]
    seed: int
    detector: dict | None
    theory_key: str | None
    points: tuple[dict, ...]
    raw: dict

    @property
    def shift_columns(self) -> tuple[str, ...]:
        """The scanned shifts, in the coefficients' order (``('dc9',)``, ``('dc9', 'dc10')``, ...)."""
        from kernels.theory import SHIFT_COLUMNS

        return tuple(SHIFT_COLUMNS.get(c, c) for c in self.coefficients)

    def shifts(self) -> np.ndarray:
        """The shift vector of each point, (P, n) in index order and :attr:`shift_columns` order."""
        return np.array([[float(p["shifts"][c]) for c in self.shift_columns] for p in self.points], dtype=np.float64)

    @property
    def dc9(self) -> list[float]:
        """delta C9 of each point, in index order; a DatasetError when the dataset scans other coefficients
        too (the stages that read this scan delta C9 alone)."""
        if self.shift_columns != ("dc9",):
            raise DatasetError(f"{self.root}: this dataset scans {', '.join(self.shift_columns)}; this stage takes "
                               "a delta C9-only dataset (several coefficients: wcscan fit and wcscan bounds)")
        return [float(p["shifts"]["dc9"]) for p in self.points]

    @property
    def fewest_events(self) -> int:
        """Events of the smallest point."""
        return min(int(p["events"]) for p in self.points)


def read_event_manifest(root: str | os.PathLike) -> EventManifest:
    """:func:`read_manifest`, checked to be a wcscan event dataset, as an :class:`EventManifest`.

    A manifest of another format, or with missing or malformed entries, is a one-line DatasetError.
    """
    root = Path(root)
    raw = read_manifest(root)
    if not str(raw.get("format", "")).startswith("wcscan-events/"):
        raise DatasetError(f"{root / MANIFEST}: not a wcscan event dataset (format {raw.get('format')!r})")
    try:
        config = raw["config"]
        points = tuple(sorted(raw["points"], key=lambda p: p["index"]))
        if not points:
            raise KeyError("points (none listed)")
        return EventManifest(
            root=root, format=raw["format"], level=str(config.get("level", "gen")),
            coefficients=tuple(config["coefficients"]), windows=tuple(tuple(map(float, w)) for w in config["windows"]),
            seed=int(config.get("seed", 0)), detector=config.get("detector"), theory_key=raw.get("theory_key"),
            points=points, raw=raw,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{root / MANIFEST}: missing or malformed entry {err}") from None


def read_point(
    root: str | os.PathLike,
    manifest: Mapping,
    level: str,
    point: int,
    *,
    verify_checksums: bool = True,
) -> pa.Table:
    """Read the ``level`` events of scan point ``point``, parts in manifest order.

    Each part listed in the manifest must exist, hold the recorded number of
    rows and, with ``verify_checksums`` (the default), have the recorded
    sha256: a part changed since it was written is refused, never used. The
    bytes are read once, hashed and parsed from memory.
    """
    root = Path(root)
    entry = _find_point(manifest, point)
    prefix = f"level={level}/"
    parts = [p for p in entry.get("parts", ()) if p["path"].startswith(prefix)]
    if not parts:
        raise DatasetError(f"{root}: point {point} has no {level!r}-level parts in the manifest")
    tables = []
    for p in parts:
        path = root / p["path"]
        if not path.is_file():
            raise DatasetError(f"{path}: part listed in the manifest is missing")
        try:
            data = path.read_bytes()
            if verify_checksums and hashlib.sha256(data).hexdigest() != p["sha256"]:
                raise DatasetError(
                    f"{path}: sha256 differs from the manifest's (the part changed since it was written); "
                    "generate the dataset again"
                )
            table = pq.ParquetFile(pa.BufferReader(data)).read()
        except DatasetError:
            raise
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f"{path}: cannot read Parquet part ({_one_line(err)})") from None
        if table.num_rows != p["rows"]:
            raise DatasetError(
                f"{path}: has {table.num_rows} rows, the manifest says {p['rows']}"
            )
        tables.append(table)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _column_numpy(table: pa.Table, name: str) -> np.ndarray:
    # Nulls become NaN for floating columns, so they count as non-finite.
    return table.column(name).to_numpy()


def read_pools(root: str | os.PathLike, manifest: Mapping | None = None, level: str | None = None) -> list[np.ndarray]:
    """The events of every scan point, float32 arrays ``(n, 4)`` (columns :data:`COLUMNS`) in point order.

    ``level`` defaults to the dataset's own (``manifest["config"]["level"]``, else "gen").
    """
    view = read_event_manifest(root) if manifest is None else None
    manifest = view.raw if view is not None else manifest
    level = level or (view.level if view is not None else manifest.get("config", {}).get("level", "gen"))
    pools = []
    for p in sorted(manifest["points"], key=lambda p: p["index"]):
        t = read_point(root, manifest, level, p["index"])
        pools.append(np.stack([t.column(c).to_numpy() for c in COLUMNS], axis=1).astype(np.float32))
    return pools


def validate_events(
    table: pa.Table,
    source: str,
    q2_windows: Iterable[tuple[float, float]] | None = None,
) -> None:
    """Check that ``table`` holds valid events; raise a one-line DatasetError if not.

    Checks, vectorised over rows: the columns in :data:`COLUMNS` exist and are
    floating point; all values are finite (nulls count as not finite);
    ``cos_theta_mu`` and ``cos_theta_k`` lie in [-1, 1]; ``chi`` lies in
    [0, 2 pi]; ``q2`` lies in the union of ``q2_windows`` when given. Bounds
    are compared in the column's own precision, so float32 rounding of a value
    that was inside a bound never counts as outside. The message names
    ``source``, the column and the number of offending rows.
    """
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} ({table.num_rows} rows; has: "
            f"{', '.join(table.column_names) or 'no columns'})"
        )
    for c in COLUMNS:
        typ = table.schema.field(c).type
        if not pa.types.is_floating(typ):
            raise DatasetError(
                f"{source}: column {c!r} has type {typ}, expected floating point "
                f"({table.num_rows} rows affected)"
            )

    problems: list[str] = []
    ranges = {
        "cos_theta_mu": (-1.0, 1.0, "[-1, 1]"),
        "cos_theta_k": (-1.0, 1.0, "[-1, 1]"),
        "chi": (0.0, 2.0 * math.pi, "[0, 2 pi]"),
    }
    for c in COLUMNS:
        arr = _column_numpy(table, c)
        finite = np.isfinite(arr)
        n_bad = arr.size - int(np.count_nonzero(finite))
        if n_bad:
            problems.append(f"column {c!r} has {n_bad} non-finite or null value(s)")
        if c in ranges:
            lo, hi, label = ranges[c]
            lo_c, hi_c = np.asarray(lo, arr.dtype), np.asarray(hi, arr.dtype)
            n_out = int(np.count_nonzero(finite & ((arr < lo_c) | (arr > hi_c))))
            if n_out:
                problems.append(f"column {c!r} has {n_out} value(s) outside {label}")
        elif c == "q2" and q2_windows is not None:
            windows = [(float(lo), float(hi)) for lo, hi in q2_windows]
            inside = np.zeros(arr.shape, dtype=bool)
            for lo, hi in windows:  # loop over windows, not rows
                inside |= (arr >= np.asarray(lo, arr.dtype)) & (arr <= np.asarray(hi, arr.dtype))
            n_out = int(np.count_nonzero(finite & ~inside))
            if n_out:
                label = " U ".join(f"[{lo:g}, {hi:g}]" for lo, hi in windows)
                problems.append(f"column 'q2' has {n_out} value(s) outside the q2 window(s) {label}")
    if problems:
        raise DatasetError(f"{source}: " + "; ".join(problems))


def events_file(path: str | os.PathLike) -> Path:
    """The file on disk behind a user's events path: ``F.root:TREE`` -> ``F.root``, anything else as is.

    >>> events_file("a/ev.root:tree").as_posix(), events_file("ev.parquet").as_posix()
    ('a/ev.root', 'ev.parquet')
    """
    root = _root_spec(path)
    return Path(os.fspath(path)) if root is None else root[0]


def _root_spec(path: str | os.PathLike) -> tuple[Path, str | None] | None:
    """``(file, tree or None)`` when ``path`` names a ROOT file (``F.root`` or ``F.root:TREE``), else None.

    >>> [(f.as_posix(), t) for f, t in (_root_spec("a/ev.root:tree"), _root_spec("ev.ROOT"))]
    [('a/ev.root', 'tree'), ('ev.ROOT', None)]
    >>> _root_spec("ev.parquet") is None
    True
    """
    text = os.fspath(path)
    if Path(text).suffix.lower() == ".root":
        return Path(text), None
    head, sep, tree = text.rpartition(":")
    if sep and tree and Path(head).suffix.lower() == ".root" and not Path(text).exists():
        return Path(head), tree
    return None


def _read_root(path: Path, tree: str | None, label: str) -> pa.Table:
    """The flat branches of a TTree (or RNTuple) as an Arrow table, via uproot (imported lazily)."""
    try:
        import uproot
    except ImportError:
        raise DatasetError(
            f"{label}: reading ROOT files needs uproot: pip install 'wcscan[root]'"
        ) from None
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    kinds = ("TTree", "ROOT::RNTuple")
    try:
        with uproot.open(path) as f:
            trees = [k for k, cls in f.classnames(cycle=False).items() if cls in kinds]
            if tree is None:
                if not trees:
                    raise DatasetError(f"{path}: no TTree in the file (keys: {', '.join(f.keys(cycle=False)) or 'none'})")
                tree = trees[0]
                if len(trees) > 1:
                    log.warning("%s: %d trees (%s); reading %r - name another as %s:TREE",
                                path, len(trees), ", ".join(trees), tree, path)
            elif tree not in trees:
                raise DatasetError(f"{path}: no TTree {tree!r} (trees: {', '.join(trees) or 'none'})")
            arrays = f[tree].arrays(library="np")
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - uproot raises many types (ValueError, OSError, its own)
        raise DatasetError(f"{label}: cannot read ROOT file ({_one_line(err)})") from None
    columns, skipped = {}, []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype == object or arr.ndim != 1:  # jagged or multi-dimensional: not one number per event
            skipped.append(name)
            continue
        columns[name] = pa.array(arr)
    if skipped:
        log.info("%s: skipped %d branch(es) that are not one number per entry: %s", label, len(skipped),
                 ", ".join(skipped))
    return pa.table(columns)


def load_events(
    path: str | os.PathLike, column_map: Mapping[str, str] | None = None
) -> pa.Table:
    """Read a user's file of events; rename columns by ``column_map``.

    Parquet by default. A ROOT file (``FILE.root``, or ``FILE.root:TREE`` to
    name the tree; else the first TTree of the file) is read with uproot,
    an optional dependency (``pip install 'wcscan[root]'``), imported only here;
    its branches holding one number per entry become the columns.
    ``column_map`` maps the file's column names to wcscan's (e.g.
    ``{"costhetal": "cos_theta_mu"}``). Validation is separate
    (:func:`validate_events`). An unreadable file is a one-line DatasetError.
    """
    root = _root_spec(path)
    if root is not None:
        table = _read_root(root[0], root[1], os.fspath(path))
        path = Path(os.fspath(path))
    else:
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"{path}: no such file")
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f"{path}: cannot read Parquet file ({_one_line(err)})") from None
    if column_map:
        absent = [k for k in column_map if k not in table.column_names]
        if absent:
            raise DatasetError(
                f"{path}: column map names column(s) {', '.join(map(repr, absent))} "
                f"not in the file (has: {', '.join(table.column_names)})"
            )
        table = table.rename_columns([column_map.get(c, c) for c in table.column_names])
    return table

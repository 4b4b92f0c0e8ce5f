"""The progress journal of a dataset being generated: what lets a run resume.

Beside the Parquet parts, generation keeps a small journal under
``<root>/_progress/`` (the leading underscore makes Parquet dataset readers
skip it)::

    <root>/_progress/config.json                                   # what the parts are made of
    <root>/_progress/level=gen/point=000/part-00000.parquet.json   # one per finished part
    ...

``config.json`` holds the identity of the dataset: the generation config, the
theory-table key, the generator version and the format. It is written before
the first part. Each part's record is the entry the manifest will list
(``path``, ``rows``, ``sha256``), written once the part is in place. Every
file is written atomically, so a crash leaves either the old state or the new
one, and a part without a record is simply made again (with the same bytes).

The journal is kept after the manifest is written: with it, a dataset whose
manifest or some parts were deleted is completed without redoing the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from kernels.files import atomic_write_json

__all__ = ["JOURNAL", "read_identity", "write_identity", "record_part", "recorded_parts", "differences"]

#: Name of the journal folder at the dataset root.
JOURNAL = "_progress"
_IDENTITY = "config.json"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_identity(root: str | os.PathLike) -> dict | None:
    """The identity recorded in ``root/_progress/config.json``, or None if absent or unreadable."""
    obj = _read_json(Path(root) / JOURNAL / _IDENTITY)
    return obj if isinstance(obj, dict) else None


def write_identity(root: str | os.PathLike, identity: Mapping) -> None:
    """Record the identity of the dataset being made (atomically)."""
    atomic_write_json(Path(root) / JOURNAL / _IDENTITY, dict(identity))


def record_part(root: str | os.PathLike, entry: Mapping) -> None:
    """Record a finished part: ``entry`` is its manifest entry (``path``, ``rows``, ``sha256``)."""
    atomic_write_json(Path(root) / JOURNAL / f"{entry['path']}.json", dict(entry))


def recorded_parts(root: str | os.PathLike) -> dict[str, dict]:
    """The recorded part entries, keyed by their path; unreadable records are left out."""
    base = Path(root) / JOURNAL
    found: dict[str, dict] = {}
    if not base.is_dir():
        return found
    for path in base.glob("level=*/point=*/*.parquet.json"):
        entry = _read_json(path)
        if isinstance(entry, dict) and {"path", "rows", "sha256"} <= entry.keys():
            found[entry["path"]] = entry
    return found


def _show(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(existing: Mapping, requested: Mapping, prefix: str = "") -> list[str]:
    """``field: existing != requested`` for every field that differs, nested fields dotted.

    >>> differences({"events": 1000, "seed": 1}, {"events": 2000, "seed": 1})
    ['events: 1000 != 2000']
    >>> differences({"detector": {"sigma": 1}}, {"detector": {"sigma": 2}, "level": "det"})
    ['detector.sigma: 1 != 2', 'level: (none) != "det"']
    """
    out = []
    for key in sorted(set(existing) | set(requested)):
        a, b = existing.get(key), requested.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            show_a = "(none)" if key not in existing else _show(a)
            show_b = "(none)" if key not in requested else _show(b)
            out.append(f"{prefix}{key}: {show_a} != {show_b}")
    return out

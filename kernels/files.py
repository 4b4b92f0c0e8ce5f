"""Atomic writes and content hashes: the one place the project writes and fingerprints files.

Every file wcscan writes appears whole or not at all: it is written to a
temporary name beside its destination (``.<name>.<pid>.tmp``, same directory,
same file system) and renamed into place with :func:`os.replace`. A writer
that dies leaves at most such a temporary file, never a truncated result.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> _ = atomic_write_json(root / "a" / "x.json", {"b": 1})
>>> (root / "a" / "x.json").read_text()
'{\\n  "b": 1\\n}\\n'
>>> sha256_file(root / "a" / "x.json") == hashlib.sha256(b'{\\n  "b": 1\\n}\\n').hexdigest()
True
>>> sha256_file(root / "missing", missing_ok=True) is None
True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "sha256_file"]

_BLOCK = 1 << 22


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The parent directory is created. If the block raises, the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as sorted, indented JSON (NaN refused) to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike, missing_ok: bool = False) -> str | None:
    """Hex sha256 of a file's bytes, read in blocks; None for an unreadable file when ``missing_ok``."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                h.update(block)
    except OSError:
        if missing_ok:
            return None
        raise
    return h.hexdigest()

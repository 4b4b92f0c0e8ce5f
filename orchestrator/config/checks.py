"""Small validators shared by every command and config: one rule for a value, written once.

Each raises :class:`~kernels.errors.ConfigError` with one line naming the
option and the value, and each is cheap, so a job calls them before any
expensive work and before anything is written.

>>> positive_int(3, "--sets")
3
>>> positive_int(0, "--sets")
Traceback (most recent call last):
...
kernels.errors.ConfigError: --sets must be a positive integer, got 0
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kernels.errors import ConfigError

__all__ = ["positive_int", "non_negative_int", "output_dir", "output_file", "device"]


def _integer(value, name: str, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(value, name: str) -> int:
    """``value`` if it is an integer >= 1."""
    return _integer(value, name, 1, "a positive integer")


def non_negative_int(value, name: str) -> int:
    """``value`` if it is an integer >= 0."""
    return _integer(value, name, 0, "a non-negative integer")


def _probe_writable(directory: Path, name: str, path: Path) -> None:
    """Create and remove a temporary directory in ``directory``: the only test that cannot be fooled."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".wcscan-probe-", dir=directory))
    except OSError as err:
        raise ConfigError(f"{name} {path}: cannot write in {directory} ({err.strerror or err})") from None


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def output_dir(path, name: str = "--out") -> Path:
    """``path`` if it is, or can be created as, a writable directory; nothing is left behind.

    >>> output_dir(Path(tempfile.mkdtemp()) / "new" / "dir").exists()
    False
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {path}: exists and is not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ConfigError(f"{name} {path}: {base} is a file, not a directory")
    _probe_writable(base, name, path)
    return path


def output_file(path, name: str = "--out") -> Path:
    """``path`` if a file can be written there (its directory exists or can be made, and is writable)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{name} {path}: is a directory, not a file")
    output_dir(path.parent, name) if str(path.parent) not in ("", ".") else _probe_writable(Path("."), name, path)
    return path


def device(name: str | None, option: str = "--device") -> str | None:
    """A torch device string that exists here: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (None: automatic)."""
    if name is None:
        return None
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} {name!r}: not a torch device (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {name}: no CUDA GPU is visible to torch on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{option} {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"{option} {name!r}: wcscan trains on cpu, cuda or mps")
    return name


def q2_windows(value) -> list[tuple[float, float]]:
    """The q2 windows of a config, checked (:func:`kernels.theory.validate_windows`), as tuples."""
    from kernels.theory import validate_windows

    return [tuple(w) for w in validate_windows(value)]

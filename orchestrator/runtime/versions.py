"""Versions recorded in every manifest wcscan writes.

>>> generator_version().count(".") >= 1
True
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["generator_version", "flavio_version"]


def generator_version() -> str:
    """The installed wcscan's version (0.1.0 when run from a source tree that is not installed)."""
    try:
        return version("wcscan")
    except PackageNotFoundError:
        return "0.1.0"


def flavio_version() -> str:
    """The installed flavio's version: theory tables and datasets depend on it."""
    return version("flavio")

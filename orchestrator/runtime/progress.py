"""The progress protocol between the jobs and whoever shows progress (the CLI's rich bars).

A job takes ``progress(description, total, unit)``, a factory of context
managers that yield ``advance(n)`` or None; the job sizes the work, the
caller decides how (and whether) to show it.

>>> with no_progress("generate", 10, "events") as advance:
...     advance is None
True
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

ProgressFactory = Callable[[str, int, str], AbstractContextManager]


def no_progress(description: str = "", total: int = 0, unit: str = "") -> AbstractContextManager:
    """The silent factory: yields None."""
    return nullcontext()

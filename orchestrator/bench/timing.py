"""The one timing helper of every benchmark: wall time of a call, medians of repeats, one thread.

>>> seconds(lambda: None) >= 0
True
>>> median_time(lambda: None, 3) >= 0
True
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

__all__ = ["one_thread", "seconds", "median_time"]


@contextlib.contextmanager
def one_thread():
    """Limit BLAS/OpenMP pools to one thread, so "per core" means what it says."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def seconds(fn) -> float:
    """Wall seconds of one call of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn()``."""
    return float(np.median([seconds(fn) for _ in range(repeats)]))

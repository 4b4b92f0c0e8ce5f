"""How a point's events split into training and validation, and the Deep Sets data built from them.

Both ``wcscan run`` and the Tune trainables call these, so a network sees the
same data whichever launched it. Validation uses the last
:data:`TRAIN_FRACTION` -complement of each point's events; test MC is never
drawn from these pools.

>>> train, val = split_pool(np.arange(10))
>>> train.tolist(), val.tolist()
([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernels.bootstrap import index_seed, set_indices
from kernels.errors import ConfigError

__all__ = ["TRAIN_FRACTION", "split_pool", "train_events", "deepsets_data"]

TRAIN_FRACTION = 0.8
"""Share of each point's events used for training; the rest validates."""


def split_pool(pool: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): the first :data:`TRAIN_FRACTION` of the pool's first ``n`` events (all by default), then the rest."""
    pool = pool if n is None else pool[:n]
    cut = int(TRAIN_FRACTION * len(pool))
    return pool[:cut], pool[cut:]


def train_events(n_events: int) -> int:
    """How many of a point's ``n_events`` events training draws sets from.

    >>> train_events(2000)
    1600
    """
    return int(TRAIN_FRACTION * n_events)


def deepsets_data(pools: Sequence[np.ndarray], grid: Sequence[float], set_size: int, sets_per_point: int, seed: int):
    """(train SetDataset, val SetDataset, a sample of training events for the feature scaling).

    Sets are drawn with replacement within each point's train (val) part:
    ``sets_per_point`` training sets and ``max(4, sets_per_point // 5)``
    validation sets per point, seeded by ``index_seed(seed, point, 1 | 2)``.
    A set larger than a point's training part is refused, not resampled.
    """
    from models.data import SetDataset

    if len(pools) != len(grid):
        raise ConfigError(f"{len(pools)} pools of events, but {len(grid)} delta C9 values")
    parts = [split_pool(p) for p in pools]
    small = min(len(t) for t, _ in parts)
    if set_size > small:
        raise ConfigError(f"--set-size {set_size} is more than the {small} training events of a point "
                          f"({TRAIN_FRACTION:.0%} of its events); use a smaller set size or generate more events")
    n_val = max(4, sets_per_point // 5)
    idx_tr = [set_indices(len(t), set_size, sets_per_point, index_seed(seed, i, 1), replace=True)
              for i, (t, _) in enumerate(parts)]
    idx_va = [set_indices(len(v), set_size, n_val, index_seed(seed, i, 2), replace=True) for i, (_, v) in enumerate(parts)]
    sample = np.concatenate([t[:20_000] for t, _ in parts])
    return (SetDataset([t for t, _ in parts], grid, idx_tr), SetDataset([v for _, v in parts], grid, idx_va), sample)

r"""A pool of events drawn once and thinned to any shift: sets at thousands of shifts for the cost of one sample.

The pool is ``n`` events from an equal mixture of the generator at a few ``components`` shifts
(:func:`kernels.sampler.sample_array`, seed ``(seed, k)`` for component k), projected once
(:func:`kernels.likelihood.project`), so that every event's density at any shift c is exact,

.. math::

    q(z \mid c) = \frac{a(z) \cdot m(c)}{\Gamma \cdot m(c)}, \qquad
    q_\text{mix}(z) = \frac1K \sum_k q(z \mid c_k), \qquad w(z; c) = \frac{q(z \mid c)}{q_\text{mix}(z)} .

A set of N events at c (:meth:`EventPool.draw`) is rejection sampling from the pool: a window of the shuffled pool,
from a random start, each event kept with probability :math:`w(z; c) / w_\text{max}`, the first N kept. No event
appears twice in one set, and a set follows :math:`q(\cdot \mid c)` as closely as the pool follows
:math:`q_\text{mix}` (the pool's events are shared between sets, so use a pool many times the largest set).
:math:`w_\text{max}` is the largest weight of the pool's events over a grid of shifts spanning ``box`` (its
corners included), times a margin; :attr:`EventPool.overflow` counts the kept events whose weight exceeded it
(each is kept, a bias of the order of that fraction).

>>> from kernels import theory
>>> t = theory.jtable(["C9_bsmumu", "C10_bsmumu"], [(1.1, 6.0)])
>>> pool = EventPool(t, [[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]], 20_000, seed=1,
...                  box=[[-1.0, 1.0], [-1.0, 1.0]])
>>> x = pool.draw([0.5, -0.3], 1_000, np.random.default_rng(0))
>>> x.shape, x.dtype.name, len(np.unique(x, axis=0)), 1.0 < pool.w_max < 10.0
((1000, 4), 'float32', 1000, True)
"""

from __future__ import annotations

import numpy as np

from kernels import likelihood, sampler
from kernels.errors import ConfigError
from kernels.theory import monomials

__all__ = ["EventPool", "corners_and_centre", "mixture_density"]

_MARGIN = 1.05


class EventPool:
    """The module docstring's pool of ``n`` events over ``components`` ``(K, n_shifts)``; ``box`` ``(n_shifts, 2)``
    bounds the shifts it will be asked for (default: the components' bounding box)."""

    def __init__(self, table, components, n: int, seed, box=None, chunk: int = 500_000, advance=None) -> None:
        comp = np.atleast_2d(np.asarray(components, dtype=np.float64))
        if comp.ndim != 2 or comp.shape[1] != table.n_shifts or comp.shape[0] < 1:
            raise ConfigError(f"pool components must have shape (K >= 1, {table.n_shifts}), got {comp.shape}")
        if int(n) < comp.shape[0]:
            raise ConfigError(f"a pool needs at least one event per component, got {n} for {comp.shape[0]}")
        self.table = table
        self.box = np.stack([comp.min(0), comp.max(0)], axis=1) if box is None else np.asarray(box, dtype=np.float64)
        if self.box.shape != (table.n_shifts, 2) or np.any(self.box[:, 0] > self.box[:, 1]):
            raise ConfigError(f"pool box must have shape ({table.n_shifts}, 2) with low <= high, got {self.box.tolist()}")
        self.norm = likelihood.normalisation(table)
        sizes = np.diff(np.linspace(0, int(n), comp.shape[0] + 1).astype(np.int64))
        events, a = [], []
        for k, (c, size) in enumerate(zip(comp, sizes)):
            for s in range(0, int(size), chunk):
                x = sampler.sample_array(table, c, int(min(chunk, size - s)), (*np.atleast_1d(seed), k, s)).T
                events.append(x)
                a.append(likelihood.project(table, x))
                if advance:
                    advance(x.shape[0])
        order = np.random.default_rng([*np.atleast_1d(seed), 1 << 20]).permutation(int(n))
        self.events = np.concatenate(events)[order]
        self.a = np.concatenate(a)[order]
        self.q_mix = mixture_density(self.a, self.norm, comp)
        self.w_max = _MARGIN * max(float(np.max(self._w(c))) for c in _grid(self.box))
        self.kept = 0
        self.overflow = 0

    def _w(self, c, lo: int = 0, hi: int | None = None) -> np.ndarray:
        m = monomials(np.asarray(c, dtype=np.float64))
        return (self.a[lo:hi] @ m) / (float(self.norm @ m) * self.q_mix[lo:hi])

    def draw(self, shifts, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` events ``(n, 4)`` (float32, :data:`kernels.event_store.COLUMNS`) at ``shifts``, none twice."""
        return self.events[self.take(shifts, n, rng)]

    def take(self, shifts, n: int, rng: np.random.Generator) -> np.ndarray:
        """The pool rows of :meth:`draw`'s events: ``events[rows]``, and their projections ``a[rows]``."""
        c = np.asarray(shifts, dtype=np.float64)
        size = self.events.shape[0]
        need = int(n)
        if need < 1:
            raise ConfigError(f"number of events must be a positive integer, got {n}")
        if c.shape != (self.table.n_shifts,):
            raise ConfigError(f"shifts must have shape ({self.table.n_shifts},), got {c.shape}")
        if np.any(c < self.box[:, 0] - 1e-9) or np.any(c > self.box[:, 1] + 1e-9):
            raise ConfigError(f"shift {c.tolist()} is outside the pool's box {self.box.tolist()}")
        start, taken, picked = int(rng.integers(size)), 0, []
        while need > 0:  # windows of the shuffled pool, from start round to start - 1, never an event twice
            length = min(size - taken, int(1.2 * need * self.w_max) + 64)
            if length <= 0:
                raise ConfigError(f"the pool of {size:,} events is too small for {n:,} events at {c.tolist()}")
            lo = (start + taken) % size
            hi = min(size, lo + length)  # a slice, never a gather: the pool's end ends the window
            w = self._w(c, lo, hi)
            pos = np.flatnonzero(rng.random(hi - lo) * self.w_max < w)[:need]
            self.overflow += int(np.count_nonzero(w[pos] > self.w_max))
            picked.append(lo + pos)
            need -= pos.size
            taken += hi - lo
        idx = np.concatenate(picked)
        self.kept += idx.size
        return idx


def mixture_density(a: np.ndarray, norm: np.ndarray, components) -> np.ndarray:
    r"""``(E,)``: the density of events with projections ``a (E, P)`` (:func:`kernels.likelihood.project`) under an
    equal mixture of the generator at ``components (K, n)``, :math:`\frac1K \sum_k a \cdot m(c_k) / \Gamma \cdot m(c_k)`
    (``norm``: :func:`kernels.likelihood.normalisation`); the density at one shift is ``components = [c]``."""
    m = monomials(np.atleast_2d(np.asarray(components, dtype=np.float64)))
    return (a @ m.T / (m @ norm)).mean(axis=1)


def corners_and_centre(box) -> np.ndarray:
    """The ``2^n + 1`` shifts of a box ``(n, 2)``'s corners and centre: a pool's components that span it.

    >>> corners_and_centre([[-1.0, 1.0], [0.0, 2.0]]).tolist()
    [[-1.0, 0.0], [-1.0, 2.0], [1.0, 0.0], [1.0, 2.0], [0.0, 1.0]]
    """
    b = np.asarray(box, dtype=np.float64)
    return np.concatenate([_grid(b, 2), b.mean(axis=1)[None]])


def _grid(box: np.ndarray, per_axis: int = 5, max_points: int = 4096) -> np.ndarray:
    """Shifts spanning ``box``: a full grid of ``per_axis`` per axis while it has at most ``max_points`` points,
    else the corners and ``max_points`` seeded uniform points."""
    n = box.shape[0]
    if per_axis ** n <= max_points:
        axes = [np.linspace(lo, hi, per_axis) for lo, hi in box]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, n)
    corners = np.stack(np.meshgrid(*box, indexing="ij"), axis=-1).reshape(-1, n)
    inner = np.random.default_rng(0).uniform(box[:, 0], box[:, 1], (max_points, n))
    return np.concatenate([corners, inner])

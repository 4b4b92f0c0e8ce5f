"""The scan design: points as vectors of Wilson-coefficient shifts.

A :class:`Design` is the list of scan points of a dataset, one row of shifts per point, over named shift
columns (``dc9``, ``dc10``, ...; :data:`kernels.theory.SHIFT_COLUMNS`). δC9 alone is the one-column case.
Three ways to make one:

- :func:`grid`: the Cartesian product of one list of values per coefficient (the first varies slowest);
- :func:`space_filling`: ``n`` points in a box, from a scrambled Sobol sequence or a Latin hypercube,
  seeded, so that a 4D scan need not have 5^4 points;
- :func:`from_points`: explicit rows.

Every design is checked (:func:`check`): no coefficient twice, finite values, no point twice, and, for a
scan of several points, enough to identify every coefficient: at least ``n + 1`` points that span the n
dimensions (a coefficient held at one value is not scanned). A single point (test data at one shift
vector) is allowed. The same arguments and seed give the same points, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kernels.errors import ConfigError

__all__ = ["Design", "grid", "space_filling", "from_points", "check", "shift_column", "shift_columns"]

@dataclass(frozen=True)
class Design:
    """Scan points ``points`` (P, n) over the shift columns ``columns`` (n,), and how they were made (``spec``)."""

    columns: tuple[str, ...]
    points: np.ndarray
    spec: dict

    @property
    def coefficients(self) -> tuple[str, ...]:
        """The flavio names of the columns, in order (``dc9`` -> ``C9_bsmumu``)."""
        from kernels.theory import coefficient_for

        return tuple(coefficient_for(c) for c in self.columns)

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def rows(self) -> list[list[float]]:
        """The points as plain lists of floats (for JSON)."""
        return [[float(x) for x in row] for row in self.points]

    def shifts(self, i: int) -> dict[str, float]:
        """Point ``i`` as ``{column: value}``."""
        return {c: float(v) for c, v in zip(self.columns, self.points[i])}


def shift_column(name: str) -> str:
    """The shift column of a coefficient named by its column (``dc10``), flavio name (``C10_bsmumu``) or short
    name (``C10``).

    >>> [shift_column(n) for n in ("dc9", "C10_bsmumu", "C9p", "c10p")]
    ['dc9', 'dc10', 'dc9p', 'dc10p']
    """
    from kernels.theory import SHIFT_COLUMNS

    text = str(name).strip()
    if text in SHIFT_COLUMNS.values():
        return text
    if text in SHIFT_COLUMNS:
        return SHIFT_COLUMNS[text]
    for coeff, col in SHIFT_COLUMNS.items():
        if text.lower() in (coeff.lower(), coeff.split("_")[0].lower(), col):
            return col
    known = ", ".join(f"{c.split('_')[0]} ({s})" for c, s in SHIFT_COLUMNS.items())
    raise ConfigError(f"unknown Wilson coefficient {text!r}; known: {known}")


def shift_columns(names: Sequence[str]) -> tuple[str, ...]:
    """The shift columns of coefficients named in any way :func:`shift_column` reads; none twice, at least one.

    >>> shift_columns(["C9", "dc10"])
    ('dc9', 'dc10')
    """
    names = [str(n).strip() for n in names]
    cols, seen = [], {}
    for i, name in enumerate(names):
        col = shift_column(name)
        if col in seen:
            raise ConfigError(f"coefficient {col} is listed twice ({names[seen[col]]!r} and {name!r})")
        seen[col] = i
        cols.append(col)
    if not cols:
        raise ConfigError("no coefficient is named")
    return tuple(cols)


def check(design: Design) -> Design:
    """``design`` if it is usable (see the module docstring), else a one-line ConfigError naming the problem."""
    cols, pts = design.columns, design.points
    n = len(cols)
    if pts.ndim != 2 or pts.shape[1] != n:
        raise ConfigError(f"design points have shape {pts.shape}, expected (P, {n}) for {', '.join(cols)}")
    if pts.shape[0] == 0:
        raise ConfigError("the design has no scan point")
    if not np.isfinite(pts).all():
        i = int(np.flatnonzero(~np.isfinite(pts).all(axis=1))[0])
        raise ConfigError(f"design point {i} {pts[i].tolist()} is not finite")
    seen: dict = {}
    for i, row in enumerate(map(tuple, pts.tolist())):
        if row in seen:
            raise ConfigError(f"scan point {list(row)} appears twice (points {seen[row]} and {i}); the points must differ")
        seen[row] = i
    if n > 1 and pts.shape[0] > 1:  # one point is a point (test data), not a scan
        for j, c in enumerate(cols):
            if np.ptp(pts[:, j]) == 0:
                raise ConfigError(f"{c} takes one value ({pts[0, j]:g}) at every point: it is not scanned; "
                                  f"drop it or give it at least 2 values")
        rank = np.linalg.matrix_rank(pts - pts.mean(axis=0))
        if pts.shape[0] < n + 1 or rank < n:
            raise ConfigError(f"the design has {pts.shape[0]} points spanning {rank} dimension(s); "
                              f"{n} coefficients ({', '.join(cols)}) need at least {n + 1} points that span them")
    return design


def from_points(columns: Sequence[str], points) -> Design:
    """Explicit points: ``points`` is (P, n) for the ``columns`` (names as :func:`shift_column` reads them).

    >>> from_points(["dc9"], [[0.0], [1.0]]).rows()
    [[0.0], [1.0]]
    """
    cols = shift_columns(columns)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1 and len(cols) == 1:
        pts = pts[:, None]
    return check(Design(cols, pts, {"kind": "points"}))


def grid(axes: Mapping[str, Sequence[float]]) -> Design:
    """The Cartesian product of ``axes`` (``{name: values}``, in order; the first varies slowest).

    >>> grid({"dc9": [-1.0, 0.0], "dc10": [0.0, 1.0]}).rows()
    [[-1.0, 0.0], [-1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    """
    cols = shift_columns(list(axes))
    values = [np.asarray([float(v) for v in axes[name]], dtype=np.float64) for name in axes]
    for c, v in zip(cols, values):
        if v.size == 0:
            raise ConfigError(f"{c}: no value")
        if np.unique(v).size != v.size:
            raise ConfigError(f"{c}: a value appears twice in {v.tolist()}; the grid's values must differ")
    mesh = np.meshgrid(*values, indexing="ij")
    pts = np.stack([m.reshape(-1) for m in mesh], axis=-1)
    spec = {"kind": "grid", "axes": {c: v.tolist() for c, v in zip(cols, values)}}
    return check(Design(cols, pts, spec))


def space_filling(bounds: Mapping[str, tuple[float, float]], n: int, seed: int, method: str = "sobol") -> Design:
    """``n`` points in the box ``bounds`` (``{name: (lo, hi)}``) from a seeded, scrambled Sobol sequence
    (``sobol``) or a Latin hypercube (``lhs``: one point in each of ``n`` equal slices of every axis).

    >>> d = space_filling({"dc9": (-2.0, 1.0), "dc10": (-1.0, 1.0)}, 8, seed=3, method="lhs")
    >>> d.points.shape, bool((d.points[:, 0] >= -2).all() and (d.points[:, 0] <= 1).all())
    ((8, 2), True)
    >>> np.array_equal(d.points, space_filling({"dc9": (-2.0, 1.0), "dc10": (-1.0, 1.0)}, 8, 3, "lhs").points)
    True
    """
    if method not in ("sobol", "lhs"):
        raise ConfigError(f"unknown space-filling design {method!r}; expected sobol or lhs")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{method}: the number of points must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{method}: the seed must be a non-negative integer, got {seed!r}")
    cols = shift_columns(list(bounds))
    lo = np.empty(len(cols))
    hi = np.empty(len(cols))
    for j, (c, name) in enumerate(zip(cols, bounds)):
        b = tuple(bounds[name])
        if len(b) != 2 or not all(np.isfinite(b)) or not b[0] < b[1]:
            raise ConfigError(f"{c}: the bounds must be LO:HI with LO < HI, got {list(b)}")
        lo[j], hi[j] = b
    rng = np.random.default_rng([int(seed), 0x5EED])
    d = len(cols)
    if method == "lhs":
        u = (np.stack([rng.permutation(n) for _ in range(d)], axis=-1) + rng.random((n, d))) / n
    else:
        import warnings

        from scipy.stats import qmc

        with warnings.catch_warnings():  # n need not be a power of 2: the balance of a partial sequence is fine here
            warnings.simplefilter("ignore", UserWarning)
            u = qmc.Sobol(d, scramble=True, seed=rng).random(n)
    pts = lo + u * (hi - lo)
    spec = {"kind": method, "n": int(n), "seed": int(seed),
            "bounds": {c: [float(a), float(b)] for c, a, b in zip(cols, lo, hi)}}
    return check(Design(cols, pts, spec))

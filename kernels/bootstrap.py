r"""Sets of events per label: indices into a point's training pool, background mixing, test sets.

A *set* is what an estimator sees at once: ``set_size`` events of one scan
point (label). Training sets are drawn from the point's stored pool by index;
evaluation sets are never drawn from that pool (``physics.md``, "Metrics") but
sampled fresh by :func:`test_sets`.

Index sets (:func:`set_indices`)
--------------------------------

- ``replace=True`` (bootstrap): every entry is an independent uniform draw
  from ``[0, pool_size)``; repeats within and across sets are allowed.
- ``replace=False``: **no repeats within a set**, ever (``set_size <=
  pool_size`` is required). **Across sets the sets are disjoint when they fit**
  (``n_sets * set_size <= pool_size``): one permutation of the pool, cut into
  consecutive blocks. When they do not fit, ``disjoint=None`` (the default)
  draws each set independently without replacement (sets may overlap each
  other), and ``disjoint=True`` refuses with a one-line ConfigError naming
  the counts. ``disjoint=False`` always draws the sets independently.

Background mixing (:func:`mixed_set_indices`)
---------------------------------------------

Each set holds signal events from the signal pool and background events from
the background pool. With ``fixed_fraction=True`` every set has exactly
``k = round(bkg_fraction * set_size)`` background events (Python's ``round``,
as :func:`kernels.detector.sample_level` does for ``det_bkg`` samples):
``sig_idx`` has shape ``(n_sets, set_size - k)`` and ``bkg_idx`` ``(n_sets,
k)``. With ``fixed_fraction=False`` set ``s`` has ``K_s ~ Binomial(set_size,
bkg_fraction)`` background events; both arrays then have shape ``(n_sets,
set_size)``, row ``s`` of ``sig_idx`` holds ``set_size - K_s`` indices followed
by :data:`PAD` (-1) and row ``s`` of ``bkg_idx`` ``K_s`` indices followed by
:data:`PAD`. :func:`gather_sets` refuses padded indices; :func:`gather_mixed`
handles both layouts. Within and across sets the rules of :func:`set_indices`
apply to each pool separately (disjointness is judged on the total number of
signal, resp. background, events drawn).

Seed streams
------------

Every random draw is a PCG64 stream seeded by a :class:`numpy.random.SeedSequence`
of integer entropy, so the output depends on that entropy and nothing else.
The streams of one scan with master seed ``seed``, at point ``p``:

=====================================  ==========================================
entropy                                what
=====================================  ==========================================
``(seed, p, c)``                       generator chunk ``c`` of the event dataset
                                       (``orchestrator.generate.dataset``), c < 10**6
``(seed, p, 10**6 + k)``               test image ``k`` (``orchestrator.build.images``)
``(seed, p, split, 10**6 + k)``        streamed image ``k`` of a split
``(seed, p, 2 * 10**6 + k)``           evaluation set ``k`` (:func:`test_sets`)
``(seed, p, 3 * 10**6 + stream)``      index draws (:func:`index_seed`): which
                                       pool events form which training set
=====================================  ==========================================

At ``det`` and ``det_bkg`` levels :func:`kernels.detector.sample_level`
extends the given entropy with further entries (acceptance, resolution,
background), so the streams stay apart there too. numpy's ``SeedSequence``
ignores trailing zeros of the entropy, so every stream ends in a non-zero
offset: ``(seed, p, 0)`` and ``(seed, p)`` would be the same stream. The
streams are disjoint as long as a point has fewer than 10**6 generator chunks
and fewer than 10**6 test images.

>>> set_indices(10, 3, 2, rng_seed=(1, 0, INDEX_SEED_OFFSET), replace=False).shape
(2, 3)
>>> sig, bkg = mixed_set_indices(100, 100, 25, 4, 0.44, seed=7, replace=False)
>>> sig.shape, bkg.shape
((4, 14), (4, 11))

numpy only (the evaluation sets go through :mod:`kernels.detector`): no Ray,
no torch, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from kernels.errors import ConfigError

__all__ = [
    "PAD",
    "TEST_SET_SEED_OFFSET",
    "INDEX_SEED_OFFSET",
    "index_seed",
    "test_set_seed",
    "set_indices",
    "MixedSets",
    "mixed_set_indices",
    "gather_sets",
    "gather_mixed",
    "EvalSets",
    "test_sets",
]

#: Index of an empty slot in the padded arrays of ``mixed_set_indices(fixed_fraction=False)``.
PAD = -1
#: Offset of the set index in evaluation-set seeds: ``(seed, point, 2 * 10**6 + k)``.
TEST_SET_SEED_OFFSET = 2 * 10**6
#: Offset of the stream id in index-draw seeds: ``(seed, point, 3 * 10**6 + stream)``.
INDEX_SEED_OFFSET = 3 * 10**6

_N_COLUMNS = 4


# --- seeds ------------------------------------------------------------------------


def _entropy(seed, name: str = "seed") -> list[int]:
    """Seed entropy as a list of non-negative ints (an int, or a sequence of ints)."""
    items = np.atleast_1d(np.asarray(seed, dtype=object)).ravel().tolist()
    out = []
    for s in items:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ConfigError(f"{name} must be a non-negative integer or a sequence of them, got {seed!r}")
        out.append(int(s))
    if not out:
        raise ConfigError(f"{name} must not be empty")
    return out


def _rng(seed) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_entropy(seed))))


def index_seed(seed: int, point: int, stream: int = 0) -> tuple[int, int, int]:
    """Entropy of the index draws of ``point``: ``(seed, point, 3 * 10**6 + stream)``.

    Use one ``stream`` per purpose (e.g. 0 for training sets, 1 for validation
    sets) so their draws are independent.

    >>> index_seed(5, 2, 1)
    (5, 2, 3000001)
    """
    return (*_entropy([seed, point]), INDEX_SEED_OFFSET + _count(stream, "stream", 0))


def test_set_seed(seed: int, point: int, k: int) -> tuple[int, int, int]:
    """Entropy of evaluation set ``k`` of ``point``: ``(seed, point, 2 * 10**6 + k)``.

    >>> test_set_seed(1, 3, 0)
    (1, 3, 2000000)
    """
    return (*_entropy([seed, point]), TEST_SET_SEED_OFFSET + _count(k, "k", 0))


test_set_seed.__test__ = False  # not a pytest test, despite its name


def _count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --- index sets -------------------------------------------------------------------


def _draw(
    pool_size: int,
    counts: np.ndarray,
    width: int,
    rng: np.random.Generator,
    replace: bool,
    disjoint: bool | None,
    what: str,
) -> np.ndarray:
    """Row s holds ``counts[s]`` indices into ``[0, pool_size)`` then PAD; shape (len(counts), width)."""
    n_sets = counts.size
    out = np.full((n_sets, width), PAD, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return out
    filled = np.arange(width)[None, :] < counts[:, None]  # row-major: row s, first counts[s] slots
    if replace:
        if pool_size < 1:
            raise ConfigError(f"the {what} pool is empty; {total} events requested")
        out[filled] = rng.integers(0, pool_size, size=total, dtype=np.int64)
        return out
    biggest = int(counts.max())
    if biggest > pool_size:
        raise ConfigError(
            f"a set of {biggest} {what} events without replacement needs a pool of at least {biggest}, "
            f"the pool has {pool_size}"
        )
    fits = total <= pool_size
    if disjoint is True and not fits:
        raise ConfigError(
            f"{n_sets} disjoint sets need {total} {what} events, the pool has {pool_size}; "
            "use fewer or smaller sets, replace=True, or allow overlapping sets (disjoint=None)"
        )
    if fits and disjoint is not False:
        perm = rng.permutation(pool_size)[:total]
        out[filled] = perm  # consecutive blocks of one permutation: disjoint sets
        return out
    for s in range(n_sets):  # independent sets, each without repeats
        c = int(counts[s])
        if c:
            out[s, :c] = rng.choice(pool_size, size=c, replace=False)
    return out


def set_indices(
    pool_size: int,
    set_size: int,
    n_sets: int,
    rng_seed,
    replace: bool,
    *,
    disjoint: bool | None = None,
) -> np.ndarray:
    """Indices of ``n_sets`` sets of ``set_size`` events from a pool of ``pool_size``: (n_sets, set_size) int64.

    ``replace=True`` is the bootstrap (independent uniform draws). With
    ``replace=False`` no set repeats an event, and the sets are disjoint when
    ``n_sets * set_size <= pool_size``; otherwise ``disjoint`` decides: None
    (default) draws overlapping sets, True refuses, False always draws the
    sets independently. ``rng_seed`` is seed entropy (an int or a sequence of
    ints, e.g. :func:`index_seed`); the same entropy gives the same indices.

    >>> idx = set_indices(8, 4, 2, rng_seed=3, replace=False)
    >>> sorted(idx.ravel().tolist())
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    pool_size = _count(pool_size, "pool_size", 0)
    set_size = _count(set_size, "set_size")
    n_sets = _count(n_sets, "n_sets")
    counts = np.full(n_sets, set_size, dtype=np.int64)
    return _draw(pool_size, counts, set_size, _rng(rng_seed), bool(replace), disjoint, "pool")


class MixedSets(NamedTuple):
    """Indices of mixed sets: ``sig_idx`` into the signal pool, ``bkg_idx`` into the background pool.

    Unpacks as ``sig_idx, bkg_idx``. Padded with :data:`PAD` where sets differ
    in composition (``fixed_fraction=False``).
    """

    sig_idx: np.ndarray
    bkg_idx: np.ndarray

    @property
    def n_background(self) -> np.ndarray:
        """Background events per set, shape (n_sets,)."""
        return np.count_nonzero(self.bkg_idx != PAD, axis=1)


def mixed_set_indices(
    signal_pool_size: int,
    background_pool_size: int,
    set_size: int,
    n_sets: int,
    bkg_fraction: float,
    seed,
    replace: bool,
    *,
    fixed_fraction: bool = True,
    disjoint: bool | None = None,
) -> MixedSets:
    """Signal and background indices of ``n_sets`` sets of ``set_size`` events.

    ``fixed_fraction=True``: every set has exactly ``round(bkg_fraction *
    set_size)`` background events; ``sig_idx`` is (n_sets, set_size - k) and
    ``bkg_idx`` (n_sets, k). ``fixed_fraction=False``: set s has
    ``Binomial(set_size, bkg_fraction)`` background events; both arrays are
    (n_sets, set_size), padded with :data:`PAD`. ``replace`` and ``disjoint``
    act on each pool as in :func:`set_indices`. ``seed`` is seed entropy; the
    composition, signal and background draws use independent child streams.

    >>> m = mixed_set_indices(50, 50, 10, 3, 0.3, seed=1, replace=True, fixed_fraction=False)
    >>> m.sig_idx.shape, m.bkg_idx.shape, bool(((m.sig_idx != PAD).sum(1) + m.n_background == 10).all())
    ((3, 10), (3, 10), True)
    """
    signal_pool_size = _count(signal_pool_size, "signal_pool_size", 0)
    background_pool_size = _count(background_pool_size, "background_pool_size", 0)
    set_size = _count(set_size, "set_size")
    n_sets = _count(n_sets, "n_sets")
    try:
        f = float(bkg_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"bkg_fraction must be a number in [0, 1], got {bkg_fraction!r}") from None
    if not 0.0 <= f <= 1.0:
        raise ConfigError(f"bkg_fraction must be in [0, 1], got {bkg_fraction!r}")
    comp, sig_ss, bkg_ss = np.random.SeedSequence(_entropy(seed)).spawn(3)
    if fixed_fraction:
        k = int(round(f * set_size))
        n_bkg = np.full(n_sets, k, dtype=np.int64)
        sig_w, bkg_w = set_size - k, k
    else:
        n_bkg = np.random.Generator(np.random.PCG64(comp)).binomial(set_size, f, size=n_sets).astype(np.int64)
        sig_w = bkg_w = set_size
    rng_sig = np.random.Generator(np.random.PCG64(sig_ss))
    rng_bkg = np.random.Generator(np.random.PCG64(bkg_ss))
    sig = _draw(signal_pool_size, set_size - n_bkg, sig_w, rng_sig, bool(replace), disjoint, "signal")
    bkg = _draw(background_pool_size, n_bkg, bkg_w, rng_bkg, bool(replace), disjoint, "background")
    return MixedSets(sig, bkg)


# --- gathering --------------------------------------------------------------------


def _as_columns(columns) -> np.ndarray:
    """(4, N) view of events given as (4, N), (N, 4) or a table with :data:`kernels.event_store.COLUMNS`.

    A (4, 4) array is read as (4, N), the sampler's layout.
    """
    if hasattr(columns, "column") and hasattr(columns, "num_rows"):  # an Arrow table
        from kernels.event_store import COLUMNS

        return np.stack([np.asarray(columns.column(c).to_numpy()) for c in COLUMNS])
    arr = np.asarray(columns)
    if arr.ndim != 2 or _N_COLUMNS not in arr.shape:
        raise ConfigError(f"events must have shape (4, N) or (N, 4), got {arr.shape}")
    return arr if arr.shape[0] == _N_COLUMNS else arr.T


def _check_idx(idx, pool_size: int, what: str = "pool") -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"indices must be an integer array of shape (n_sets, set_size), got {idx.dtype} {idx.shape}")
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= pool_size:
            bad = lo if lo < 0 else hi
            hint = " (PAD: gather mixed sets with gather_mixed)" if bad == PAD else ""
            raise IndexError(f"index {bad} is outside the {what} of {pool_size} events{hint}")
    return idx


def gather_sets(columns, idx, dtype=None) -> np.ndarray:
    """Events of each set: ``(n_sets, set_size, 4)`` from events (4, N) or (N, 4) and ``idx`` (n_sets, set_size).

    Vectorised (one fancy-indexing pass per column); ``dtype`` defaults to the
    events' own. Indices outside ``[0, N)`` (including :data:`PAD`) are an IndexError.

    >>> ev = np.arange(12.0).reshape(4, 3)  # 3 events, columns first
    >>> gather_sets(ev, np.array([[2, 0]]))[0].tolist()
    [[2.0, 5.0, 8.0, 11.0], [0.0, 3.0, 6.0, 9.0]]
    """
    cols = _as_columns(columns)
    idx = _check_idx(idx, cols.shape[1])
    out = np.empty((*idx.shape, _N_COLUMNS), dtype=dtype or cols.dtype)
    for i in range(_N_COLUMNS):
        out[..., i] = cols[i][idx]
    return out


def gather_mixed(signal_columns, background_columns, mixed: MixedSets, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(events (n_sets, set_size, 4), is_signal (n_sets, set_size))`` of mixed sets.

    Each set lists its signal events first, then its background events
    (estimators of sets are invariant under order; shuffle if yours is not).
    """
    sig_cols = _as_columns(signal_columns)
    bkg_cols = _as_columns(background_columns)
    sig_idx, bkg_idx = (np.asarray(a) for a in mixed)
    if sig_idx.ndim != 2 or bkg_idx.shape[0] != sig_idx.shape[0]:
        raise ConfigError(f"mixed indices disagree in shape: {sig_idx.shape} and {bkg_idx.shape}")
    sig_ok, bkg_ok = sig_idx != PAD, bkg_idx != PAD
    n_sig, n_bkg = sig_ok.sum(axis=1), bkg_ok.sum(axis=1)
    sizes = n_sig + n_bkg
    if sizes.size and not np.all(sizes == sizes[0]):
        raise ConfigError("mixed sets differ in size")
    set_size = int(sizes[0]) if sizes.size else 0
    _check_idx(np.where(sig_ok, sig_idx, 0), sig_cols.shape[1], "signal pool")
    _check_idx(np.where(bkg_ok, bkg_idx, 0), bkg_cols.shape[1], "background pool")
    n_sets = sig_idx.shape[0]
    out = np.empty((n_sets, set_size, _N_COLUMNS), dtype=dtype or np.result_type(sig_cols.dtype, bkg_cols.dtype))
    slot = np.arange(set_size)[None, :]
    is_signal = slot < n_sig[:, None]
    # Valid entries are left-aligned in each row, so their row-major order matches the slots'.
    rows_s, rows_b = np.nonzero(is_signal), np.nonzero(~is_signal)
    for i in range(_N_COLUMNS):
        out[..., i][rows_s] = sig_cols[i][sig_idx[sig_ok]]
        out[..., i][rows_b] = bkg_cols[i][bkg_idx[bkg_ok]]
    return out, is_signal


# --- evaluation sets --------------------------------------------------------------


class EvalSets(NamedTuple):
    """Evaluation sets of one point: events (n_sets, set_size, 4) float32; ``is_signal`` at det_bkg, else None."""

    events: np.ndarray
    is_signal: np.ndarray | None


def test_sets(
    table: Any,
    shifts: Sequence[float],
    set_size: int,
    n_sets: int,
    seed: int,
    level: str = "gen",
    detector: Any = None,
    *,
    point: int,
    worlds: Sequence[Any] | None = None,
) -> EvalSets:
    """``n_sets`` evaluation sets of ``set_size`` fresh MC events at ``shifts`` (never from a training pool).

    Set ``k`` is ``kernels.detector.sample_level(table, shifts, set_size,
    seed=(seed, point, 2 * 10**6 + k), level, detector)``: a stream of its own
    (see the module docstring), so it shares no event with the generator's
    chunks ``(seed, point, c)`` or the test images ``(seed, point, 10**6 + k)``.
    ``point`` is the scan point's index in the dataset, and must be given.
    ``worlds``: one theory table per set (the world its nuisances were drawn in,
    :meth:`kernels.nuisances.NuisanceTable.at`); default ``table`` for every set.
    """
    from kernels.detector import sample_level
    from kernels.event_store import COLUMNS

    set_size = _count(set_size, "set_size")
    n_sets = _count(n_sets, "n_sets")
    if not all(math.isfinite(float(v)) for v in np.atleast_1d(shifts)):
        raise ConfigError(f"shifts must be finite, got {shifts!r}")
    events = np.empty((n_sets, set_size, _N_COLUMNS), dtype=np.float32)
    flags = np.empty((n_sets, set_size), dtype=bool) if level == "det_bkg" else None
    for k in range(n_sets):
        world = table if worlds is None else worlds[k]
        t = sample_level(world, shifts, set_size, test_set_seed(seed, point, k), level, detector)
        if t.num_rows != set_size:
            raise RuntimeError(f"sample_level returned {t.num_rows} events, expected {set_size}")
        for i, c in enumerate(COLUMNS):
            events[k, :, i] = t.column(c).to_numpy()
        if flags is not None:
            flags[k] = t.column("is_signal").to_numpy(zero_copy_only=False)
    return EvalSets(events, flags)


test_sets.__test__ = False  # not a pytest test, despite its name

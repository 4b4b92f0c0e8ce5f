r"""Voxel images of events: mean q2 and occupancy on a 3D grid of the decay angles.

The seed study's "quasi-image" bins events in (cos_theta_mu, cos_theta_k, chi)
and takes the mean q2 of the events in each voxel. An image here has two
channels, shape ``(2, B, B, B)`` float32, axes ``(channel, cos_theta_mu,
cos_theta_k, chi)``:

- channel 0, ``q2_mean``: the mean q2 of the events in the voxel (a float64 sum,
  divided by the count in float32: within 1 float32 ulp of the exact mean). An empty voxel
  has no mean: it holds ``fill``, NaN by default, so it can never be mistaken
  for a voxel with mean q2 = 0. A model that cannot take NaN uses ``fill=0``
  and reads the occupancy channel to tell empty voxels apart.
- channel 1, ``occupancy``: the number of events in the voxel, as float32 (an
  exact integer up to 2**24 events per voxel). It is the raw count, not a
  fraction: divide by the events per image (recorded in an image dataset's
  manifest) for a density.

Binning. ``B`` equal bins over cos in [-1, 1] and chi in [0, 2 pi]. Bins are
half-open, ``[e_i, e_{i+1})`` with ``e_i = lo + i (hi - lo) / B``, except the
last, which is closed: ``cos = 1`` and ``chi = 2 pi`` land in bin ``B - 1``, and
so does float32 ``2 pi`` (which rounds above 2 pi, and which
:func:`kernels.event_store.validate_events` accepts). The index is computed in
float64 from the event's own value, which is exact for cos (``x * B / 2`` is
exact for a float32 x, and ``floor`` is exact) and exact for chi except within
1e-15 relative of an (irrational) edge ``2 pi k / B``, where no float32 lies for
the bin counts that matter (the tests check every edge for B <= 128). So an
event exactly on an interior edge goes to the bin above it, and the float32
value just below an edge goes to the bin below, as a float64 reference (or
``scipy.stats.binned_statistic_dd``) says.

Algorithm. Each event gets ONE flat integer index,
``image * B**3 + ix * B**2 + iy * B + iz``, and two ``np.bincount`` calls give
the occupancy and the q2 sum of every voxel of every image. The indices are
built in cache-sized chunks of float64 work buffers, and images are grouped so
that a group's ``bincount`` output (about 1 MiB per channel) stays in L2.
:func:`kernels.voxels_polars.voxelize_polars` is the same computation as a Polars group-by on the
flat voxel index (the design's stated method); it is kept as a cross-check and
for the benchmark, and is several times slower.

Example:

>>> import numpy as np
>>> f32 = lambda *v: np.array(v, dtype=np.float32)
>>> img = voxelize(f32(-1, 1, 1), f32(0, 0.99, 0.99), f32(0, 2 * np.pi, 6), f32(2, 3, 5), bins=2)
>>> img.shape
(1, 2, 2, 2, 2)
>>> img[0, 1, 1, 1, 1], img[0, 0, 1, 1, 1]    # two events in the last voxel, mean q2 4
(np.float32(2.0), np.float32(4.0))
>>> bool(np.isnan(img[0, 0, 0, 0, 0])), img[0, 0, 0, 1, 0]   # empty voxel: NaN
(True, np.float32(2.0))

Pure numpy (the Polars version lives in :mod:`kernels.voxels_polars`): no
Ray, no torch, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from kernels.errors import ConfigError, DatasetError

__all__ = [
    "AXES",
    "CHANNELS",
    "Q2_MEAN",
    "OCCUPANCY",
    "RANGES",
    "SEED_BINS",
    "SEED_EVENTS_PER_IMAGE",
    "MAX_BINS",
    "bin_index",
    "voxelize",
    "make_images",
    "event_arrays",
]

#: Image axes after the channel axis, in order.
AXES: tuple[str, ...] = ("cos_theta_mu", "cos_theta_k", "chi")
#: Channel names, in order: mean q2 per voxel, then the event count per voxel.
CHANNELS: tuple[str, ...] = ("q2_mean", "occupancy")
Q2_MEAN, OCCUPANCY = 0, 1
#: Binned range of each axis (the last bin is closed at the upper end).
RANGES: dict[str, tuple[float, float]] = {
    "cos_theta_mu": (-1.0, 1.0),
    "cos_theta_k": (-1.0, 1.0),
    "chi": (0.0, 2.0 * math.pi),
}
#: The seed study: 50 bins per angle, about 24,000 events per image.
SEED_BINS = 50
SEED_EVENTS_PER_IMAGE = 24_000
#: Largest bin count accepted (512**3 voxels is 1 GiB per image and channel).
MAX_BINS = 512

# Events per chunk of the index computation: 4 float64 work buffers of this
# length (512 KiB) stay in L2 and amortise numpy's per-call overhead.
_CHUNK = 1 << 14
# Voxels per bincount group: the counts and sums of a group (2 x 1 MiB) fit in L2.
_GROUP_VOXELS = 1 << 17
# Most events indexed at once (8 bytes each); larger images are accumulated.
_MAX_INDEXED = 1 << 22


# --- checks ----------------------------------------------------------------------


def check_bins(bins, name: str = "bins") -> int:
    """The one rule for a bin count: an integer in [1, MAX_BINS]."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= MAX_BINS:
        raise ConfigError(f"{name} must be an integer in [1, {MAX_BINS}], got {bins!r}")
    return int(bins)


def _check_count(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_column(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise DatasetError(f"{name}: expected a 1-D array of events, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DatasetError(f"{name}: expected floating point values, got dtype {arr.dtype}")
    return arr


def _check_values(arr: np.ndarray, name: str, lo: float | None, hi: float | None) -> None:
    """Finite and inside [lo, hi] (bounds in the array's own precision); one-line DatasetError."""
    if arr.size == 0:
        return
    amin, amax = arr.min(), arr.max()  # NaN propagates, so one pair of reductions covers both checks
    ok = bool(np.isfinite(amin) and np.isfinite(amax))
    if ok and lo is not None:
        ok = bool(amin >= np.asarray(lo, arr.dtype) and amax <= np.asarray(hi, arr.dtype))
    if ok:
        return
    finite = np.isfinite(arr)
    problems = []
    n_bad = arr.size - int(np.count_nonzero(finite))
    if n_bad:
        problems.append(f"{n_bad} non-finite value(s)")
    if lo is not None:
        lo_c, hi_c = np.asarray(lo, arr.dtype), np.asarray(hi, arr.dtype)
        n_out = int(np.count_nonzero(finite & ((arr < lo_c) | (arr > hi_c))))
        if n_out:
            label = "[-1, 1]" if lo == -1.0 else "[0, 2 pi]"
            problems.append(f"{n_out} value(s) outside {label}")
    raise DatasetError(f"cannot voxelize: column {name!r} has " + " and ".join(problems))


def _columns(cos_l, cos_k, chi, q2) -> tuple[np.ndarray, ...]:
    cols = tuple(
        _as_column(a, name) for a, name in zip((cos_l, cos_k, chi, q2), (*AXES, "q2"))
    )
    n = cols[0].shape[0]
    if any(c.shape[0] != n for c in cols):
        raise DatasetError(
            "cannot voxelize: columns differ in length "
            f"({', '.join(f'{name}={c.shape[0]}' for name, c in zip((*AXES, 'q2'), cols))})"
        )
    for c, name in zip(cols, (*AXES, "q2")):
        lo, hi = RANGES.get(name, (None, None))
        _check_values(c, name, lo, hi)
    return cols


def _check_out(out, n_images: int, bins: int) -> np.ndarray:
    shape = (n_images, 2, bins, bins, bins)
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ConfigError(
            f"out must be a C-contiguous float32 array of shape {shape}, "
            f"got {out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}"
        )
    if not out.flags.writeable:
        raise ConfigError("out is read-only")
    return out


# --- the binning ---------------------------------------------------------------


def _cos_constants(bins: int) -> tuple[float, float, float]:
    """(scale, pre, post) with bin = min(floor(x * scale + pre), B - 1 - post) + post.

    For even B the edge at 0 makes ``floor(x * B/2) + B/2`` the exact form (adding
    B/2 before the floor would round a tiny negative x up onto the edge); for
    odd B, ``floor(x * B/2 + B/2)`` is exact because no edge lies near 0.
    """
    half = bins / 2
    return (half, 0.0, half) if bins % 2 == 0 else (half, half, 0.0)


def _chunk_index(cl, ck, chi, bins: int, out: np.ndarray, w: np.ndarray) -> None:
    """Flat in-image voxel index ``ix * B^2 + iy * B + iz`` of one chunk, into ``out`` (intp).

    ``w`` is a (3, >= len) float64 work buffer. Every step writes in place.
    """
    m = out.shape[0]
    fx, fy, fz = w[0, :m], w[1, :m], w[2, :m]
    scale, pre, post = _cos_constants(bins)
    for x, f in ((cl, fx), (ck, fy)):
        np.multiply(x, scale, out=f, dtype=np.float64)
        if pre:
            np.add(f, pre, out=f)
        np.floor(f, out=f)
        np.minimum(f, bins - 1 - post, out=f)
    np.multiply(chi, bins / (2.0 * math.pi), out=fz, dtype=np.float64)
    np.floor(fz, out=fz)
    np.minimum(fz, bins - 1, out=fz)
    # ((ix * B) + iy) * B + iz, plus the even-B offsets post * (B^2 + B); exact in float64.
    np.multiply(fx, bins, out=fx)
    np.add(fx, fy, out=fx)
    np.multiply(fx, bins, out=fx)
    np.add(fx, fz, out=fx)
    if post:
        np.add(fx, post * (bins * bins + bins), out=fx)
    np.copyto(out, fx, casting="unsafe")


def _index(cl, ck, chi, bins: int, out: np.ndarray | None = None) -> np.ndarray:
    """Flat in-image voxel index of every event, built chunk by chunk."""
    n = cl.shape[0]
    if out is None:
        out = np.empty(n, dtype=np.intp)
    w = np.empty((3, min(n, _CHUNK)), dtype=np.float64)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        _chunk_index(cl[s:e], ck[s:e], chi[s:e], bins, out[s:e], w)
    return out


def bin_index(cos_l, cos_k, chi, bins: int) -> np.ndarray:
    """Per event, the bin of each axis: an int array of shape (3, n) (ix, iy, iz).

    The same arithmetic as :func:`voxelize`, unflattened; for inspection and tests.

    >>> bin_index([-1.0, 0.0, 1.0], [0.5, 0.5, 0.5], [0.0, 3.5, 2 * math.pi], 4).tolist()
    [[0, 2, 3], [3, 3, 3], [0, 2, 3]]
    """
    bins = check_bins(bins)
    cl, ck, ch, _ = _columns(cos_l, cos_k, chi, np.zeros(np.shape(cos_l)))
    flat = _index(cl, ck, ch, bins)
    return np.stack(np.unravel_index(flat, (bins, bins, bins)))


# --- voxelisation --------------------------------------------------------------


def _finish(counts: np.ndarray, sums: np.ndarray, out: np.ndarray, fill: float) -> None:
    """Write counts and mean q2 of ``k`` images into ``out`` viewed as (k, 2, V).

    The division is done in float32 on the output (the count is exact there, the
    float64 sum is rounded once): the mean is within 1 float32 ulp of the exact
    mean, and this is 2x faster than dividing in float64 and casting.
    """
    k = out.shape[0]
    o = out.reshape(k, 2, -1)
    mean, occ = o[:, Q2_MEAN], o[:, OCCUPANCY]
    occ[...] = counts.reshape(k, -1)
    mean[...] = sums.reshape(k, -1)
    if fill == 0.0:
        # An empty voxel has sum 0: dividing by max(count, 1) leaves exactly 0 there.
        np.divide(mean, np.maximum(occ, np.float32(1)), out=mean)
        return
    with np.errstate(invalid="ignore"):  # 0 / 0 = NaN marks the empty voxels
        np.divide(mean, occ, out=mean)
    if not math.isnan(fill):
        np.copyto(mean, np.float32(fill), where=occ == 0)


def _bincounts(idx: np.ndarray, q2: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(idx, minlength=length), np.bincount(idx, weights=q2, minlength=length)


def _voxelize_blocks(cl, ck, chi, q2, bins: int, n_images: int, out: np.ndarray, fill: float) -> None:
    """Images of consecutive equal blocks of events, a cache-sized group of images at a time."""
    V = bins**3
    m = cl.shape[0] // n_images
    group = max(1, min(_GROUP_VOXELS // V, _MAX_INDEXED // max(m, 1), n_images))
    idx_buf = np.empty(min(group * m, _MAX_INDEXED), dtype=np.intp)
    offsets = (np.arange(group, dtype=np.intp) * V)[:, None]
    for g0 in range(0, n_images, group):
        g = min(group, n_images - g0)
        s, e = g0 * m, (g0 + g) * m
        if e - s <= idx_buf.shape[0]:
            idx = _index(cl[s:e], ck[s:e], chi[s:e], bins, idx_buf[: e - s])
            if g > 1:
                idx.reshape(g, m)[...] += offsets[:g]
            counts, sums = _bincounts(idx, q2[s:e], g * V)
        else:  # one image larger than _MAX_INDEXED events: accumulate its sub-blocks
            counts = np.zeros(V, dtype=np.intp)
            sums = np.zeros(V, dtype=np.float64)
            for a in range(s, e, _MAX_INDEXED):
                b = min(e, a + _MAX_INDEXED)
                idx = _index(cl[a:b], ck[a:b], chi[a:b], bins, idx_buf[: b - a])
                c, w = _bincounts(idx, q2[a:b], V)
                counts += c
                sums += w
        _finish(counts, sums, out[g0 : g0 + g], fill)


def _check_image_id(image_id, n: int, n_images: int) -> np.ndarray:
    ids = np.asarray(image_id)
    if ids.shape != (n,):
        raise ConfigError(f"image_id must have one entry per event ({n}), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(f"image_id must hold integers, got dtype {ids.dtype}")
    if n and (ids.min() < 0 or ids.max() >= n_images):
        raise ConfigError(
            f"image_id must lie in [0, {n_images - 1}] (n_images={n_images}), "
            f"got values in [{ids.min()}, {ids.max()}]"
        )
    return ids


def _split_blocks(n: int, n_images: int) -> None:
    if n_images == 0 and n:
        raise ConfigError(f"n_images=0 but {n} events were given")
    if n_images and n % n_images:
        raise ConfigError(
            f"{n} events do not split into {n_images} equal images; "
            "pass image_id or a multiple of n_images events"
        )


def voxelize(
    cos_l,
    cos_k,
    chi,
    q2,
    bins: int,
    image_id=None,
    n_images: int = 1,
    *,
    fill: float = math.nan,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel images of events: an array of shape ``(n_images, 2, B, B, B)``, float32.

    ``cos_l``, ``cos_k``, ``chi``, ``q2`` are 1-D floating arrays of equal length
    (``cos_theta_mu``, ``cos_theta_k``, ``chi``, ``q2``). With ``image_id=None``
    the events are cut into ``n_images`` consecutive blocks of equal size, one
    per image (the event count must be a multiple of ``n_images``); otherwise
    ``image_id[i]`` in ``[0, n_images)`` names the image of event ``i``.

    Channel 0 is the mean q2 per voxel, ``fill`` (NaN by default) where the
    voxel is empty; channel 1 is the occupancy (event count). ``out``, if given,
    is a C-contiguous float32 array of that shape to write into (e.g. a slice of
    a memory-mapped image file). Values outside the angular ranges, or
    non-finite values, are a one-line :class:`~kernels.errors.DatasetError`.

    >>> voxelize([0.1, 0.2], [0.1, 0.2], [1.0, 1.0], [2.0, 4.0], bins=1)[0, :, 0, 0, 0]
    array([3., 2.], dtype=float32)
    """
    bins = check_bins(bins)
    n_images = _check_count(n_images, "n_images")
    cl, ck, ch, q = _columns(cos_l, cos_k, chi, q2)
    n = cl.shape[0]
    fill = float(fill)
    if image_id is None:
        _split_blocks(n, n_images)
        out = _check_out(out, n_images, bins)
        if n_images:
            _voxelize_blocks(cl, ck, ch, q, bins, n_images, out, fill)
        return out
    ids = _check_image_id(image_id, n, n_images)
    out = _check_out(out, n_images, bins)
    V = bins**3
    idx = _index(cl, ck, ch, bins)
    idx += ids.astype(np.intp, copy=False) * V
    counts, sums = _bincounts(idx, q, n_images * V)
    _finish(counts, sums, out, fill)
    return out


# --- images from tables ------------------------------------------------------


def event_arrays(events) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(cos_theta_mu, cos_theta_k, chi, q2)`` as numpy arrays from events in any usual form.

    ``events`` is a pyarrow Table or RecordBatch, a Polars DataFrame, a mapping of
    column name to array, or a ``(4, n)`` array in
    :data:`kernels.event_store.COLUMNS` order (``q2, cos_theta_mu, cos_theta_k, chi``,
    as :func:`kernels.sampler.sample_array` returns). Arrow and numpy columns are
    not copied when they are contiguous.
    """
    names = (*AXES, "q2")
    if isinstance(events, np.ndarray):
        if events.ndim != 2 or events.shape[0] != 4:
            raise DatasetError(
                f"an event array must have shape (4, n) (q2, cos_theta_mu, cos_theta_k, chi), "
                f"got {events.shape}"
            )
        return events[1], events[2], events[3], events[0]
    if isinstance(events, Mapping):
        columns = list(events)
        get = events.__getitem__
    elif hasattr(events, "column_names"):  # pyarrow Table / RecordBatch
        columns = list(events.column_names)
        get = events.column
    elif hasattr(events, "get_column"):  # polars DataFrame
        columns = list(events.columns)
        get = events.get_column
    else:
        raise DatasetError(f"cannot read events from a {type(events).__name__}")
    missing = [c for c in names if c not in columns]
    if missing:
        raise DatasetError(
            f"events lack column(s) {', '.join(map(repr, missing))} (has: {', '.join(columns)})"
        )
    out = []
    for c in names:
        col = get(c)
        out.append(col.to_numpy() if hasattr(col, "to_numpy") else np.asarray(col))
    return tuple(out)


def _num_events(events) -> int:
    if isinstance(events, np.ndarray):
        return events.shape[1] if events.ndim == 2 else 0
    if hasattr(events, "num_rows"):
        return events.num_rows
    if hasattr(events, "height"):
        return events.height
    if isinstance(events, Mapping) and events:
        return len(next(iter(events.values())))
    return 0


def _head(events, n: int):
    """The first n events, without copying where the container allows it."""
    if isinstance(events, np.ndarray):
        return events[:, :n]
    if hasattr(events, "slice"):  # pyarrow and polars both slice(offset, length)
        return events.slice(0, n)
    return {k: np.asarray(v)[:n] for k, v in events.items()}


def make_images(
    events,
    bins: int,
    events_per_image: int,
    images: int,
    *,
    fill: float = math.nan,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``images`` images from consecutive disjoint blocks of ``events_per_image`` events.

    Image ``k`` holds events ``[k * events_per_image, (k + 1) * events_per_image)``
    of ``events`` (any form :func:`event_arrays` reads); events after the last
    block are not used. Too few events is a one-line DatasetError. Returns
    ``(images, 2, bins, bins, bins)`` float32, as :func:`voxelize`.

    >>> import numpy as np
    >>> ev = np.array([[2.0, 4.0, 6.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    >>> make_images(ev, bins=1, events_per_image=1, images=3)[:, 0].ravel().tolist()
    [2.0, 4.0, 6.0]
    """
    bins = check_bins(bins)
    events_per_image = _check_count(events_per_image, "events_per_image", 1)
    images = _check_count(images, "images")
    need = images * events_per_image
    have = _num_events(events)
    if have < need:
        raise DatasetError(
            f"{images} images x {events_per_image} events need {need} events, only {have} given"
        )
    cl, ck, chi, q2 = event_arrays(_head(events, need))
    return voxelize(cl, ck, chi, q2, bins, n_images=images, fill=fill, out=out)

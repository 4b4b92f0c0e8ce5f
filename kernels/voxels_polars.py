"""The Polars cross-check of :func:`kernels.voxels.voxelize`: the same images from a Polars group-by.

It exists to test the numpy kernel against an independent implementation
(and to time them side by side in ``wcscan bench images``); production code
calls :func:`kernels.voxels.voxelize`.
"""

from __future__ import annotations

import math

import numpy as np

from kernels.voxels import (
    OCCUPANCY,
    Q2_MEAN,
    _check_count,
    _check_image_id,
    _columns,
    _cos_constants,
    _split_blocks,
    check_bins,
)

__all__ = ["voxelize_polars"]


def voxelize_polars(
    cos_l, cos_k, chi, q2, bins: int, image_id=None, n_images: int = 1, *, fill: float = math.nan
) -> np.ndarray:
    """:func:`voxelize` as a Polars group-by: same arguments, same bins, same result.

    The bins are Polars expressions with the same float64 arithmetic as
    :func:`voxelize`; the events are grouped by their flat voxel index and
    aggregated with ``mean(q2)`` and ``len()``, and the groups are scattered into
    the dense images. The mean comes from Polars' own float64 summation, so it
    can differ from :func:`voxelize` in the last float32 bit.
    """
    import polars as pl

    bins = check_bins(bins)
    n_images = _check_count(n_images, "n_images")
    cl, ck, ch, q = _columns(cos_l, cos_k, chi, q2)
    n = cl.shape[0]
    if image_id is None:
        _split_blocks(n, n_images)
        ids = np.repeat(np.arange(n_images, dtype=np.int64), n // n_images if n_images else 0)
    else:
        ids = _check_image_id(image_id, n, n_images).astype(np.int64, copy=False)
    out = np.empty((n_images, 2, bins**3), dtype=np.float32)
    out[:, Q2_MEAN] = np.float32(fill)
    out[:, OCCUPANCY] = 0
    if n:
        scale, pre, post = _cos_constants(bins)

        def cos_bin(name: str) -> pl.Expr:
            f = pl.col(name).cast(pl.Float64) * scale + pre
            return f.floor().clip(upper_bound=bins - 1 - post) + post

        chi_bin = (pl.col("chi").cast(pl.Float64) * (bins / (2.0 * math.pi))).floor().clip(upper_bound=bins - 1)
        voxel = ((cos_bin("cl") * bins + cos_bin("ck")) * bins + chi_bin).cast(pl.Int64)
        frame = pl.DataFrame({"cl": cl, "ck": ck, "chi": ch, "q2": q, "image": ids})
        groups = (
            frame.lazy()
            .select(pl.col("image"), voxel.alias("voxel"), pl.col("q2").cast(pl.Float64))
            .group_by("image", "voxel")
            .agg(pl.col("q2").mean().alias("mean"), pl.len().alias("count"))
            .collect()
        )
        img = groups["image"].to_numpy()
        vox = groups["voxel"].to_numpy()
        out[img, Q2_MEAN, vox] = groups["mean"].to_numpy()
        out[img, OCCUPANCY, vox] = groups["count"].to_numpy()
    return out.reshape(n_images, 2, bins, bins, bins)

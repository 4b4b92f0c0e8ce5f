"""The voxel-image dataset on disk: one ``.npy`` file per split and point, and a manifest.

Layout, under the dataset root (e.g. ``out/images``)::

    <root>/manifest.json                 # written last: a root without one is incomplete
    <root>/split=train/point=000.npy     # float32, shape (n_images, 2, B, B, B)
    <root>/split=val/point=000.npy
    <root>/split=test/point=000.npy
    ...

Each file is a plain NumPy ``.npy`` array (channels and axes as in
:mod:`kernels.voxels`), written through :func:`numpy.lib.format.open_memmap`
under a temporary name in the same directory and moved into place with
``os.replace``, so a file is either absent or complete. Images are written
straight into the memory map, and :func:`open_images` maps a file read-only:
neither side ever holds a whole split in memory, and any image can be read
alone (``open_images(root, "train", 3)[k]``).

The manifest (see :func:`orchestrator.build.images.build_images` for what fills it)
records the bin count, events per image, channels, axes, dtype, image shape,
the fill value of empty voxels, per point and split the file, image count and
where its events came from, and the source (an event dataset's path and the
sha256 of its manifest, a user's events file, or the seeds of streamed MC).

Example:

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> with image_file(root, "train", 0, n_images=3, bins=4) as arr:
...     arr[:] = 1.0
>>> image_path(root, "train", 0).relative_to(root).as_posix()
'split=train/point=000.npy'
>>> _ = write_manifest(root, {"format": FORMAT, "points": [{"index": 0, "splits": {
...     "train": {"path": "split=train/point=000.npy", "images": 3}}}],
...     "bins": 4, "dtype": "float32", "image_shape": [2, 4, 4, 4]})
>>> images = open_images(root, "train", 0)
>>> images.shape, float(images[2].sum())
((3, 2, 4, 4, 4), 128.0)

Pure numpy: no Ray, no torch, no MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kernels.errors import ConfigError, DatasetError
from kernels.event_store import read_manifest, write_manifest
from kernels.files import atomic_path

__all__ = [
    "FORMAT",
    "SPLITS",
    "DTYPE",
    "image_path",
    "image_file",
    "write_manifest",
    "read_image_manifest",
    "split_entry",
    "open_images",
]

log = logging.getLogger(__name__)

#: Value of ``manifest["format"]`` for image datasets.
FORMAT = "wcscan-images/1"
#: The splits, in order: training and validation images share a source of
#: events (disjoint blocks of it); test images come from independent MC.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: dtype of every image file.
DTYPE = np.dtype(np.float32)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def image_path(root: str | os.PathLike, split: str, point: int) -> Path:
    """Path of one image file: ``root/split=<split>/point=<NNN>.npy``.

    >>> image_path("imgs", "val", 7).as_posix()
    'imgs/split=val/point=007.npy'
    """
    return Path(root) / f"split={_check_split(split)}" / f"point={int(point):03d}.npy"


@contextmanager
def image_file(
    root: str | os.PathLike, split: str, point: int, n_images: int, bins: int
) -> Iterator[np.memmap]:
    """A writable memory map of a new image file, moved into place on success.

    Yields a float32 ``np.memmap`` of shape ``(n_images, 2, bins, bins, bins)``
    backed by a temporary file in the destination directory. When the block
    ends without an exception the map is flushed and the file renamed to
    :func:`image_path` (atomically replacing any older file); on an exception
    the temporary file is removed and nothing appears.
    """
    path = image_path(root, split, point)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (int(n_images), 2, int(bins), int(bins), int(bins))
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=shape)
        try:
            yield arr
            arr.flush()
        finally:
            del arr
    log.debug("wrote %s %s", path, shape)


def read_image_manifest(root: str | os.PathLike) -> dict:
    """Read an image dataset's manifest; a missing one, or another format, is a DatasetError."""
    manifest = read_manifest(root)
    if manifest.get("format") != FORMAT:
        raise DatasetError(
            f"{root}: not a wcscan image dataset (format {manifest.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return manifest


def split_entry(manifest: Mapping, split: str, point: int) -> Mapping:
    """The manifest entry of one (split, point): ``{"path", "images", ...}``."""
    _check_split(split)
    for entry in manifest.get("points", ()):
        if entry.get("index") == point:
            splits = entry.get("splits", {})
            if split not in splits:
                raise DatasetError(f"point {point} has no {split!r} split in the manifest")
            return splits[split]
    known = [e.get("index") for e in manifest.get("points", ())]
    raise DatasetError(f"point {point} is not in the image manifest (points: {known})")


def open_images(
    root: str | os.PathLike, split: str, point: int, manifest: Mapping | None = None
) -> np.memmap:
    """The images of one split and point, memory-mapped read-only (``mmap_mode="r"``).

    Shape ``(n_images, 2, B, B, B)`` float32; nothing is read until indexed.
    The file must be the one the manifest lists, with the recorded shape.
    Pass ``manifest`` (from :func:`read_image_manifest`) to skip re-reading it.
    """
    root = Path(root)
    if manifest is None:
        manifest = read_image_manifest(root)
    entry = split_entry(manifest, split, point)
    path = root / entry["path"]
    if not path.is_file():
        raise DatasetError(f"{path}: image file listed in the manifest is missing")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read image file ({str(err).splitlines()[0]})") from None
    bins = manifest.get("bins")
    expected = (entry.get("images"), *manifest.get("image_shape", (2, bins, bins, bins)))
    if arr.dtype != DTYPE or arr.shape != tuple(expected):
        raise DatasetError(
            f"{path}: holds {arr.dtype} {arr.shape}, the manifest says {DTYPE} {tuple(expected)}"
        )
    return arr

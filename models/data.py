r"""Torch datasets over arrays: voxel images, sets of events, single events.

Every dataset here wraps arrays it is given (numpy arrays or memory maps such as
:func:`kernels.image_store.open_images` returns); none opens files by itself.
Items are ``(inputs..., target)`` tuples, which is what
:func:`models.training.train` expects: the model is called as
``model(*inputs)`` and the loss compares its output with ``target``.

- :class:`ImageDataset`: images ``(n, C, B, B, B)`` and one label per image;
  :func:`image_dataset` joins one such array per scan point.
- :class:`SetDataset`: sets drawn from a per-point pool of events by
  precomputed index arrays (e.g. ``kernels.bootstrap.set_indices``), one row of
  indices per set, so a set is never materialised before it is asked for.
  :func:`collate_sets` batches them: a plain stack when all sets in the batch have
  the same size, else padding plus a mask.
- :class:`EventDataset`: events ``(n, 4)`` and their class indices, for the
  event-by-event classifier, or (:meth:`EventDataset.from_joint`) events, their
  delta C9 and joint scores, for the score-regression head; an in-memory tensor dataset, so
  :func:`models.training.train` batches it by slicing, not item by item.

>>> import numpy as np
>>> pool = np.arange(40, dtype=np.float32).reshape(10, 4)
>>> ds = SetDataset([pool], [0.5], [np.array([[0, 1, 2], [3, 4, 5]])])
>>> x, y = ds[1]
>>> x.shape, float(y), x[0].tolist()
(torch.Size([3, 4]), 0.5, [12.0, 13.0, 14.0, 15.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, TensorDataset

from kernels.errors import ConfigError
from models.features import N_EVENT_VARIABLES, as_events

__all__ = ["PAD", "ImageDataset", "image_dataset", "collate_sets", "join_mixed_indices", "SetDataset", "EventDataset"]

#: An index entry that stands for no event (``kernels.bootstrap.PAD``).
PAD = -1


class ImageDataset(Dataset):
    """Images ``(n, C, B, B, B)`` (array or memory map, read lazily) with labels ``(n,)`` -> (image, label).

    Each item copies one image out of the array as a float32 tensor; NaN (empty
    voxels) is kept for the model's preprocessing to handle.
    """

    def __init__(self, images, labels) -> None:
        if getattr(images, "ndim", None) != 5:
            raise ConfigError(f"images must have shape (n, C, B, B, B), got {getattr(images, 'shape', None)}")
        lab = np.asarray(labels, dtype=np.float32).ravel()
        if lab.shape[0] != images.shape[0]:
            raise ConfigError(f"{images.shape[0]} images but {lab.shape[0]} labels")
        self.images = images
        self.labels = torch.from_numpy(lab)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.images[i], dtype=np.float32, copy=True))
        return img, self.labels[i]


def image_dataset(arrays: Sequence, labels: Sequence[float]) -> ConcatDataset:
    """One dataset over several image arrays (e.g. one per scan point), each with one label for all its images."""
    if len(arrays) != len(labels):
        raise ConfigError(f"{len(arrays)} image arrays but {len(labels)} labels")
    if not arrays:
        raise ConfigError("no image arrays given")
    return ConcatDataset([ImageDataset(a, np.full(a.shape[0], y, dtype=np.float32)) for a, y in zip(arrays, labels)])


def collate_sets(batch):
    """Batch ``(events (N_i, 4), label)`` items: ``(x, y)`` when all N_i agree, else ``(x, mask, y)``.

    ``x`` is padded with zeros to the largest N; ``mask[i, j]`` is True for real events.
    """
    sets = [b[0] for b in batch]
    y = torch.stack([torch.as_tensor(b[1]) for b in batch])
    sizes = {s.shape[0] for s in sets}
    if len(sizes) == 1:
        return torch.stack(sets), y
    n = max(sizes)
    x = sets[0].new_zeros((len(sets), n, N_EVENT_VARIABLES))
    mask = torch.zeros((len(sets), n), dtype=torch.bool)
    for i, s in enumerate(sets):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return x, mask, y


def join_mixed_indices(signal_idx, background_idx, n_signal: int) -> np.ndarray:
    """One index array into ``concatenate([signal_pool, background_pool])`` from per-pool index arrays.

    ``signal_idx`` ``(S, a)`` and ``background_idx`` ``(S, b)`` index the signal and
    the background pool (as ``kernels.bootstrap.mixed_set_indices`` returns them,
    PAD-padded or not); background indices are shifted by ``n_signal``, the size of
    the signal pool, and PAD entries stay PAD.

    >>> join_mixed_indices(np.array([[0, 1]]), np.array([[2, -1]]), n_signal=10).tolist()
    [[0, 1, 12, -1]]
    """
    sig = np.asarray(signal_idx)
    bkg = np.asarray(background_idx)
    if sig.ndim != 2 or bkg.ndim != 2 or sig.shape[0] != bkg.shape[0]:
        raise ConfigError(f"signal and background indices must be (sets, n) with equal set counts, got {sig.shape}, {bkg.shape}")
    return np.concatenate([sig, np.where(bkg == PAD, PAD, bkg + n_signal)], axis=1)


class SetDataset(Dataset):
    """Sets of events drawn by index from per-point pools -> (events (N, 4) float32, label).

    ``pools[p]``: events of point p, shape ``(n_p, 4)`` (columns q2, cos_theta_mu,
    cos_theta_k, chi; a ``(4, n)`` sampler array is passed as ``arr.T``);
    ``labels[p]``: its delta C9; ``indices[p]``: an integer array ``(S_p, N_p)``,
    row s holding the pool rows of set s. Set sizes may differ between points,
    and entries equal to :data:`PAD` (-1, as in ``kernels.bootstrap``) are
    padding, dropped from their set (so sets may differ in size within a point:
    see :func:`join_mixed_indices` for signal + background sets).
    Batches with :func:`collate_sets` (its ``collate_fn``).
    """

    collate_fn = staticmethod(collate_sets)

    def __init__(self, pools: Sequence, labels: Sequence[float], indices: Sequence) -> None:
        if not (len(pools) == len(labels) == len(indices)):
            raise ConfigError(f"{len(pools)} pools, {len(labels)} labels and {len(indices)} index arrays differ in number")
        self.pools = []
        self.indices = []
        for p, (pool, idx) in enumerate(zip(pools, indices)):
            if getattr(pool, "ndim", None) != 2 or pool.shape[1] != N_EVENT_VARIABLES:
                raise ConfigError(f"pool {p} must have shape (n, {N_EVENT_VARIABLES}), got {getattr(pool, 'shape', None)}")
            idx = np.asarray(idx)
            if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
                raise ConfigError(f"indices of pool {p} must be an integer array (sets, N), got {idx.dtype} {idx.shape}")
            if idx.size and (idx.min() < PAD or idx.max() >= pool.shape[0]):
                raise ConfigError(f"indices of pool {p} must lie in [0, {pool.shape[0] - 1}] (or be PAD = {PAD})")
            self.pools.append(pool)
            self.indices.append(idx)
        self.labels = np.asarray(labels, dtype=np.float32)
        counts = np.array([i.shape[0] for i in self.indices], dtype=np.int64)
        self._ends = np.cumsum(counts)

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        p = int(np.searchsorted(self._ends, i, side="right"))
        s = i - (int(self._ends[p - 1]) if p else 0)
        row = self.indices[p][s]
        if row.size and row.min() == PAD:
            row = row[row != PAD]
            if row.size == 0:
                raise ConfigError(f"set {s} of pool {p} has no events (all indices are PAD)")
        events = as_events(self.pools[p][row])
        return torch.from_numpy(np.ascontiguousarray(events)), torch.tensor(self.labels[p])


class EventDataset(TensorDataset):
    """Events ``(n, 4)`` and their class indices ``(n,)`` (int64) -> (event (4,), class), held in memory.

    :meth:`from_pools` builds one from per-point pools and each pool's class index.
    :meth:`from_joint` builds the score-regression data instead: events, the delta C9 each
    was drawn at, and its joint score -> (event (4,), d, score), float32, for
    :class:`models.event_posterior.EventLikelihoodNet` (``model(event, d)`` against the score,
    loss "mse"; the events and scores come from :func:`kernels.joint.sample_joint`).
    """

    def __init__(self, events, classes=None, *, shifts=None, scores=None) -> None:
        ev = as_events(events)
        if ev.ndim != 2:
            raise ConfigError(f"events must have shape (n, 4), got {ev.shape}")
        if classes is None:
            d = np.asarray(shifts, dtype=np.float32) if shifts is not None else None
            t = np.asarray(scores, dtype=np.float32) if scores is not None else None
            if d is None or t is None or d.shape != (ev.shape[0],) or t.ndim not in (1, 2) or t.shape[0] != ev.shape[0]:
                raise ConfigError(f"give class indices, or shifts and scores: shifts ({ev.shape[0]},), scores "
                                  f"({ev.shape[0]},) or ({ev.shape[0]}, k)")
            if not (np.all(np.isfinite(d)) and np.all(np.isfinite(t))):
                raise ConfigError("shifts and joint scores must be finite")
            super().__init__(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (ev, d, t)))
            return
        if shifts is not None or scores is not None:
            raise ConfigError("give either class indices or shifts and scores, not both")
        cls = np.asarray(classes)
        if cls.shape != (ev.shape[0],) or not np.issubdtype(cls.dtype, np.integer):
            raise ConfigError(f"classes must be {ev.shape[0]} integers, got {cls.dtype} {cls.shape}")
        super().__init__(torch.from_numpy(np.ascontiguousarray(ev)), torch.from_numpy(cls.astype(np.int64)))

    @classmethod
    def from_pools(cls, pools: Sequence, classes: Sequence[int]) -> EventDataset:
        """Concatenate per-point pools ``(n_p, 4)``, labelling every event of pool p with ``classes[p]``."""
        if len(pools) != len(classes):
            raise ConfigError(f"{len(pools)} pools but {len(classes)} class indices")
        ev = np.concatenate([as_events(p) for p in pools])
        lab = np.concatenate([np.full(np.shape(p)[0], c, dtype=np.int64) for p, c in zip(pools, classes)])
        return cls(ev, lab)

    @classmethod
    def from_joint(cls, events, shifts, scores) -> EventDataset:
        """Score-regression data: events ``(n, 4)``, their delta C9 ``(n,)`` and joint scores ``(n,)`` (or
        ``(n, k)``: the scores in k nuisances, :class:`models.nuisance_posterior.NuisanceScoreNet`)."""
        return cls(events, shifts=shifts, scores=scores)

    @property
    def is_joint(self) -> bool:
        """True for score-regression data (items (event, d, score))."""
        return len(self.tensors) == 3

    @property
    def classes(self) -> torch.Tensor:
        if self.is_joint:
            raise ConfigError("score-regression data has no class indices (see shifts, scores)")
        return self.tensors[1]

    @property
    def shifts(self) -> torch.Tensor:
        if not self.is_joint:
            raise ConfigError("classification data has no per-event shifts")
        return self.tensors[1]

    @property
    def scores(self) -> torch.Tensor:
        if not self.is_joint:
            raise ConfigError("classification data has no joint scores")
        return self.tensors[2]

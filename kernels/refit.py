"""Second starts for ML fits of many sets: a set whose fit failed, or stopped far from every other set's, is
refitted from where the others are (:func:`retry_failed`). Shared by the joint fit
(:func:`kernels.likelihood.fit_sets`) and the learned likelihood (:mod:`models.event_ratio`)."""

from __future__ import annotations

import numpy as np

__all__ = ["retry_failed"]


def retry_failed(values, errors, valid, covariances, refit, far: float = 5.0) -> int:
    """Refit from the median of the valid estimates each set whose fit failed, or whose estimate lies more than
    ``far`` of its own errors from it (in several coefficients a fit from 0 can run off, or stop in another
    dip); keep a refit that is valid and, for a valid set, has the lower NLL. In place. ``refit(j, start)`` is
    :func:`fit_set`'s tuple for set j and ``refit(j, at=d)`` its NLL at d. Returns the number of sets changed."""
    if not valid.any():
        return 0
    start = np.median(values[valid], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        far_off = np.max(np.abs(values - start) / errors, axis=1) > far
    changed = 0
    for j in np.flatnonzero(~valid | far_off):
        j = int(j)
        new = refit(j, start)
        if new[2] and (not valid[j] or refit(j, at=new[0]) < refit(j, at=values[j])):
            values[j], errors[j], valid[j], covariances[j] = new
            changed += 1
    return changed

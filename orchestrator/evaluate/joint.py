"""The joint fit of several Wilson coefficients: which coefficients a dataset's fit takes, and a point's row.

A dataset scans one or more coefficients (its manifest's shift vectors); ``wcscan fit`` fits those, or more
(:func:`fitted_coefficients`: a coefficient the dataset does not scan was 0 in its events). With several,
:func:`joint_row` summarises a point's fits (:func:`kernels.metrics.joint_point_metrics`): each coefficient's
metrics beside its marginal bound, the correlations beside the bound's and the joint coverage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.errors import ConfigError

__all__ = ["fitted_coefficients", "joint_row"]

log = logging.getLogger(__name__)


def fitted_coefficients(manifest: Any, coefficients: Sequence[str] | None = None) -> list[str]:
    """The flavio names of the coefficients to fit on a dataset: ``coefficients`` (any spelling
    :func:`kernels.design.shift_column` reads; default the dataset's), which must include every coefficient
    the dataset scans."""
    from kernels.design import shift_columns
    from kernels.theory import coefficient_for

    scanned = list(manifest.shift_columns)
    cols = scanned if coefficients is None else list(shift_columns(coefficients))
    missing = [c for c in scanned if c not in cols]
    if missing:
        raise ConfigError(f"--coefficients {','.join(cols)}: the dataset {manifest.root} scans "
                          f"{', '.join(missing)} too; fit every scanned coefficient (add {', '.join(missing)})")
    return [coefficient_for(c) for c in cols]


def joint_row(table: Any, model: Any, result: Any, truth: np.ndarray, n_events: int, label: str,
              profiled: Any) -> dict:
    """The row of a joint fit of several coefficients (:func:`kernels.metrics.joint_columns`): the bound's
    covariance is the inverse Fisher matrix at the truth (at the mean estimate when it is unknown)."""
    from kernels import likelihood, metrics

    values = np.asarray(result.values, dtype=np.float64)
    at = truth
    if not np.isfinite(truth).all():
        ok = np.isfinite(values).all(axis=1)
        at = values[ok].mean(axis=0) if ok.any() else truth
        log.info("%s: truth unknown; the bound at the mean estimate %s", label, np.round(at, 4).tolist())
    shifts = table.shift_columns
    n = len(shifts)
    bound = (np.linalg.inv(likelihood.fisher_information(table, at, model)) / n_events if np.isfinite(at).all()
             else np.full((n, n), np.nan))
    row = metrics.joint_point_metrics(values, result.covariances, truth=truth, crb_covariance=bound,
                                      n_events=n_events, shifts=shifts)
    if profiled is not None:
        eff = profiled.bound(at, n_events, model)[0] if np.isfinite(at).all() else np.full(n, np.nan)
        for i, s in enumerate(shifts):
            row[f"sigma_crb_eff_{s}"] = float(eff[i])
            row[f"sigma_over_crb_eff_{s}"] = float(row[f"sigma_{s}"]) / float(eff[i])
    return {k: row[k] for k in metrics.joint_columns(shifts, nuisances=profiled is not None)}

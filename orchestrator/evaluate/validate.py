"""``wcscan validate``: the generator and the yardstick against flavio and the Cramér–Rao bound.

For each delta C9 it draws events, measures the binned observables from them
(AFB from <cos theta_mu>, FL and S3..S9 by the method of moments), and puts them
beside the theory tables' integrals and flavio's own binned predictions. The
pull is (events - flavio) / statistical error.
"""

from __future__ import annotations

import numpy as np

OBSERVABLES = ("AFB", "FL", "S3", "S4", "S5", "S7", "S8", "S9")


def validate_generator(dc9_values, events: int = 1_000_000, seed: int = 0, window=(1.1, 6.0), progress=None) -> list[dict]:
    """One row per (dc9, observable): flavio, tables, events, error, pull."""
    import flavio

    from kernels import angular, sampler, theory

    table = theory.jtable(["C9_bsmumu"], [window])
    idx = {t: i for i, t in enumerate(angular.TERMS)}
    rows = []
    for i, d in enumerate(dc9_values):
        arr = sampler.sample_array(table, [d], events, (seed, i))
        F = angular.basis(*(np.asarray(a, dtype=np.float64) for a in arr[1:]))
        est, cov = angular.moments_to_normalised_j(F)
        err = np.sqrt(np.diag(cov))
        cos_l = arr[1].astype(np.float64)
        measured = {
            "AFB": (1.5 * cos_l.mean(), 1.5 * cos_l.std() / np.sqrt(events)),
            "FL": (-est[idx["2c"]], err[idx["2c"]]),
        }
        for s in ("3", "4", "5", "7", "8", "9"):
            measured[f"S{s}"] = (est[idx[s]], err[idx[s]])
        tab = angular.observables(table.integral([d]))
        wc = flavio.WilsonCoefficients()
        if d:
            wc.set_initial({"C9_bsmumu": float(d)}, scale=theory.WC_SCALE, eft="WET", basis="flavio")
        for name in OBSERVABLES:
            ref = float(flavio.np_prediction(f"<{name}>(B0->K*mumu)", wc, *window))
            value, sigma = measured[name]
            rows.append(
                {
                    "dc9": float(d),
                    "observable": name,
                    "flavio": ref,
                    "tables": float(tab[name]),
                    "events": float(value),
                    "error": float(sigma),
                    "pull": float((value - ref) / sigma),
                }
            )
        if progress is not None:
            progress(1)
    return rows


def validate_fit(dc9: float = -1.0, events_per_set: int = 24_000, sets: int = 100, seed: int = 0, window=(1.1, 6.0), progress=None) -> dict:
    """Toy ML fits at one point: mean, spread, sigma_CRB, their ratio and the pulls."""
    from kernels import likelihood, metrics, sampler, theory

    table = theory.jtable(["C9_bsmumu"], [window])
    arr = sampler.sample_array(table, [dc9], events_per_set * sets, (seed, 99)).T.reshape(sets, events_per_set, 4)
    res = likelihood.fit_sets(table, arr, progress=progress)
    crb = likelihood.sigma_crb(table, [dc9], events_per_set)
    return metrics.point_metrics(res.values, res.errors, truth=dc9, sigma_crb=crb, n_events=events_per_set)

"""The generator reproduces flavio's binned predictions (physics.md, "Validating the generator").

Every expectation comes from flavio or from the J tables' integrals, never from
the sampler itself. 10^6 events per point; tolerances are statistical (5 sigma)
plus flavio's own integration tolerance.
"""

import numpy as np
import pytest

from kernels import angular, sampler

N = 1_000_000
POINTS = (0.0, -1.5, 0.9)
WINDOW = (1.1, 6.0)


@pytest.fixture(scope="module")
def samples(c9_table):
    return {d: sampler.sample_array(c9_table, [d], N, (2024, i)) for i, d in enumerate(POINTS)}


@pytest.mark.parametrize("dc9", POINTS)
def test_afb_of_events_matches_flavio(samples, flavio_prediction, dc9):
    cos_l = samples[dc9][1].astype(np.float64)
    afb = 1.5 * cos_l.mean()
    err = 1.5 * cos_l.std() / np.sqrt(N)
    expected = flavio_prediction("AFB", {"C9_bsmumu": dc9}, *WINDOW)
    assert abs(afb - expected) < 5 * err + 5e-4, (afb, expected, err)


@pytest.mark.parametrize("dc9", POINTS)
def test_normalised_q2_spectrum_matches_flavio_in_sub_bins(samples, flavio_prediction, dc9):
    edges = np.linspace(*WINDOW, 8)
    counts = np.histogram(samples[dc9][0], edges)[0]
    br = np.array([flavio_prediction("dBR/dq2", {"C9_bsmumu": dc9}, a, b) * (b - a) for a, b in zip(edges[:-1], edges[1:])])
    p = br / br.sum()
    frac = counts / counts.sum()
    err = np.sqrt(p * (1 - p) / N)
    # flavio integrates with epsrel = 0.005; allow a fraction of that on top of 5 sigma.
    np.testing.assert_array_less(np.abs(frac - p), 5 * err + 1e-3 * p)


def _moment_estimates(arr):
    F = angular.basis(*(np.asarray(a, dtype=np.float64) for a in arr[1:]))
    return angular.moments_to_normalised_j(F)


@pytest.mark.parametrize("dc9", POINTS)
def test_event_moments_match_the_tables_integrals(samples, c9_table, dc9):
    """Step 1: the sampler against its own model's integrals, all twelve J_i / Gamma at once."""
    est, cov = _moment_estimates(samples[dc9])
    J = c9_table.integral([dc9])
    pred = J / angular.rate(J)
    r = est - pred
    # f_1s + f_1c = 1 makes the covariance singular in one direction: use the pseudo-inverse.
    chi2 = r @ np.linalg.pinv(cov, rcond=1e-10) @ r
    dof = np.linalg.matrix_rank(cov, tol=1e-10 * np.abs(cov).max())
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)
    np.testing.assert_array_less(np.abs(r), 5 * np.sqrt(np.diag(cov)) + 1e-12)


@pytest.mark.parametrize("dc9", POINTS)
def test_fl_and_angular_observables_of_events_match_flavio(samples, flavio_prediction, dc9):
    """Steps 1 and 2 chained: moments of the events -> FL, S3..S9 -> flavio's binned values."""
    est, cov = _moment_estimates(samples[dc9])
    err = np.sqrt(np.diag(cov))
    idx = {t: i for i, t in enumerate(angular.TERMS)}
    measured = {"FL": (-est[idx["2c"]], err[idx["2c"]])}
    for s in ("3", "4", "5", "7", "8", "9"):
        measured[f"S{s}"] = (est[idx[s]], err[idx[s]])
    for name, (value, sigma) in measured.items():
        expected = flavio_prediction(name, {"C9_bsmumu": dc9}, *WINDOW)
        assert abs(value - expected) < 5 * sigma + 5e-4, (name, value, expected, sigma)


def test_textbook_fl_moment_is_biased_by_the_muon_mass(samples, flavio_prediction):
    """physics.md's trap: (<cos^2 theta_K> - 0.2) / 0.4 is not flavio's FL for muons."""
    ck = samples[0.0][2].astype(np.float64)
    naive = (np.mean(ck**2) - 0.2) / 0.4
    expected = flavio_prediction("FL", {}, *WINDOW)
    assert abs(naive - expected) > 0.01


def test_p5p_of_events_matches_flavio(samples, flavio_prediction):
    est, _ = _moment_estimates(samples[-1.5])
    idx = {t: i for i, t in enumerate(angular.TERMS)}
    p5p = est[idx["5"]] / (2 * np.sqrt(-est[idx["2s"]] * est[idx["2c"]]))
    assert p5p == pytest.approx(flavio_prediction("P5p", {"C9_bsmumu": -1.5}, *WINDOW), abs=0.01)

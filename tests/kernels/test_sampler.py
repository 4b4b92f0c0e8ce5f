"""The sampler's contract: schema, ranges, determinism, windows, and its envelope guard."""

import numpy as np
import pyarrow as pa
import pytest

from kernels import angular, sampler
from kernels.errors import ConfigError


def test_output_has_the_contract_columns_and_dtypes(c9_table):
    t = sampler.sample(c9_table, [-0.5], 1000, (1,))
    assert t.column_names == ["q2", "cos_theta_mu", "cos_theta_k", "chi", "dc9"]
    assert [t.schema.field(c).type for c in t.column_names] == [pa.float32()] * 4 + [pa.float64()]
    assert t.num_rows == 1000
    assert set(t.column("dc9").to_pylist()) == {-0.5}


def test_events_lie_inside_the_phase_space(c9_table):
    q2, cl, ck, chi = sampler.sample_array(c9_table, [0.0], 200_000, (3,))
    assert q2.min() >= 1.1 and q2.max() <= 6.0
    assert np.abs(cl).max() <= 1 and np.abs(ck).max() <= 1
    assert chi.min() >= 0 and chi.max() < 2 * np.pi


def test_same_seed_gives_identical_bits(c9_table):
    a = sampler.sample_array(c9_table, [0.3], 100_000, (7, 1, 2))
    b = sampler.sample_array(c9_table, [0.3], 100_000, (7, 1, 2))
    assert a.tobytes() == b.tobytes()


def test_different_seed_gives_different_events(c9_table):
    a = sampler.sample_array(c9_table, [0.3], 10_000, (7, 1, 2))
    b = sampler.sample_array(c9_table, [0.3], 10_000, (7, 1, 3))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("n", [0, -5, 2.5])
def test_non_positive_or_fractional_event_count_is_refused(c9_table, n):
    with pytest.raises(ConfigError, match="positive integer"):
        sampler.sample_array(c9_table, [0.0], n, (1,))


def test_wrong_number_of_shifts_is_refused(c9_table):
    with pytest.raises(ConfigError, match="expected 1 shift"):
        sampler.sample_array(c9_table, [0.0, 1.0], 10, (1,))


def test_two_windows_are_filled_in_proportion_to_their_rates(theory_cache):
    from kernels import theory

    table = theory.jtable(["C9_bsmumu"], [(1.1, 6.0), (15.0, 19.0)], cache=theory_cache)
    q2 = sampler.sample_array(table, [0.0], 400_000, (5,))[0]
    assert not np.any((q2 > 6.0) & (q2 < 15.0))
    p_high = angular.rate(table.integral([0.0], lo=15.0)) / angular.rate(table.integral([0.0]))
    frac = np.mean(q2 >= 15.0)
    assert abs(frac - p_high) < 5 * np.sqrt(p_high * (1 - p_high) / q2.size)


def test_an_envelope_too_low_is_caught_not_silently_biased(c9_table, monkeypatch):
    monkeypatch.setattr(sampler, "ENVELOPE_MARGIN", 0.5)
    monkeypatch.setattr(sampler, "_CACHE", type(sampler._CACHE)())
    with pytest.raises(sampler.EnvelopeError):
        sampler.sample_array(c9_table, [0.0], 10_000, (1,))


def test_baseline_sampler_draws_the_same_distribution(c9_table):
    """The benchmark's reference must be a correct sampler too: compare q2 and cos_l moments."""
    ours = sampler.sample_array(c9_table, [0.0], 300_000, (11,))
    base = sampler.sample_uniform_baseline(c9_table, [0.0], 300_000, (12,))
    for i in range(4):
        a, b = ours[i].astype(np.float64), base[i].astype(np.float64)
        assert abs(a.mean() - b.mean()) < 5 * np.hypot(a.std(), b.std()) / np.sqrt(a.size)

"""kernels.bootstrap: index sets per label, background mixing, gathering, independent test sets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import bootstrap
from kernels.bootstrap import (
    INDEX_SEED_OFFSET,
    PAD,
    TEST_SET_SEED_OFFSET,
    gather_mixed,
    gather_sets,
    index_seed,
    mixed_set_indices,
    set_indices,
    test_set_seed,
    test_sets,
)
from kernels.errors import ConfigError
from kernels.event_store import COLUMNS


def rows_as_bytes(events) -> set[bytes]:
    """Each event (row of an (N, 4) float32 array) as its bytes, for exact row comparisons."""
    arr = np.ascontiguousarray(np.asarray(events, dtype=np.float32).reshape(-1, 4))
    return {r.tobytes() for r in arr}


def no_repeats_within_sets(idx: np.ndarray) -> bool:
    s = np.sort(idx, axis=1)
    return bool(np.all(s[:, 1:] != s[:, :-1]))


# --- set_indices --------------------------------------------------------------------


@pytest.mark.parametrize("replace", [True, False])
def test_set_indices_shape_dtype_and_bounds(replace):
    idx = set_indices(1000, 50, 7, rng_seed=(1, 2, INDEX_SEED_OFFSET), replace=replace)
    assert idx.shape == (7, 50) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < 1000


@pytest.mark.parametrize("replace", [True, False])
def test_set_indices_are_a_function_of_the_seed_entropy(replace):
    a = set_indices(500, 20, 5, rng_seed=(3, 1, INDEX_SEED_OFFSET), replace=replace)
    b = set_indices(500, 20, 5, rng_seed=(3, 1, INDEX_SEED_OFFSET), replace=replace)
    c = set_indices(500, 20, 5, rng_seed=(3, 1, INDEX_SEED_OFFSET + 1), replace=replace)
    d = set_indices(500, 20, 5, rng_seed=(3, 2, INDEX_SEED_OFFSET), replace=replace)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_int_and_one_element_seed_are_the_same_entropy():
    np.testing.assert_array_equal(set_indices(50, 5, 2, 9, True), set_indices(50, 5, 2, [9], True))


def test_without_replacement_sets_are_disjoint_when_they_fit():
    idx = set_indices(100, 10, 10, rng_seed=4, replace=False)  # exactly the whole pool
    assert sorted(idx.ravel().tolist()) == list(range(100))
    idx = set_indices(1000, 30, 20, rng_seed=5, replace=False)
    assert np.unique(idx).size == idx.size


def test_without_replacement_sets_that_do_not_fit_overlap_but_never_repeat_within_a_set():
    idx = set_indices(40, 30, 6, rng_seed=6, replace=False)
    assert no_repeats_within_sets(idx)
    assert np.unique(idx).size < idx.size  # 180 > 40: overlap is unavoidable


def test_disjoint_true_refuses_sets_that_do_not_fit_naming_the_counts():
    with pytest.raises(ConfigError, match=r"6 disjoint sets need 180 pool events, the pool has 40"):
        set_indices(40, 30, 6, rng_seed=6, replace=False, disjoint=True)


def test_disjoint_false_draws_independent_sets_even_when_they_would_fit():
    idx = set_indices(100, 50, 2, rng_seed=7, replace=False, disjoint=False)
    assert no_repeats_within_sets(idx)
    assert np.intersect1d(idx[0], idx[1]).size > 0  # 2 x 50 of 100: overlap almost surely (fixed seed)


def test_a_set_larger_than_the_pool_without_replacement_is_refused():
    with pytest.raises(ConfigError, match="needs a pool of at least 11, the pool has 10"):
        set_indices(10, 11, 1, rng_seed=0, replace=False)


def test_with_replacement_repeats_happen_and_sets_may_exceed_the_pool():
    idx = set_indices(10, 50, 3, rng_seed=8, replace=True)
    assert idx.shape == (3, 50) and idx.max() < 10
    assert not no_repeats_within_sets(idx)


def test_with_replacement_draws_are_uniform_over_the_pool():
    idx = set_indices(10, 1000, 20, rng_seed=9, replace=True)
    counts = np.bincount(idx.ravel(), minlength=10)
    expected = idx.size / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30  # 9 degrees of freedom: p < 5e-4 for a fair sampler


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(pool_size=-1), "pool_size must be an integer >= 0"),
        (dict(set_size=0), "set_size must be an integer >= 1"),
        (dict(n_sets=2.0), "n_sets must be an integer >= 1"),
        (dict(rng_seed=-3), "seed must be a non-negative integer"),
        (dict(rng_seed=(1, "a")), "seed must be a non-negative integer"),
        (dict(pool_size=0, replace=True), "pool is empty"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, fragment):
    args = dict(pool_size=10, set_size=2, n_sets=2, rng_seed=0, replace=False) | kwargs
    with pytest.raises(ConfigError, match=fragment):
        set_indices(**args)


def test_seed_helpers_keep_a_nonzero_offset():
    assert index_seed(1, 0) == (1, 0, INDEX_SEED_OFFSET)
    assert test_set_seed(1, 0, 0) == (1, 0, TEST_SET_SEED_OFFSET)
    # The reason for the offset: SeedSequence ignores trailing zeros.
    a = np.random.SeedSequence([1, 0, 0]).generate_state(2)
    b = np.random.SeedSequence([1, 0]).generate_state(2)
    assert np.array_equal(a, b)


# --- background mixing ------------------------------------------------------------


@pytest.mark.parametrize("set_size, fraction", [(100, 0.44), (25, 0.44), (7, 0.5), (10, 0.0), (10, 1.0)])
def test_fixed_fraction_gives_exactly_round_f_n_background_events_per_set(set_size, fraction):
    sig, bkg = mixed_set_indices(1000, 1000, set_size, 5, fraction, seed=1, replace=False)
    k = int(round(fraction * set_size))
    assert sig.shape == (5, set_size - k) and bkg.shape == (5, k)
    assert not (sig == PAD).any() and not (bkg == PAD).any()


def test_fixed_fraction_sets_are_disjoint_per_pool_when_they_fit():
    m = mixed_set_indices(600, 500, 100, 10, 0.44, seed=2, replace=False)
    assert np.unique(m.sig_idx).size == m.sig_idx.size == 560
    assert np.unique(m.bkg_idx).size == m.bkg_idx.size == 440
    assert list(m.n_background) == [44] * 10


def test_binomial_fraction_varies_per_set_and_pads_the_rest():
    m = mixed_set_indices(10_000, 10_000, 50, 400, 0.3, seed=3, replace=True, fixed_fraction=False)
    n_sig = (m.sig_idx != PAD).sum(axis=1)
    n_bkg = m.n_background
    assert m.sig_idx.shape == m.bkg_idx.shape == (400, 50)
    assert np.all(n_sig + n_bkg == 50)
    assert np.unique(n_bkg).size > 5  # it varies
    assert abs(n_bkg.mean() / 50 - 0.3) < 0.02  # binomial mean: sd of the mean fraction is 0.003
    assert abs(n_bkg.var() - 50 * 0.3 * 0.7) < 2.5  # binomial variance 10.5
    for row, n in zip(m.sig_idx, n_sig):  # valid entries left-aligned, then PAD
        assert np.all(row[:n] >= 0) and np.all(row[n:] == PAD)


def test_mixed_sets_are_deterministic_and_the_pools_use_independent_streams():
    a = mixed_set_indices(100, 100, 10, 3, 0.4, seed=(5, 0, INDEX_SEED_OFFSET), replace=False)
    b = mixed_set_indices(100, 100, 10, 3, 0.4, seed=(5, 0, INDEX_SEED_OFFSET), replace=False)
    np.testing.assert_array_equal(a.sig_idx, b.sig_idx)
    np.testing.assert_array_equal(a.bkg_idx, b.bkg_idx)
    assert not np.array_equal(a.sig_idx[:, :4], a.bkg_idx)  # not the same stream for both pools


def test_bad_background_fraction_is_refused():
    for f in (-0.1, 1.5, "x"):
        with pytest.raises(ConfigError, match="bkg_fraction"):
            mixed_set_indices(10, 10, 5, 1, f, seed=0, replace=True)


# --- gathering ---------------------------------------------------------------------


def pool(n: int, seed: int = 0) -> np.ndarray:
    """(4, n) float32 events with distinct values."""
    return np.random.default_rng(seed).random((4, n)).astype(np.float32)


def test_gather_sets_from_columns_first_rows_first_and_a_table_agree():
    ev = pool(30)
    idx = set_indices(30, 6, 4, rng_seed=1, replace=True)
    a = gather_sets(ev, idx)
    b = gather_sets(ev.T.copy(), idx)
    c = gather_sets(pa.table({name: pa.array(ev[i]) for i, name in enumerate(COLUMNS)}), idx)
    expected = np.array([[ev[:, j] for j in row] for row in idx])
    assert a.shape == (4, 6, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(b, expected)
    np.testing.assert_array_equal(c, expected)
    assert gather_sets(ev, idx, dtype=np.float64).dtype == np.float64


def test_gather_sets_refuses_out_of_range_and_padded_indices():
    ev = pool(5)
    with pytest.raises(IndexError, match="index 5 is outside the pool of 5 events"):
        gather_sets(ev, np.array([[0, 5]]))
    with pytest.raises(IndexError, match="gather_mixed"):
        gather_sets(ev, np.array([[0, PAD]]))
    with pytest.raises(ConfigError, match=r"shape \(4, N\) or \(N, 4\)"):
        gather_sets(np.zeros((3, 5)), np.array([[0]]))


@pytest.mark.parametrize("fixed", [True, False])
def test_gather_mixed_puts_each_sets_signal_then_background_events(fixed):
    sig_ev, bkg_ev = pool(200, 1), pool(150, 2)
    m = mixed_set_indices(200, 150, 20, 6, 0.44, seed=4, replace=False, fixed_fraction=fixed)
    events, is_signal = gather_mixed(sig_ev, bkg_ev, m)
    assert events.shape == (6, 20, 4) and is_signal.shape == (6, 20)
    np.testing.assert_array_equal((~is_signal).sum(axis=1), m.n_background)
    for s in range(6):
        sig_rows = sig_ev[:, m.sig_idx[s][m.sig_idx[s] != PAD]].T
        bkg_rows = bkg_ev[:, m.bkg_idx[s][m.bkg_idx[s] != PAD]].T
        np.testing.assert_array_equal(events[s][is_signal[s]], sig_rows)
        np.testing.assert_array_equal(events[s][~is_signal[s]], bkg_rows)


# --- property tests: index bounds ---------------------------------------------------

sizes = st.tuples(st.integers(1, 300), st.integers(1, 40), st.integers(1, 12))
seeds = st.one_of(st.integers(0, 2**63), st.lists(st.integers(0, 2**32), min_size=1, max_size=4))


@settings(max_examples=150, deadline=None)
@given(sizes=sizes, seed=seeds, replace=st.booleans())
def test_property_indices_lie_in_the_pool_and_respect_the_replacement_rules(sizes, seed, replace):
    pool_size, set_size, n_sets = sizes
    if not replace and set_size > pool_size:
        with pytest.raises(ConfigError):
            set_indices(pool_size, set_size, n_sets, seed, replace)
        return
    idx = set_indices(pool_size, set_size, n_sets, seed, replace)
    assert idx.shape == (n_sets, set_size)
    assert idx.min() >= 0 and idx.max() < pool_size
    if not replace:
        assert no_repeats_within_sets(idx)
        if n_sets * set_size <= pool_size:
            assert np.unique(idx).size == idx.size
    np.testing.assert_array_equal(idx, set_indices(pool_size, set_size, n_sets, seed, replace))


@settings(max_examples=150, deadline=None)
@given(
    pools=st.tuples(st.integers(0, 200), st.integers(0, 200)),
    set_size=st.integers(1, 40),
    n_sets=st.integers(1, 8),
    fraction=st.floats(0, 1),
    seed=seeds,
    replace=st.booleans(),
    fixed=st.booleans(),
)
def test_property_mixed_indices_lie_in_their_pools_and_fill_each_set(pools, set_size, n_sets, fraction, seed,
                                                                      replace, fixed):
    n_sig_pool, n_bkg_pool = pools
    try:
        m = mixed_set_indices(n_sig_pool, n_bkg_pool, set_size, n_sets, fraction, seed, replace,
                              fixed_fraction=fixed)
    except ConfigError as err:  # only a pool too small for what the sets need
        assert "pool" in str(err)
        return
    sig_ok, bkg_ok = m.sig_idx != PAD, m.bkg_idx != PAD
    assert np.all(sig_ok.sum(1) + bkg_ok.sum(1) == set_size)
    assert np.all((m.sig_idx[sig_ok] >= 0) & (m.sig_idx[sig_ok] < n_sig_pool))
    assert np.all((m.bkg_idx[bkg_ok] >= 0) & (m.bkg_idx[bkg_ok] < n_bkg_pool))
    if fixed:
        assert np.all(bkg_ok.sum(1) == int(round(fraction * set_size)))
    if not replace:
        for idx, ok in ((m.sig_idx, sig_ok), (m.bkg_idx, bkg_ok)):
            for row, r_ok in zip(idx, ok):
                assert np.unique(row[r_ok]).size == r_ok.sum()


# --- evaluation sets from independent MC --------------------------------------------


SEED, POINT = 11, 2


@pytest.fixture(scope="module")
def training_pool(c9_table):
    """The point's pool as the generator makes it: chunks seeded (seed, point, chunk)."""
    from kernels import sampler

    chunks = [sampler.sample(c9_table, [-0.5], 1_000, (SEED, POINT, c)) for c in range(3)]
    return pa.concat_tables(chunks)


def test_test_sets_shape_dtype_and_determinism(c9_table):
    a = test_sets(c9_table, [-0.5], 500, 3, SEED, point=POINT)
    b = test_sets(c9_table, [-0.5], 500, 3, SEED, point=POINT)
    assert a.events.shape == (3, 500, 4) and a.events.dtype == np.float32 and a.is_signal is None
    np.testing.assert_array_equal(a.events, b.events)
    assert not np.array_equal(a.events[0], a.events[1])  # each set its own stream


def test_test_set_k_is_sample_level_with_its_own_seed(c9_table):
    from kernels.detector import sample_level

    ev = test_sets(c9_table, [-0.5], 400, 2, SEED, point=POINT).events
    t = sample_level(c9_table, [-0.5], 400, (SEED, POINT, TEST_SET_SEED_OFFSET + 1), "gen")
    np.testing.assert_array_equal(ev[1], np.stack([t.column(c).to_numpy() for c in COLUMNS], axis=-1))


def test_test_sets_share_no_event_with_the_training_pool_or_the_test_images(c9_table, training_pool):
    from kernels import sampler

    ev = test_sets(c9_table, [-0.5], 1_000, 4, SEED, point=POINT).events
    pool_rows = rows_as_bytes(np.stack([training_pool.column(c).to_numpy() for c in COLUMNS], axis=-1))
    test_rows = rows_as_bytes(ev)
    assert len(test_rows) == 4_000  # no duplicate events between sets either
    assert not test_rows & pool_rows
    images = sampler.sample_array(c9_table, [-0.5], 1_000, (SEED, POINT, 10**6)).T  # test image 0
    assert not test_rows & rows_as_bytes(images)


def test_the_no_overlap_check_would_catch_a_test_stream_that_reused_the_generator_seeds(
    c9_table, training_pool, monkeypatch
):
    monkeypatch.setattr(bootstrap, "TEST_SET_SEED_OFFSET", 0)  # set k would be chunk k
    ev = test_sets(c9_table, [-0.5], 1_000, 1, SEED, point=POINT).events
    pool_rows = rows_as_bytes(np.stack([training_pool.column(c).to_numpy() for c in COLUMNS], axis=-1))
    assert len(rows_as_bytes(ev) & pool_rows) == 1_000


def test_det_bkg_test_sets_carry_is_signal_with_the_detector_background_fraction(c9_table):
    from kernels.detector import DetectorConfig

    det = DetectorConfig(bkg_fraction=0.3)
    out = test_sets(c9_table, [0.0], 200, 2, SEED, "det_bkg", det, point=POINT)
    assert out.events.shape == (2, 200, 4) and out.is_signal.shape == (2, 200)
    assert list((~out.is_signal).sum(axis=1)) == [60, 60]


def test_test_sets_need_finite_shifts_and_a_point(c9_table):
    with pytest.raises(ConfigError, match="finite"):
        test_sets(c9_table, [float("nan")], 10, 1, SEED, point=0)
    with pytest.raises(TypeError):
        test_sets(c9_table, [0.0], 10, 1, SEED)  # the point index is required

"""Specification of voxel images (kernels.voxels) and the image files (kernels.image_store).

The reference is brute force: a Python loop over events that bins each one with
exact rational arithmetic (pi to 50 digits for chi) and averages q2 in float64.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import voxels as ki
from kernels.errors import ConfigError, DatasetError
from kernels.image_store import (
    FORMAT,
    image_file,
    image_path,
    open_images,
    read_image_manifest,
    write_manifest,
)
from kernels.voxels import bin_index, make_images, voxelize
from kernels.voxels_polars import voxelize_polars

PI = Fraction("3.14159265358979323846264338327950288419716939937510")
TWO_PI_F32 = np.float32(2 * math.pi)  # rounds above 2 pi
BELOW_TWO_PI_F32 = np.nextafter(TWO_PI_F32, np.float32(0))


# --- brute-force reference ---------------------------------------------------------


def exact_bin(x, lo: Fraction, width: Fraction, bins: int) -> int:
    i = math.floor((Fraction(float(x)) - lo) / width * bins)
    return min(i, bins - 1)


def reference_bins(cl, ck, chi, bins: int) -> list[tuple[int, int, int]]:
    return [
        (
            exact_bin(a, Fraction(-1), Fraction(2), bins),
            exact_bin(b, Fraction(-1), Fraction(2), bins),
            exact_bin(c, Fraction(0), 2 * PI, bins),
        )
        for a, b, c in zip(cl, ck, chi)
    ]


def reference_images(cl, ck, chi, q2, bins: int, image_id, n_images: int):
    """(mean q2 with NaN for empty voxels, counts), by explicit loops."""
    sums = np.zeros((n_images, bins, bins, bins))
    counts = np.zeros((n_images, bins, bins, bins))
    for img, (i, j, k), q in zip(image_id, reference_bins(cl, ck, chi, bins), q2):
        sums[img, i, j, k] += float(q)
        counts[img, i, j, k] += 1
    mean = np.full_like(sums, np.nan)
    for idx in np.ndindex(*sums.shape):
        if counts[idx]:
            mean[idx] = sums[idx] / counts[idx]
    return mean, counts


def assert_matches_reference(img, cl, ck, chi, q2, bins, image_id, n_images):
    mean, counts = reference_images(cl, ck, chi, q2, bins, image_id, n_images)
    assert img.shape == (n_images, 2, bins, bins, bins)
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img[:, ki.OCCUPANCY], counts)
    np.testing.assert_array_equal(np.isnan(img[:, ki.Q2_MEAN]), counts == 0)
    np.testing.assert_allclose(img[:, ki.Q2_MEAN], mean, rtol=3e-7, atol=0, equal_nan=True)


def random_events(n: int, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    cl = rng.uniform(-1, 1, n).astype(dtype)
    ck = rng.uniform(-1, 1, n).astype(dtype)
    chi = np.minimum(rng.uniform(0, 2 * math.pi, n).astype(dtype), np.asarray(2 * math.pi, dtype))
    q2 = rng.uniform(1.1, 6.0, n).astype(dtype)
    return cl, ck, chi, q2


# --- values against brute force ----------------------------------------------------


@pytest.mark.parametrize("bins", [1, 2, 3, 5, 8])
def test_mean_q2_and_occupancy_equal_brute_force_on_random_events(bins):
    cl, ck, chi, q2 = random_events(600, seed=bins)
    img = voxelize(cl, ck, chi, q2, bins, n_images=3)
    assert_matches_reference(img, cl, ck, chi, q2, bins, np.repeat([0, 1, 2], 200), 3)


def test_per_event_image_ids_equal_brute_force():
    cl, ck, chi, q2 = random_events(500, seed=3)
    ids = np.random.default_rng(4).integers(0, 4, 500)
    img = voxelize(cl, ck, chi, q2, 3, image_id=ids, n_images=4)
    assert_matches_reference(img, cl, ck, chi, q2, 3, ids, 4)


def test_float64_events_equal_brute_force():
    cl, ck, chi, q2 = random_events(300, seed=5, dtype=np.float64)
    chi[:3] = [0.0, 2 * math.pi, math.nextafter(2 * math.pi, 0)]
    img = voxelize(cl, ck, chi, q2, 4)
    assert_matches_reference(img, cl, ck, chi, q2, 4, np.zeros(300, int), 1)


def test_many_small_images_grouped_per_bincount_equal_brute_force():
    # bins=2 puts thousands of images in one bincount group
    cl, ck, chi, q2 = random_events(3000, seed=6)
    img = voxelize(cl, ck, chi, q2, 2, n_images=1000)
    assert_matches_reference(img, cl, ck, chi, q2, 2, np.repeat(np.arange(1000), 3), 1000)


def test_an_image_larger_than_one_index_batch_is_accumulated(monkeypatch):
    monkeypatch.setattr(ki, "_MAX_INDEXED", 64)
    monkeypatch.setattr(ki, "_CHUNK", 16)
    cl, ck, chi, q2 = random_events(1000, seed=7)
    img = voxelize(cl, ck, chi, q2, 3, n_images=2)
    assert_matches_reference(img, cl, ck, chi, q2, 3, np.repeat([0, 1], 500), 2)


# --- edges -------------------------------------------------------------------------


def test_upper_edges_go_to_the_last_bin():
    cl = np.array([1.0, 1.0, -1.0], np.float32)
    ck = np.array([1.0, -1.0, 1.0], np.float32)
    chi = np.array([TWO_PI_F32, BELOW_TWO_PI_F32, 0.0], np.float32)
    assert bin_index(cl, ck, chi, 50).tolist() == [[49, 49, 0], [49, 0, 49], [49, 49, 0]]


def test_exact_2pi_in_float64_goes_to_the_last_bin():
    assert bin_index([0.0], [0.0], [2 * math.pi], 7)[2].tolist() == [6]


def test_chi_just_below_2pi_stays_in_the_last_bin():
    chi = np.nextafter(TWO_PI_F32, np.float32(0)) - np.arange(5, dtype=np.float32) * np.float32(1e-6)
    assert set(bin_index(np.zeros(5), np.zeros(5), chi, 50)[2].tolist()) == {49}


def test_an_event_exactly_on_an_interior_edge_goes_to_the_bin_above():
    # with 16 bins the cos edges -1 + k/8 are exact float32 values
    edges = (-1 + np.arange(16, dtype=np.float32) / 8).astype(np.float32)
    assert bin_index(edges, edges, np.zeros(16), 16)[0].tolist() == list(range(16))


@pytest.mark.parametrize("axis", ["cos", "chi"])
def test_every_float32_neighbour_of_every_edge_is_binned_exactly(axis):
    for bins in range(1, 129):
        if axis == "cos":
            lo, width = Fraction(-1), Fraction(2)
            edges = np.array([float(lo + width * k / bins) for k in range(bins + 1)])
        else:
            lo, width = Fraction(0), 2 * PI
            edges = np.array([float(width * k / bins) for k in range(bins + 1)])
        e32 = edges.astype(np.float32)
        vals = np.concatenate([e32, np.nextafter(e32, np.float32(-np.inf)), np.nextafter(e32, np.float32(np.inf))])
        hi = np.float32(1) if axis == "cos" else TWO_PI_F32
        vals = vals[(vals >= np.float32(lo)) & (vals <= hi)]
        zeros = np.zeros(vals.shape, np.float32)
        got = bin_index(vals, zeros, zeros, bins)[0] if axis == "cos" else bin_index(zeros, zeros, vals, bins)[2]
        want = [exact_bin(v, lo, width, bins) for v in vals]
        assert got.tolist() == want, f"bins={bins}"


def test_tiny_negative_cos_is_below_the_edge_at_zero():
    tiny = np.array([-1e-45, -1e-30, -0.0, 0.0, 1e-45], np.float32)
    assert bin_index(tiny, tiny, np.zeros(5), 50)[0].tolist() == [24, 24, 25, 25, 25]


# --- property tests -------------------------------------------------------------------

_COS_SPECIAL = [-1.0, -0.5, -0.04, -0.0, 0.0, 0.04, 0.5, 1.0, 1e-45, -1e-45, -1e-8, 0.99999994, -0.99999994]
_CHI_SPECIAL = [0.0, 1e-45, float(TWO_PI_F32), float(BELOW_TWO_PI_F32), math.pi, float(np.float32(math.pi))]


cos_values = st.one_of(
    st.sampled_from(_COS_SPECIAL), st.floats(-1.0, 1.0, width=32, allow_subnormal=True)
)
chi_values = st.one_of(
    st.sampled_from(_CHI_SPECIAL), st.floats(0.0, float(TWO_PI_F32), width=32, allow_subnormal=True)
)
events = st.lists(
    st.tuples(cos_values, cos_values, chi_values, st.floats(0.0, 20.0, width=32)), min_size=0, max_size=40
)


def _arrays(evts):
    a = np.array(evts, dtype=np.float32).reshape(-1, 4)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evts=events, bins=st.sampled_from([1, 2, 3, 7, 16, 50]))
def test_property_images_equal_brute_force_with_edges_and_empty_voxels(evts, bins):
    cl, ck, chi, q2 = _arrays(evts)
    img = voxelize(cl, ck, chi, q2, bins)
    assert_matches_reference(img, cl, ck, chi, q2, bins, np.zeros(len(evts), int), 1)


@settings(max_examples=60, deadline=None)
@given(evts=events, bins=st.sampled_from([1, 2, 5, 16]), n_images=st.integers(1, 3), seed=st.integers(0, 99))
def test_property_bincount_and_polars_versions_agree(evts, bins, n_images, seed):
    cl, ck, chi, q2 = _arrays(evts)
    ids = np.random.default_rng(seed).integers(0, n_images, len(evts))
    a = voxelize(cl, ck, chi, q2, bins, image_id=ids, n_images=n_images)
    b = voxelize_polars(cl, ck, chi, q2, bins, image_id=ids, n_images=n_images)
    np.testing.assert_array_equal(a[:, 1], b[:, 1])
    np.testing.assert_allclose(a[:, 0], b[:, 0], rtol=3e-7, atol=0, equal_nan=True)


def test_bincount_and_polars_versions_agree_on_seed_sized_images():
    cl, ck, chi, q2 = random_events(2 * 24000, seed=8)
    a = voxelize(cl, ck, chi, q2, 50, n_images=2)
    b = voxelize_polars(cl, ck, chi, q2, 50, n_images=2)
    np.testing.assert_array_equal(a[:, 1], b[:, 1])
    np.testing.assert_allclose(a[:, 0], b[:, 0], rtol=3e-7, atol=0, equal_nan=True)


# --- empty voxels and fill ----------------------------------------------------------


def test_empty_voxels_are_nan_by_default_and_occupancy_zero():
    img = voxelize(np.array([0.5], np.float32), np.array([0.5], np.float32), np.array([1.0], np.float32),
                   np.array([3.0], np.float32), 4)
    assert np.isnan(img[0, 0]).sum() == 4**3 - 1
    assert img[0, 1].sum() == 1


@pytest.mark.parametrize("fill", [0.0, -1.0])
def test_fill_replaces_only_empty_voxels(fill):
    cl, ck, chi, q2 = random_events(50, seed=9)
    raw = voxelize(cl, ck, chi, q2, 4)
    filled = voxelize(cl, ck, chi, q2, 4, fill=fill)
    empty = raw[0, 1] == 0
    assert np.all(filled[0, 0][empty] == fill)
    np.testing.assert_array_equal(filled[0, 0][~empty], raw[0, 0][~empty])
    np.testing.assert_array_equal(filled[:, 1], raw[:, 1])


def test_no_events_make_empty_images():
    e = np.array([], np.float32)
    img = voxelize(e, e, e, e, 3, image_id=np.array([], int), n_images=2)
    assert np.all(img[:, 1] == 0) and np.all(np.isnan(img[:, 0]))
    assert voxelize(e, e, e, e, 3, n_images=0).shape == (0, 2, 3, 3, 3)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, value, fragment",
    [
        (0, 1.0000001, "'cos_theta_mu' has 1 value(s) outside [-1, 1]"),
        (1, -1.5, "'cos_theta_k' has 1 value(s) outside [-1, 1]"),
        (2, -1e-7, "'chi' has 1 value(s) outside [0, 2 pi]"),
        (2, 6.3, "'chi' has 1 value(s) outside [0, 2 pi]"),
        (3, np.nan, "'q2' has 1 non-finite"),
        (0, np.inf, "'cos_theta_mu' has 1 non-finite"),
    ],
)
def test_bad_values_are_a_one_line_dataset_error(column, value, fragment):
    cols = [np.full(4, 0.5, np.float32) for _ in range(4)]
    cols[column][2] = value
    with pytest.raises(DatasetError) as err:
        voxelize(*cols, 4)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"bins": 0}, "bins must be an integer in [1, 512]"),
        ({"bins": 2.5}, "bins must be an integer"),
        ({"n_images": 3}, "do not split into 3 equal images"),
        ({"image_id": np.array([0, 0, 0, 5])}, "image_id must lie in [0, 0]"),
        ({"image_id": np.array([0.0, 0, 0, 0])}, "image_id must hold integers"),
        ({"out": np.empty((1, 2, 4, 4, 4), np.float64)}, "out must be a C-contiguous float32"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, fragment):
    cols = [np.full(4, 0.5, np.float32) for _ in range(4)]
    args = {"bins": 4, **kwargs}
    with pytest.raises(ConfigError) as err:
        voxelize(*cols, **args)
    assert fragment in str(err.value)


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(DatasetError, match="differ in length"):
        voxelize(np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3), 2)


# --- make_images -------------------------------------------------------------------------


def _table(cl, ck, chi, q2):
    return pa.table({"q2": q2, "cos_theta_mu": cl, "cos_theta_k": ck, "chi": chi})


def test_make_images_uses_consecutive_disjoint_blocks_and_ignores_the_rest():
    cl, ck, chi, q2 = random_events(1050, seed=10)
    img = make_images(_table(cl, ck, chi, q2), 3, 200, 5)
    for k in range(5):
        s = slice(200 * k, 200 * (k + 1))
        np.testing.assert_array_equal(img[k], voxelize(cl[s], ck[s], chi[s], q2[s], 3)[0])


def test_make_images_reads_tables_frames_mappings_and_sampler_arrays():
    import polars as pl

    cl, ck, chi, q2 = random_events(400, seed=11)
    want = voxelize(cl, ck, chi, q2, 4, n_images=2)
    table = _table(cl, ck, chi, q2)
    forms = [
        table,
        pl.from_arrow(table),
        {"q2": q2, "cos_theta_mu": cl, "cos_theta_k": ck, "chi": chi},
        np.stack([q2, cl, ck, chi]),
    ]
    for form in forms:
        np.testing.assert_array_equal(make_images(form, 4, 200, 2), want)


def test_make_images_with_too_few_events_is_a_one_line_error():
    cl, ck, chi, q2 = random_events(399)
    with pytest.raises(DatasetError) as err:
        make_images(_table(cl, ck, chi, q2), 4, 200, 2)
    assert str(err.value) == "2 images x 200 events need 400 events, only 399 given"


def test_make_images_names_missing_columns():
    with pytest.raises(DatasetError, match="lack column"):
        make_images(pa.table({"q2": [1.0]}), 2, 1, 1)


def test_voxelize_writes_into_a_given_array():
    cl, ck, chi, q2 = random_events(100, seed=12)
    out = np.zeros((3, 2, 2, 2, 2), np.float32)
    voxelize(cl, ck, chi, q2, 2, n_images=2, out=out[1:])
    np.testing.assert_array_equal(out[1:], voxelize(cl, ck, chi, q2, 2, n_images=2))
    assert not out[0].any()


# --- image files ---------------------------------------------------------------------------


def _manifest(root, n, bins, split="train", point=0):
    return {
        "format": FORMAT,
        "bins": bins,
        "dtype": "float32",
        "image_shape": [2, bins, bins, bins],
        "points": [{"index": point, "splits": {split: {"path": f"split={split}/point={point:03d}.npy", "images": n}}}],
    }


def test_images_round_trip_through_a_read_only_memory_map(tmp_path):
    cl, ck, chi, q2 = random_events(300, seed=13)
    want = make_images(_table(cl, ck, chi, q2), 4, 100, 3, fill=0.0)
    with image_file(tmp_path, "val", 2, 3, 4) as arr:
        make_images(_table(cl, ck, chi, q2), 4, 100, 3, fill=0.0, out=arr)
    write_manifest(tmp_path, _manifest(tmp_path, 3, 4, "val", 2))
    got = open_images(tmp_path, "val", 2)
    assert isinstance(got, np.memmap) and got.mode == "r" and not got.flags.writeable
    np.testing.assert_array_equal(got, want)


def test_an_image_file_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with image_file(tmp_path, "train", 0, 2, 3) as arr:
            arr[0] = 1
            raise RuntimeError("boom")
    assert not image_path(tmp_path, "train", 0).exists()
    assert list((tmp_path / "split=train").iterdir()) == []


def test_open_images_refuses_a_file_that_disagrees_with_the_manifest(tmp_path):
    with image_file(tmp_path, "train", 0, 2, 3):
        pass
    write_manifest(tmp_path, _manifest(tmp_path, 5, 3))
    with pytest.raises(DatasetError, match="the manifest says"):
        open_images(tmp_path, "train", 0)


def test_open_images_without_a_manifest_is_an_incomplete_dataset(tmp_path):
    with image_file(tmp_path, "train", 0, 1, 2):
        pass
    with pytest.raises(DatasetError, match="no manifest.json"):
        open_images(tmp_path, "train", 0)


def test_read_image_manifest_refuses_an_event_dataset(tmp_path):
    write_manifest(tmp_path, {"format": "wcscan-events/1"})
    with pytest.raises(DatasetError, match="not a wcscan image dataset"):
        read_image_manifest(tmp_path)


def test_unknown_split_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        image_path(tmp_path, "dev", 0)

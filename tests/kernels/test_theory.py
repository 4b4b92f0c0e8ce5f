"""Theory tables: refusals, the disk cache, exact quadratic structure, and agreement with flavio."""

import numpy as np
import pytest

from kernels import angular, theory
from kernels.errors import TheoryError

OBSERVABLES = ("AFB", "FL", "S3", "S4", "S5", "S7", "S8", "S9", "P4p", "P5p")


@pytest.mark.parametrize("window", [(7.0, 9.0), (14.0, 16.0), (8.0, 15.0), (1.1, 19.0)])
def test_window_overlapping_charmonium_is_refused(window):
    with pytest.raises(TheoryError, match="charmonium"):
        theory.validate_windows([window])


@pytest.mark.parametrize("window", [(0.01, 1.0), (15.0, 20.0)])
def test_window_outside_kinematic_range_is_refused(window):
    with pytest.raises(TheoryError, match="kinematic range"):
        theory.validate_windows([window])


@pytest.mark.parametrize("window", [(6.0, 1.1), (2.0, 2.0), (float("nan"), 3.0)])
def test_empty_or_non_finite_window_is_refused(window):
    with pytest.raises(TheoryError, match="empty or not finite"):
        theory.validate_windows([window])


def test_overlapping_windows_are_refused():
    with pytest.raises(TheoryError, match="overlap"):
        theory.validate_windows([(1.1, 4.0), (3.0, 6.0)])


def test_unknown_coefficient_is_refused_with_the_known_names():
    with pytest.raises(TheoryError, match="unknown Wilson coefficient 'C11_bsmumu'.*C9_bsmumu"):
        theory.jtable(["C11_bsmumu"], cache=False)


def test_errors_are_one_line():
    for bad in (lambda: theory.validate_windows([(7, 9)]), lambda: theory.coefficient_for("dc99")):
        with pytest.raises(TheoryError) as err:
            bad()
        assert "\n" not in str(err.value)


def test_shift_column_names_map_to_coefficients():
    assert theory.coefficient_for("dc9") == "C9_bsmumu"
    assert theory.coefficient_for("dc10") == "C10_bsmumu"
    assert theory.coefficient_for("C7_bs") == "C7_bs"


def test_tables_are_cached_on_disk_and_reloaded_without_flavio(tmp_path, monkeypatch):
    first = theory.jtable(["dc9"], cache=tmp_path)
    files = list(tmp_path.glob("jtable-*.npz"))
    assert len(files) == 1 and first.key in files[0].name

    def no_theory(*args, **kwargs):
        raise AssertionError("the cached table was recomputed")

    monkeypatch.setattr(theory, "_flavio_j", no_theory)
    again = theory.jtable(["C9_bsmumu"], cache=tmp_path)
    np.testing.assert_array_equal(again.coef, first.coef)
    assert again.key == first.key


def test_cache_key_depends_on_the_inputs(tmp_path, c9_table):
    other = theory.jtable(["C9_bsmumu"], [(1.1, 6.0)], spacing=0.05, cache=tmp_path)
    assert other.key != c9_table.key
    assert other.flavio_version == c9_table.flavio_version


def test_j_at_a_new_shift_equals_flavio_exactly(c9_table):
    import flavio

    par = flavio.default_parameters.get_central_all()
    q2 = c9_table.q2[::20]
    direct = theory._flavio_j(flavio, ("C9_bsmumu",), np.array([0.63]), q2, par) / c9_table.scale
    np.testing.assert_allclose(c9_table.at([0.63])[::20], direct, rtol=1e-10, atol=1e-12 * np.abs(direct).max())


@pytest.mark.parametrize("dc9", [0.0, -1.0, 0.8])
def test_table_integrals_reproduce_flavio_binned_observables(c9_table, flavio_prediction, dc9):
    """Step 2 of the generator check: tables (conventions, signs, CP average) against flavio."""
    ours = angular.observables(c9_table.integral([dc9]))
    for name in OBSERVABLES:
        expected = flavio_prediction(name, {"C9_bsmumu": dc9}, 1.1, 6.0)
        assert ours[name] == pytest.approx(expected, abs=2e-4), name


def test_joint_c9_c10_tables_reproduce_flavio(c9_c10_table, flavio_prediction):
    shifts = {"C9_bsmumu": -1.0, "C10_bsmumu": 0.6}
    ours = angular.observables(c9_c10_table.integral(list(shifts.values())))
    for name in ("AFB", "FL", "S5", "P5p"):
        assert ours[name] == pytest.approx(flavio_prediction(name, shifts, 1.1, 6.0), abs=2e-4), name


def test_two_windows_keep_their_relative_rates(theory_cache, flavio_prediction):
    table = theory.jtable(["C9_bsmumu"], [(1.1, 6.0), (15.0, 19.0)], cache=theory_cache)
    low = angular.rate(table.integral([-0.5], hi=6.0))
    high = angular.rate(table.integral([-0.5], lo=15.0))
    br_low = flavio_prediction("dBR/dq2", {"C9_bsmumu": -0.5}, 1.1, 6.0) * 4.9
    br_high = flavio_prediction("dBR/dq2", {"C9_bsmumu": -0.5}, 15.0, 19.0) * 4.0
    assert high / low == pytest.approx(br_high / br_low, rel=5e-3)

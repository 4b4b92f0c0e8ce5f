"""`wcscan bounds`: the luminosity study of the hadronic bounds, on three form factors and a coarse q2 grid."""

import csv
import math

import numpy as np
import pytest

from kernels import nuisances
from kernels.errors import ConfigError
from orchestrator.cli import main
from orchestrator.evaluate.bounds import BOUNDS_COLUMNS, LOW_WINDOWS, HIGH_WINDOW, luminosity_bounds, window_label

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")
N = (2_000, 6_000, 24_000, 70_000)
LOW, BOTH = window_label(LOW_WINDOWS), window_label(LOW_WINDOWS + (HIGH_WINDOW,))


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """``nuisance_table`` with three form factors instead of 19 (31 flavio calls per window set, not 631)."""
    cache, real = tmp_path_factory.mktemp("bounds-cache"), nuisances.nuisance_table
    return lambda c, w, ff, **kw: real(c, w, FF, spacing=0.25, cache=cache, workers=1)


@pytest.fixture(scope="module")
def tables(small_table):
    return {label: small_table(["C9_bsmumu"], w, "bsz") for label, w in
            ((LOW, LOW_WINDOWS), (BOTH, LOW_WINDOWS + (HIGH_WINDOW,)))}


@pytest.fixture(scope="module")
def rows(tables):
    return luminosity_bounds(N, tables=tables)


def _series(rows, label, key):
    return np.array([r[key] for r in rows if r["windows"] == label], dtype=float)


def test_there_is_a_row_per_window_set_and_luminosity(rows):
    assert [(r["windows"], r["n_events"]) for r in rows] == [(LOW, n) for n in N] + [(BOTH, n) for n in N]
    assert all(set(r) == set(BOUNDS_COLUMNS) for r in rows)


def test_profiling_the_form_factors_never_beats_fixing_them(rows):
    for r in rows:
        assert r["sigma_crb_eff"] >= r["sigma_crb"]
        assert r["eff_over_fixed"] == pytest.approx(r["sigma_crb_eff"] / r["sigma_crb"])


def test_the_cost_of_the_form_factors_grows_with_luminosity(rows):
    for label in (LOW, BOTH):
        assert np.all(np.diff(_series(rows, label, "eff_over_fixed")) > 0)


def test_the_fixed_bound_falls_as_one_over_root_n(rows):
    for label in (LOW, BOTH):
        scaled = _series(rows, label, "sigma_crb") * np.sqrt(_series(rows, label, "n_events_set"))
        assert np.allclose(scaled, scaled[0], rtol=1e-12, atol=0)


def test_a_combined_set_holds_the_events_of_both_windows(rows):
    low, both = _series(rows, LOW, "n_events_set"), _series(rows, BOTH, "n_events_set")
    assert np.array_equal(low, N)
    ratio = both / low
    assert np.all(ratio > 1) and np.allclose(ratio, ratio[-1], rtol=1e-3)


def test_the_high_q2_window_lowers_the_efficient_bound(rows):
    eff_low, eff_both = _series(rows, LOW, "sigma_crb_eff"), _series(rows, BOTH, "sigma_crb_eff")
    assert np.all(eff_both < eff_low)
    assert np.allclose(_series(rows, BOTH, "recovery"), eff_low / eff_both)
    assert np.all(np.isnan(_series(rows, LOW, "recovery")))


def test_a_narrow_prior_gives_back_the_fixed_bound(tables):
    for r in luminosity_bounds(N, prior_scale=1e-6, tables=tables):
        assert r["sigma_crb_eff"] == pytest.approx(r["sigma_crb"], rel=1e-6)


def test_without_high_q2_only_the_low_window_is_computed(tables):
    assert {r["windows"] for r in luminosity_bounds((2000,), high_q2=False, tables={LOW: tables[LOW]})} == {LOW}


@pytest.mark.parametrize("level", ["det", "det_bkg"])
def test_the_detector_levels_give_bounds_too(tables, level):
    gen = luminosity_bounds((24_000,), tables=tables)
    det = luminosity_bounds((24_000,), level=level, tables=tables)
    for g, d in zip(gen, det):
        assert d["level"] == level and d["sigma_crb_eff"] >= d["sigma_crb"] > 0
        assert d["sigma_crb"] != pytest.approx(g["sigma_crb"])


def test_the_command_writes_the_csv_and_the_figure(tmp_path, monkeypatch, small_table, capsys):
    monkeypatch.setattr(nuisances, "nuisance_table", small_table)
    out = tmp_path / "new" / "bounds.csv"
    assert main(["bounds", "--events", "2000,24000", "--out", str(out), "--quiet"]) == 0
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == list(BOUNDS_COLUMNS)
    assert [(r["windows"], int(r["n_events"])) for r in got] == [(LOW, 2000), (LOW, 24000), (BOTH, 2000), (BOTH, 24000)]
    assert got[0]["recovery"] == "nan" and float(got[2]["recovery"]) > 1
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = capsys.readouterr().out
    assert "σ eff" in shown and "eff/fixed" in shown and "…" not in shown  # no column cut on an 80-column terminal


@pytest.mark.parametrize("args, message", [
    (["--events", "0"], "'0' is not a positive integer number of events"),
    (["--events", "2000,-5"], "'-5' is not a positive integer number of events"),
    (["--events", "2000,1.5"], "'1.5' is not a positive integer"),
    (["--events", "2000,lots"], "'lots' is not a positive integer"),
    (["--events", "2000,2000"], "appears twice"),
    (["--prior-scale", "0"], "--prior-scale must be a finite number > 0"),
    (["--prior-scale", "-1"], "--prior-scale must be a finite number > 0"),
    (["--prior-scale", "nan"], "--prior-scale must be a finite number > 0"),
    (["--prior-scale", "inf"], "--prior-scale must be a finite number > 0"),
    (["--dc9", "nan"], "not a finite number"),
    (["--dc9", "inf"], "not a finite number"),
    (["--level", "reco"], "'reco' is not one of"),
    (["--out", "{tmp}/bounds.txt"], "must end in .csv"),
    (["--out", "{tmp}/a-file/bounds.csv"], "a-file: exists and is not a directory"),
    (["--out", "{tmp}/a-dir.csv"], "is a directory, not a file"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    def never(*_a, **_k):
        raise AssertionError("a table was built for a bad input")

    monkeypatch.setattr(nuisances, "nuisance_table", never)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir.csv").mkdir()
    before = sorted(tmp_path.rglob("*"))
    argv = ["bounds", "--out", str(tmp_path / "out" / "bounds.csv")] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wcscan: error: ") and message in err
    assert sorted(tmp_path.rglob("*")) == before


def test_help_explains_the_command_with_examples(capsys):
    assert main(["bounds", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "wcscan bounds --events 1000,10000,100000" in out and "recovery" in out
    assert main(["--help"]) == 0
    assert "wcscan bounds --out out/bounds.csv" in capsys.readouterr().out


# --- the power corrections profiled too -----------------------------------------------------------------------------

PC = ("B0->K*0 delta_C7 a_0 Re", "B0->K*0 delta_C7 b_- Re", "B0->K*0 deltaC9 c_- Re")


@pytest.fixture(scope="module")
def small_amplitudes(tmp_path_factory):
    """``amplitude_table`` with three form factors and the given power corrections that act in the windows."""
    from kernels import amplitudes

    cache, real = tmp_path_factory.mktemp("amp-cache"), amplitudes.amplitude_table

    def build(c, w, ff, **kw):
        return real(c, w, FF, [p for p in PC if p in amplitudes.power_corrections(w)], spacing=0.25, cache=cache)

    return build


@pytest.fixture(scope="module")
def pc_rows(small_amplitudes):
    tables = {label: small_amplitudes(["C9_bsmumu"], w, "bsz") for label, w in
              ((LOW, LOW_WINDOWS), (BOTH, LOW_WINDOWS + (HIGH_WINDOW,)))}
    return luminosity_bounds(N, tables=tables, power_corrections=True)


def test_profiling_the_power_corrections_too_widens_the_bound_further(pc_rows, rows):
    for r, plain in zip(pc_rows, rows):
        assert r["sigma_crb_eff_pc"] > r["sigma_crb_eff"] >= r["sigma_crb"]
        assert r["pc_over_fixed"] == pytest.approx(r["sigma_crb_eff_pc"] / r["sigma_crb"])
        # the form-factor bound is the same from the amplitude tables as from the bi-quadratic ones
        assert r["sigma_crb_eff"] == pytest.approx(plain["sigma_crb_eff"], rel=1e-6)
        assert r["sigma_crb"] == pytest.approx(plain["sigma_crb"], rel=1e-6)
    assert np.all(np.isnan(_series(pc_rows, LOW, "recovery_pc")))
    assert np.allclose(_series(pc_rows, BOTH, "recovery_pc"),
                       _series(pc_rows, LOW, "sigma_crb_eff_pc") / _series(pc_rows, BOTH, "sigma_crb_eff_pc"))


def test_without_power_corrections_their_columns_are_nan(rows):
    assert all(math.isnan(r[c]) for r in rows for c in ("sigma_crb_eff_pc", "pc_over_fixed", "recovery_pc"))


def test_form_factor_tables_are_refused_for_power_corrections(tables):
    with pytest.raises(ConfigError, match="hold no power corrections"):
        luminosity_bounds((2000,), tables=tables, power_corrections=True)


def test_the_command_profiles_the_power_corrections(tmp_path, monkeypatch, small_amplitudes, capsys):
    from kernels import amplitudes

    monkeypatch.setattr(amplitudes, "amplitude_table", small_amplitudes)
    out = tmp_path / "pc" / "bounds.csv"
    assert main(["bounds", "--events", "2000,24000", "--power-corrections", "--out", str(out), "--quiet"]) == 0
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert all(float(r["sigma_crb_eff_pc"]) > float(r["sigma_crb_eff"]) for r in got)
    shown = capsys.readouterr().out
    assert "σ eff+pc" in shown and "…" not in shown

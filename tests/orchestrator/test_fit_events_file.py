"""``wcscan fit --events-file``: a user's own events (Parquet or ROOT), grouped by truth, fitted like a dataset.

The first part runs on stand-in likelihood kernels (a recording fitter) so it
pins grouping, set cutting, truth handling and the one-line errors without
flavio; the last part fits real events and checks that the events-file path
and the dataset path give the same rows.
"""

from __future__ import annotations

import csv
import math
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kernels
import kernels.theory
from kernels.errors import ConfigError, DatasetError
from kernels.event_store import COLUMNS, load_events
from orchestrator.cli import main
from orchestrator.evaluate.events_file import fit_events_file, read_events_file
from orchestrator.evaluate.fit import POINT_COLUMNS


def events(n: int, seed: int = 0, **extra) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "q2": rng.uniform(1.1, 6.0, n).astype(np.float32),
        "cos_theta_mu": rng.uniform(-1, 1, n).astype(np.float32),
        "cos_theta_k": rng.uniform(-1, 1, n).astype(np.float32),
        "chi": rng.uniform(0, 2 * np.pi, n).astype(np.float32),
    }
    cols.update(extra)
    return cols


def write(path, cols: dict) -> str:
    pq.write_table(pa.table(cols), path)
    return str(path)


# --- stand-in kernels -----------------------------------------------------------


@pytest.fixture
def fitter(monkeypatch):
    """A recording fitter: the estimate of a set is its mean q2; sigma_crb records where it was asked."""
    monkeypatch.setattr(
        kernels.theory, "jtable",
        lambda coefficients, windows, **kw: types.SimpleNamespace(windows=tuple(windows), coefficients=coefficients),
    )
    rec = types.SimpleNamespace(sets=[], crb_at=[])

    def fit_sets(table, arr, model=None, progress=None):
        rec.sets.append(arr)
        for _ in range(arr.shape[0]):
            if progress is not None:
                progress(1)
        m = arr.shape[0]
        return types.SimpleNamespace(values=arr[:, :, 0].mean(axis=1), errors=np.full(m, 0.1),
                                     valid=np.ones(m, bool))

    def sigma_crb(table, shifts, n, model=None):
        rec.crb_at.append(float(shifts[0]))
        return 1.0 / np.sqrt(n)

    mod = types.ModuleType("kernels.likelihood")
    mod.fit_sets, mod.sigma_crb, mod.GEN, mod.PdfModel = fit_sets, sigma_crb, None, None
    monkeypatch.setitem(sys.modules, "kernels.likelihood", mod)
    monkeypatch.setattr(kernels, "likelihood", mod, raising=False)
    return rec


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("wcscan: error: ") and err.count("\n") == 1, err
    return err


# --- grouping and truth ---------------------------------------------------------


def test_rows_are_grouped_by_dc9_in_ascending_order_keeping_the_file_order(tmp_path, fitter):
    dc9 = np.tile([0.5, -1.0], 50)  # interleaved
    cols = events(100, dc9=dc9)
    path = write(tmp_path / "ev.parquet", cols)
    rows = fit_events_file(path, None, events_per_set=10, sets=4, windows=None)
    assert [r["dc9_true"] for r in rows] == [-1.0, 0.5]
    assert [list(r) for r in rows] == [list(POINT_COLUMNS)] * 2
    first, second = fitter.sets
    expected = np.stack([cols[c] for c in COLUMNS], axis=-1)
    np.testing.assert_array_equal(first.reshape(40, 4), expected[dc9 == -1.0][:40])  # consecutive, file order
    np.testing.assert_array_equal(second.reshape(40, 4), expected[dc9 == 0.5][:40])
    assert first.dtype == np.float64 and first.shape == (4, 10, 4)
    assert fitter.crb_at == [-1.0, 0.5]


def test_dc9_column_and_column_map_rename_the_users_columns(tmp_path, fitter):
    cols = events(60, truth=np.repeat([-2.0, 0.0, 1.0], 20))
    cols["Q2"] = cols.pop("q2")
    cols["ctl"] = cols.pop("cos_theta_mu")
    path = write(tmp_path / "mine.parquet", cols)
    rows = fit_events_file(path, {"Q2": "q2", "ctl": "cos_theta_mu"}, 5, 4, dc9_column="truth")
    assert [r["dc9_true"] for r in rows] == [-2.0, 0.0, 1.0]


def test_integer_truth_column_is_accepted(tmp_path, fitter):
    path = write(tmp_path / "ev.parquet", events(40, dc9=np.repeat(np.array([-1, 0], np.int64), 20)))
    assert [r["dc9_true"] for r in fit_events_file(path, None, 10, 2)] == [-1.0, 0.0]


def test_dc9_true_makes_all_rows_one_point_with_that_truth(tmp_path, fitter):
    path = write(tmp_path / "ev.parquet", events(50, dc9=np.repeat([0.0, 1.0], 25)))
    (row,) = fit_events_file(path, None, 10, 5, dc9_true=-0.8)
    assert row["dc9_true"] == -0.8 and row["n_sets"] == 5
    assert math.isclose(row["bias"], row["mean"] + 0.8)
    assert fitter.crb_at == [-0.8]


def test_unknown_truth_gives_nan_bias_columns_and_the_crb_at_the_mean_estimate(tmp_path, fitter):
    path = write(tmp_path / "ev.parquet", events(40))
    (row,) = fit_events_file(path, None, 10, 4)
    assert math.isnan(row["dc9_true"])
    for c in ("bias", "mse", "pull_mean", "pull_width"):
        assert math.isnan(row[c]), c
    for c in ("mean", "sigma", "sigma_crb", "sigma_over_crb"):
        assert math.isfinite(row[c]), c
    assert fitter.crb_at == [pytest.approx(row["mean"])]


def test_too_few_events_names_the_file_the_point_and_the_counts_before_any_fit(tmp_path, fitter):
    path = write(tmp_path / "ev.parquet", events(70, dc9=np.r_[np.zeros(50), np.ones(20)]))
    with pytest.raises(DatasetError, match=r"ev.parquet: point 1 \(dc9=1\) has 20 events, needs 30 \(3 sets x 10"):
        fit_events_file(path, None, 10, 3)
    assert fitter.sets == []
    path = write(tmp_path / "few.parquet", events(20))
    with pytest.raises(DatasetError, match=r"few.parquet: has 20 events, needs 30"):
        fit_events_file(path, None, 10, 3)


def test_events_outside_the_q2_windows_are_refused_and_other_windows_accepted(tmp_path, fitter):
    cols = events(40)
    cols["q2"] = np.linspace(15.5, 18.5, 40).astype(np.float32)
    path = write(tmp_path / "high.parquet", cols)
    with pytest.raises(DatasetError, match=r"high.parquet: column 'q2' has 40 value\(s\) outside the q2 window"):
        fit_events_file(path, None, 10, 2)
    (row,) = fit_events_file(path, None, 10, 2, windows=[(15.0, 19.0)])
    assert row["n_sets"] == 2


@pytest.mark.parametrize(
    "kwargs, err, fragment",
    [
        (dict(dc9_column="dc9", dc9_true=0.0), ConfigError, "not both"),
        (dict(dc9_true=float("nan")), ConfigError, "--dc9-true must be finite"),
        (dict(column_map={"x": "dc9"}, dc9_column="dc9"), ConfigError, "name two truth columns"),
        (dict(windows=[(7.0, 12.0)]), ConfigError, "charmonium"),
        (dict(level="reco"), ConfigError, "--level must be one of"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, fitter, kwargs, err, fragment):
    cols = events(20, dc9=np.zeros(20), x=np.zeros(20))
    path = write(tmp_path / "ev.parquet", cols)
    with pytest.raises(err, match=fragment):
        fit_events_file(path, kwargs.pop("column_map", None), 5, 2, **kwargs)


def test_a_column_map_that_names_two_columns_alike_is_refused(tmp_path, fitter):
    cols = events(20)
    cols["Q2"] = cols["q2"]
    path = write(tmp_path / "ev.parquet", cols)
    with pytest.raises(DatasetError, match=r"ev.parquet: two columns are named 'q2'.*20 rows"):
        read_events_file(path, {"Q2": "q2"})


# --- the command line -----------------------------------------------------------


def fit_args(*extra) -> list[str]:
    return ["fit", "--events-per-set", "10", "--sets", "3", *extra]


def test_cli_fits_an_events_file_and_writes_the_csv_and_figure(tmp_path, fitter, capsys):
    path = write(tmp_path / "ev.parquet", events(90, dc9=np.repeat([-1.0, 0.0, 1.0], 30)))
    out = tmp_path / "fit.csv"
    assert main(fit_args("--events-file", path, "--out", str(out))) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dc9_true"]) for r in rows] == [-1.0, 0.0, 1.0]
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"
    assert "pull sd" in capsys.readouterr().out


def test_cli_negative_dc9_true_and_unknown_truth_csv_without_figure(tmp_path, fitter, capsys):
    path = write(tmp_path / "ev.parquet", events(30))
    assert main(fit_args("--events-file", path, "--dc9-true", "-1.5")) == 0
    assert "-1.500" in capsys.readouterr().out
    out = tmp_path / "fit.csv"
    assert main(fit_args("--events-file", path, "--out", str(out))) == 0
    (row,) = list(csv.DictReader(open(out, newline="")))
    assert row["dc9_true"] == "nan" and row["bias"] == "nan"
    assert not (tmp_path / "fit.png").exists()
    assert "truth is unknown" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda n: events(n, q2=np.where(np.arange(n) % 10 == 0, np.nan, 3.0).astype(np.float32)),
         "column 'q2' has 4 non-finite or null value(s)"),
        (lambda n: events(n, cos_theta_k=np.where(np.arange(n) < 3, 1.5, 0.2).astype(np.float32)),
         "column 'cos_theta_k' has 3 value(s) outside [-1, 1]"),
        (lambda n: events(n, chi=np.full(n, -0.5, np.float32)),
         "column 'chi' has 40 value(s) outside [0, 2 pi]"),
        (lambda n: {k: v for k, v in events(n).items() if k != "cos_theta_mu"},
         "missing column 'cos_theta_mu' (40 rows;"),
        (lambda n: events(n, cos_theta_mu=np.array(["0.1"] * n)),
         "column 'cos_theta_mu' has type string, expected floating point (40 rows affected)"),
        (lambda n: events(n, dc9=np.array(["sm"] * n)),
         "column 'dc9' has type string, expected a number (40 rows affected)"),
        (lambda n: events(n, dc9=np.where(np.arange(n) < 2, np.nan, 0.0)),
         "column 'dc9' has 2 non-finite or null value(s) of 40 rows"),
    ],
)
def test_cli_invalid_events_exit_2_with_one_line_naming_file_column_and_rows(tmp_path, fitter, capsys, make,
                                                                              fragment):
    path = write(tmp_path / "bad.parquet", make(40))
    assert main(fit_args("--events-file", path)) == 2
    err = one_line_error(capsys)
    assert "bad.parquet: " in err and fragment in err
    assert fitter.sets == []


def test_cli_truth_column_problems_name_the_users_column(tmp_path, fitter, capsys):
    path = write(tmp_path / "bad.parquet", events(40, truth=np.full(40, np.inf)))
    assert main(fit_args("--events-file", path, "--dc9-column", "truth")) == 2
    assert "bad.parquet: column 'truth' (dc9) has 40 non-finite" in one_line_error(capsys)


def test_cli_corrupt_and_missing_files_exit_2_with_one_line_naming_them(tmp_path, fitter, capsys):
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"\x00garbage, not parquet\xff" * 50)
    assert main(fit_args("--events-file", str(bad))) == 2
    assert "corrupt.parquet: cannot read Parquet file" in one_line_error(capsys)
    assert main(fit_args("--events-file", str(tmp_path / "absent.parquet"))) == 2
    assert "absent.parquet: no such file" in one_line_error(capsys)


def test_cli_column_map_naming_an_absent_column_is_one_line(tmp_path, fitter, capsys):
    path = write(tmp_path / "ev.parquet", events(30))
    assert main(fit_args("--events-file", path, "--column-map", "q2=Q2")) == 2
    assert "ev.parquet: column map names column(s) 'Q2' not in the file" in one_line_error(capsys)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ((), "give exactly one of --dataset, --events-file"),
        (("--dataset", "D", "--events-file", "F"), "give exactly one of --dataset, --events-file"),
        (("--dataset", "D", "--column-map", "q2=Q2"), "--column-map only go with --events-file"),
        (("--dataset", "D", "--dc9-true", "0"), "--dc9-true only go with --events-file"),
        (("--dataset", "D", "--q2-window", "1,6"), "--q2-window only go with --events-file"),
        (("--events-file", "F", "--dc9-column", "x", "--dc9-true", "0"), "not both"),
        (("--events-file", "F", "--dc9-true", "inf"), "not a finite number"),
    ],
)
def test_cli_bad_option_combinations_exit_2_with_one_line(tmp_path, capsys, extra, fragment):
    assert main(fit_args(*extra)) == 2
    assert fragment in one_line_error(capsys)


def test_cli_help_lists_the_events_file_options(capsys):
    assert main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--events-file", "--column-map", "--dc9-column", "--dc9-true", "--q2-window", "wcscan[root]"):
        assert option in text


# --- ROOT ntuples -------------------------------------------------------------------


def test_root_file_without_uproot_is_one_line_telling_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uproot", None)  # import uproot raises ImportError
    with pytest.raises(DatasetError, match=r"ev.root:events: reading ROOT files needs uproot: pip install 'wcscan\[root\]'"):
        load_events(tmp_path / "ev.root:events")
    assert main(fit_args("--events-file", str(tmp_path / "ev.root"))) == 2
    assert "pip install 'wcscan[root]'" in one_line_error(capsys)


@pytest.fixture
def root_file(tmp_path):
    uproot = pytest.importorskip("uproot")
    cols = events(60, seed=3, dc9=np.repeat([-1.0, 0.0], 30))
    path = tmp_path / "ntuple.root"
    with uproot.recreate(path) as f:
        f.mktree("meta", {"run": np.int32})
        f["meta"].extend({"run": np.array([1], np.int32)})
        f.mktree("events", {"Q2": np.float32, "ctl": np.float32, "cos_theta_k": np.float32, "chi": np.float64,
                            "dc9": np.float64})
        f["events"].extend({"Q2": cols["q2"], "ctl": cols["cos_theta_mu"], "cos_theta_k": cols["cos_theta_k"],
                            "chi": cols["chi"].astype(np.float64), "dc9": cols["dc9"]})
    return path, cols


def test_root_tree_is_read_by_name_with_the_column_map(root_file):
    path, cols = root_file
    t = load_events(f"{path}:events", {"Q2": "q2", "ctl": "cos_theta_mu"})
    assert t.num_rows == 60 and set(COLUMNS) <= set(t.column_names)
    np.testing.assert_array_equal(t.column("q2").to_numpy(), cols["q2"])
    np.testing.assert_array_equal(t.column("cos_theta_mu").to_numpy(), cols["cos_theta_mu"])


def test_root_without_a_tree_name_reads_the_first_tree(root_file):
    path, _ = root_file
    assert load_events(path).column_names == ["run"]  # 'meta' comes first in the file


def test_root_names_an_absent_tree_and_a_corrupt_file_in_one_line(root_file, tmp_path):
    path, _ = root_file
    with pytest.raises(DatasetError, match=r"no TTree 'nope' \(trees: meta, events\)"):
        load_events(f"{path}:nope")
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(DatasetError, match=r"bad.root: cannot read ROOT file \(not a ROOT file") as info:
        load_events(bad)
    assert "\n" not in str(info.value)


def test_cli_fits_a_root_ntuple(root_file, fitter, capsys, tmp_path):
    path, _ = root_file
    out = tmp_path / "fit.csv"
    code = main(fit_args("--events-file", f"{path}:events", "--column-map", "q2=Q2,cos_theta_mu=ctl",
                         "--out", str(out)))
    assert code == 0, capsys.readouterr().err
    assert [float(r["dc9_true"]) for r in csv.DictReader(open(out, newline=""))] == [-1.0, 0.0]


# --- real kernels: the same fit as the dataset path -------------------------------------


@pytest.mark.slow
def test_real_fit_of_an_events_file_equals_the_fit_of_the_same_dataset(tmp_path):
    from kernels.event_store import read_manifest, read_point
    from orchestrator.evaluate.fit import fit_dataset
    from orchestrator.generate.dataset import generate

    ds = tmp_path / "ds"
    generate(ds, [-1.0, 0.5], 4_000, 3, [(1.1, 6.0)], chunk_size=1_500)
    manifest = read_manifest(ds)
    table = pa.concat_tables([read_point(ds, manifest, "gen", i) for i in (0, 1)])
    renamed = table.rename_columns(["Q2" if c == "q2" else c for c in table.column_names])
    path = tmp_path / "mine.parquet"
    pq.write_table(renamed, path)
    expected = fit_dataset(ds, events_per_set=1_000, sets=4)
    got = fit_events_file(path, {"Q2": "q2"}, events_per_set=1_000, sets=4)
    assert got == expected
    for row in got:  # and the fit is sane: within 5 sigma of the truth, near the CRB
        assert abs(row["bias"]) < 5 * row["sigma_crb"]
        assert 0.3 < row["sigma_over_crb"] < 3


def test_images_from_a_root_tree_record_the_files_hash(root_file, tmp_path, capsys):
    import hashlib

    from kernels.image_store import read_image_manifest

    path, _ = root_file
    out = tmp_path / "images"
    code = main(["images", "--events-file", f"{path}:events", "--column-map", "q2=Q2,cos_theta_mu=ctl",
                 "--bins", "4", "--events-per-image", "10", "--images-per-point", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    manifest = read_image_manifest(out)
    assert [p["shifts"]["dc9"] for p in manifest["points"]] == [-1.0, 0.0]
    assert manifest["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

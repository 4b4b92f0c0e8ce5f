"""Scans over several Wilson coefficients: `wcscan generate --shift`, the joint `wcscan fit`, and the joint bounds.

Real kernels (flavio's tables over delta C9 x delta C10, cached), small samples.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kernels.design import grid
from kernels.event_store import MANIFEST, read_event_manifest, read_point
from orchestrator.cli import main
from orchestrator.generate.dataset import generate

WINDOWS = [(1.1, 6.0)]
C9C10 = {"dc9": [-1.0, 0.0], "dc10": [0.0, 0.5]}


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def c9c10_dataset(tmp_path_factory) -> Path:
    """A 2 x 2 grid in (delta C9, delta C10), 8000 events per point in two parts, made in this process."""
    out = tmp_path_factory.mktemp("c9c10") / "events"
    generate(out, None, 8000, 4, WINDOWS, chunk_size=5000, workers=0, design=grid(C9C10))
    return out


def test_a_grid_in_two_coefficients_writes_one_column_per_shift_and_the_vectors_in_the_manifest(c9c10_dataset):
    m = read_event_manifest(c9c10_dataset)
    assert m.coefficients == ("C9_bsmumu", "C10_bsmumu") and m.shift_columns == ("dc9", "dc10")
    assert m.shifts().tolist() == [[-1.0, 0.0], [-1.0, 0.5], [0.0, 0.0], [0.0, 0.5]]
    assert m.raw["config"]["shifts"] == m.shifts().tolist()
    assert m.raw["config"]["design"] == {"kind": "grid", "axes": C9C10}
    assert [p["seed"] for p in m.points] == [[4, i] for i in range(4)]
    ev = read_point(c9c10_dataset, m.raw, "gen", 1)
    assert ev.num_rows == 8000 and ev.column("dc9").to_pylist()[:2] == [-1.0, -1.0]
    assert set(ev.column("dc10").to_pylist()) == {0.5}
    with pytest.raises(Exception, match="scans dc9, dc10; this stage takes a delta C9-only dataset"):
        m.dc9  # noqa: B018  (the delta C9-only stages refuse it in one line)


def test_the_nd_dataset_is_the_same_bytes_on_two_ray_workers_and_resumes(c9c10_dataset, ray_local, tmp_path):
    out = tmp_path / "ray"
    generate(out, None, 8000, 4, WINDOWS, chunk_size=5000, workers=2, design=grid(C9C10))
    assert _bytes(out) == _bytes(c9c10_dataset)
    assert json.loads((out / MANIFEST).read_text()) == json.loads((c9c10_dataset / MANIFEST).read_text())
    victim = sorted(out.rglob("*.parquet"))[3]
    victim.unlink()
    (out / MANIFEST).unlink()
    res = generate(out, None, 8000, 4, WINDOWS, chunk_size=5000, workers=0, design=grid(C9C10))
    assert (res.parts_made, res.parts_kept) == (1, 7)
    assert _bytes(out) == _bytes(c9c10_dataset)


def test_delta_c9_alone_through_shift_is_the_dataset_of_dc9(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["generate", "--dc9", "-1:1:3", "--events", "500", "--seed", "2", "--workers", "0",
                 "--out", str(a), "-q"]) == 0
    assert main(["generate", "--shift", "C9=-1:1:3", "--events", "500", "--seed", "2", "--workers", "0",
                 "--out", str(b), "-q"]) == 0
    assert _bytes(a) == _bytes(b)
    assert (a / MANIFEST).read_bytes() == (b / MANIFEST).read_bytes()
    assert "shifts" not in json.loads((a / MANIFEST).read_text())["config"]


@pytest.mark.parametrize("args, message", [
    (["--shift", "dc9=-1:1:3", "--shift", "C9=0,1"], "--shift dc9 is given twice"),
    (["--shift", "dc11=0,1"], "unknown Wilson coefficient 'dc11'"),
    (["--shift", "dc9=0,1", "--shift", "dc10=0,1", "--shift", "dc9p=0,1", "--design", "sobol:3"],
     "--shift dc9=0,1: a space-filling design takes LO:HI bounds"),
    (["--shift", "dc9=-1:1", "--shift", "dc10=-1:1", "--shift", "dc9p=-1:1", "--design", "lhs:3"],
     "3 coefficients (dc9, dc10, dc9p) need at least 4 points"),
    (["--shift", "dc9=0,1", "--shift", "dc10=0.5"], "dc10 takes one value"),
    (["--dc9", "0,1", "--shift", "dc10=0,1"], "give the scan points once"),
    (["--dc9", "0,1", "--design", "sobol:4"], "--design goes with --shift"),
    (["--shift", "dc9=0,1", "--design", "sobol"], "expected grid, sobol:N or lhs:N"),
])
def test_bad_scans_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "events"
    assert main(["generate", *args, "--events", "100", "--workers", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_joint_fit_writes_per_coefficient_columns_correlations_and_joint_coverage(c9c10_dataset, tmp_path, capsys):
    out = tmp_path / "fit.csv"
    assert main(["fit", "--dataset", str(c9c10_dataset), "--events-per-set", "2000", "--sets", "4",
                 "--out", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4
    cols = list(rows[0])
    assert cols[:4] == ["dc9_true", "dc10_true", "n_sets", "n_events"]
    for c in ("mean_dc10", "sigma_crb_dc9", "sigma_over_crb_dc10", "coverage_68_dc9", "corr_dc9_dc10",
              "corr_crb_dc9_dc10", "joint_coverage_68", "joint_coverage_95"):
        assert c in cols
    assert [(float(r["dc9_true"]), float(r["dc10_true"])) for r in rows] == [(-1, 0), (-1, 0.5), (0, 0), (0, 0.5)]
    for r in rows:  # the marginal bound (delta C10 free) is wider than delta C9's alone would be, and finite
        assert 0 < float(r["sigma_crb_dc9"]) < float(r["sigma_crb_dc10"])
        assert -1 <= float(r["corr_crb_dc9_dc10"]) <= 1 and 0 <= float(r["joint_coverage_95"]) <= 1
    assert out.with_suffix(".png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "Joint ML fit of dc9, dc10" in text and "corr dc9,dc10" in text


def test_fit_frees_a_coefficient_the_dataset_does_not_scan_and_refuses_to_drop_one_it_does(c9c10_dataset, tmp_path,
                                                                                           capsys):
    from orchestrator.jobs.fit import fit_job

    one = tmp_path / "c9"
    generate(one, [0.0], 4000, 1, WINDOWS, workers=0)
    rows = fit_job(2000, 2, dataset=one, coefficients=["C9", "C10"]).rows
    assert rows[0]["dc10_true"] == 0.0 and rows[0]["n_sets"] == 2 and "corr_dc9_dc10" in rows[0]
    alone = fit_job(2000, 2, dataset=one).rows[0]
    assert rows[0]["sigma_crb_dc9"] > alone["sigma_crb"]  # delta C10 free: a wider bound on delta C9
    out = tmp_path / "x.csv"
    assert main(["fit", "--dataset", str(c9c10_dataset), "--coefficients", "C9", "--events-per-set", "100",
                 "--sets", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "scans dc10 too" in err and not out.exists()
    assert main(["fit", "--dataset", str(one), "--coefficients", "C9,C9_bsmumu", "--events-per-set", "100",
                 "--sets", "1"]) == 2
    assert "listed twice" in capsys.readouterr().err


def _users_file(dataset: Path, path: Path, rename: dict[str, str]) -> Path:
    """The dataset's four points in one Parquet file, interleaved, its columns renamed as a user's might be."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = json.loads((dataset / MANIFEST).read_text())
    parts = [read_point(dataset, manifest, "gen", i).slice(0, 4000) for i in range(4)]
    # interleave the points row by row: the file's order within a point must survive the grouping
    table = pa.concat_tables(parts).take(np.arange(16000).reshape(4, 4000).T.ravel())
    pq.write_table(table.rename_columns([rename.get(c, c) for c in table.column_names]), path)
    return path


def test_a_users_events_are_fitted_jointly_grouped_by_their_truth_vector(c9c10_dataset, tmp_path, capsys):
    from orchestrator.jobs.fit import fit_job

    path = _users_file(c9c10_dataset, tmp_path / "mine.parquet", {"dc10": "c10_gen", "q2": "Q2"})
    expected = fit_job(2000, 2, dataset=c9c10_dataset).rows  # the same events, in the same order per point
    out = tmp_path / "mine.csv"
    assert main(["fit", "--events-file", str(path), "--coefficients", "C9,C10", "--column-map", "dc10=c10_gen,q2=Q2",
                 "--events-per-set", "2000", "--sets", "2", "--out", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(float(r["dc9_true"]), float(r["dc10_true"])) for r in rows] == [(-1, 0), (-1, 0.5), (0, 0), (0, 0.5)]
    assert list(rows[0]) == list(expected[0])
    for got, want in zip(rows, expected):
        for key in ("mean_dc9", "mean_dc10", "sigma_crb_dc10", "corr_crb_dc9_dc10", "joint_coverage_68"):
            assert float(got[key]) == pytest.approx(want[key], rel=1e-12, nan_ok=True), key
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "Joint ML fit of dc9, dc10" in capsys.readouterr().out

    one = tmp_path / "one.parquet"  # one point of known truth, given on the command line
    _users_file(c9c10_dataset, one, {})
    (row,) = fit_job(1000, 2, events_file=str(one), coefficients=["C9", "C10"], truth={"dc9": 0.0, "dc10": 0.5}).rows
    assert (row["dc9_true"], row["dc10_true"]) == (0.0, 0.5) and np.isfinite(row["bias_dc10"])
    (unknown,) = fit_job(1000, 2, events_file=str(_users_file(c9c10_dataset, tmp_path / "u.parquet",
                                                             {"dc9": "a", "dc10": "b"})),
                         coefficients=["C9", "C10"]).rows
    assert np.isnan(unknown["bias_dc9"]) and np.isnan(unknown["joint_coverage_68"])
    assert unknown["sigma_crb_dc10"] > 0  # the bound at the mean estimate


@pytest.mark.parametrize("extra, rename, message", [
    (("--coefficients", "C9,C10"), {"dc10": "x"}, "has a truth column for dc9 but not for dc10"),
    (("--coefficients", "C9,C10", "--dc9-true", "0"), {}, "--dc9-true sets delta C9 alone"),
    (("--coefficients", "C9,C10", "--truth", "dc9=0"), {}, "the fit needs exactly dc9, dc10"),
    (("--coefficients", "C9,C10", "--truth", "dc9=0,dc10=inf"), {}, "not a finite number"),
    (("--coefficients", "C10",), {}, "--coefficients dc10 alone on --events-file"),
    (("--coefficients", "C9,C10", "--column-map", "dc10=q2"), {}, "two columns are named 'dc10'"),
])
def test_bad_joint_events_file_options_are_one_line_exit_2(c9c10_dataset, tmp_path, capsys, extra, rename, message):
    path = _users_file(c9c10_dataset, tmp_path / "mine.parquet", rename)
    out = tmp_path / "x.csv"
    assert main(["fit", "--events-file", str(path), *extra, "--events-per-set", "100", "--sets", "1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_joint_bounds_from_one_fisher_matrix(tmp_path):
    """The joint bounds on small tables (two form factors): alone <= marginal <= profiled, the marginal bound
    is the inverse Fisher matrix's, and a vanishing prior gives back the fixed-theory bound."""
    from kernels import likelihood, nuisances
    from orchestrator.evaluate.bounds import joint_bounds

    ff = ["B->K* BSZ a0_V", "B->K* BSZ a1_V"]
    nt = nuisances.nuisance_table(["C9_bsmumu", "C10_bsmumu"], form_factors=ff, spacing=0.25, cache=tmp_path)
    tables = {"1.1-6.0": nt}
    rows = joint_bounds(["C9", "C10"], [0.0, 0.0], [2000, 24000], high_q2=False, tables=tables)
    assert [(r["n_events"], r["coefficient"]) for r in rows] == [(2000, "dc9"), (2000, "dc10"),
                                                                 (24000, "dc9"), (24000, "dc10")]
    I = likelihood.fisher_information(nt.at(np.zeros(2)), [0.0, 0.0])
    cov = np.linalg.inv(I) / 24000
    for r, i in zip(rows[2:], (0, 1)):
        assert r["sigma_crb_alone"] <= r["sigma_crb"] <= r["sigma_crb_eff"]
        assert r["sigma_crb"] == pytest.approx(np.sqrt(cov[i, i]), rel=1e-9)
        assert r["sigma_crb_alone"] == pytest.approx(1 / np.sqrt(24000 * I[i, i]), rel=1e-9)
    assert rows[2]["corr_crb_dc9_dc10"] == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    assert rows[0]["sigma_crb"] == pytest.approx(rows[2]["sigma_crb"] * np.sqrt(12), rel=1e-9)
    tight = joint_bounds(["C9", "C10"], None, [24000], prior_scale=1e-6, high_q2=False, tables=tables)
    for r in tight:
        assert r["sigma_crb_eff"] == pytest.approx(r["sigma_crb"], rel=1e-6)
    from kernels.errors import ConfigError

    with pytest.raises(ConfigError, match="--at gives 1 value"):
        joint_bounds(["C9", "C10"], [0.0], [2000], tables=tables, high_q2=False)
    with pytest.raises(ConfigError, match="dc9 is listed twice"):
        joint_bounds(["C9", "dc9"], None, [2000], tables=tables, high_q2=False)


def test_cli_bounds_of_several_coefficients_writes_the_csv_and_figure_and_refuses_bad_options(tmp_path, monkeypatch,
                                                                                             capsys):
    """`wcscan bounds --coefficients` end to end, on a two-form-factor table standing in for the 19."""
    from kernels import nuisances

    real = nuisances.nuisance_table
    monkeypatch.setattr(nuisances, "nuisance_table", lambda coeffs, windows, form_factors, **kw: real(
        coeffs, windows, form_factors=["B->K* BSZ a0_V", "B->K* BSZ a1_V"], spacing=0.25, cache=tmp_path / "cache"))
    out = tmp_path / "b" / "bounds.csv"
    assert main(["bounds", "--coefficients", "C9,C10", "--no-high-q2", "--events", "2000,24000", "--out", str(out),
                 "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["n_events"], r["coefficient"]) for r in rows] == [("2000", "dc9"), ("2000", "dc10"), ("24000", "dc9"),
                                                                 ("24000", "dc10")]
    assert list(rows[0])[-2:] == ["corr_crb_dc9_dc10", "corr_crb_eff_dc9_dc10"]
    assert all(float(r["sigma_crb_alone"]) <= float(r["sigma_crb"]) <= float(r["sigma_crb_eff"]) for r in rows)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "corr_crb_eff_dc9_dc10" in capsys.readouterr().out
    for args, message in ((["--coefficients", "C9,C10", "--at", "0"], "--at gives 1 value"),
                          (["--coefficients", "C10"], "only delta C9's bound is studied alone"),
                          (["--at", "0,0"], "--at goes with --coefficients")):
        bad = tmp_path / "bad" / "x.csv"
        assert main(["bounds", *args, "--no-high-q2", "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not bad.exists()

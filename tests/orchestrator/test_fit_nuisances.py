"""``wcscan fit --nuisances bsz``: the profiled fit on a user's events and on a dataset, and its one-line errors.

Three form factors stand in for the 19 (30 flavio calls instead of 630); the code path is the same.
"""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kernels import likelihood, nuisances, profile, sampler
from kernels.event_store import COLUMNS
from kernels.metrics import NUISANCE_COLUMNS, POINT_COLUMNS
from orchestrator.cli import main

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")
DC9, N, M = -0.5, 3000, 8


@pytest.fixture(scope="module")
def small_tables(ff_tables_cache):
    real = nuisances.nuisance_table
    calls = []

    def small(c, w, ff, **kw):
        calls.append(ff)
        return real(c, w, FF, cache=ff_tables_cache, workers=1)

    mp = pytest.MonkeyPatch()
    mp.setattr(nuisances, "nuisance_table", small)
    yield small(["C9_bsmumu"], ((1.1, 6.0),), "bsz"), calls
    mp.undo()


@pytest.fixture(scope="module")
def world_events(small_tables, tmp_path_factory):
    """M sets of N events, each in its own world drawn from the prior, in one Parquet file (sets in order)."""
    nt, _ = small_tables
    worlds = nuisances.draw_worlds(M, nt.n_nuisances, 1.0, seed=9, point=0)
    arr = np.stack([sampler.sample_array(nt.at(u), [DC9], N, (9, k)).T for k, u in enumerate(worlds)])
    path = tmp_path_factory.mktemp("ev") / "mine.parquet"
    pq.write_table(pa.table({c: arr[..., i].reshape(-1) for i, c in enumerate(COLUMNS)}), path)
    return path, arr


def _run(*args) -> int:
    return main(["fit", *map(str, args), "--quiet"])


def test_the_profiled_fit_of_a_users_events(small_tables, world_events, tmp_path):
    nt, calls = small_tables
    path, arr = world_events
    out = tmp_path / "fit.csv"
    code = _run("--events-file", path, "--level", "gen", "--dc9-true", DC9, "--nuisances", "bsz",
                "--events-per-set", N, "--sets", M, "--out", out)
    assert code == 0 and calls[-1] == "bsz"
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(POINT_COLUMNS + NUISANCE_COLUMNS)
    row = rows[0]
    # the row is the kernel's profiled fit of the same sets, against the efficient bound at the truth
    ref = profile.fit_sets_profiled(nt, arr.astype(np.float32).astype(np.float64), prior_scale=1.0)
    assert float(row["mean"]) == pytest.approx(float(np.mean(ref.values)), abs=1e-6)
    I = likelihood.fisher_information_nuisances(nt, [DC9])
    eff = float(likelihood.efficient_bound(I, 1, N, np.eye(nt.n_nuisances))[0][0])
    assert float(row["sigma_crb_eff"]) == pytest.approx(eff, rel=1e-9)
    assert float(row["sigma_crb_eff"]) > float(row["sigma_crb"])
    assert float(row["sigma_over_crb_eff"]) == pytest.approx(float(row["sigma"]) / eff, rel=1e-9)
    assert out.with_suffix(".png").exists()


def test_a_narrower_prior_gives_a_narrower_bound(small_tables, world_events, tmp_path):
    path, _ = world_events
    bounds = []
    for s in ("1.0", "0.1"):
        out = tmp_path / f"fit-{s}.csv"
        assert _run("--events-file", path, "--level", "gen", "--dc9-true", DC9, "--nuisances", "bsz", "--prior-scale", s,
                    "--events-per-set", N, "--sets", 2, "--out", out) == 0
        with open(out, newline="") as fh:
            row = next(csv.DictReader(fh))
        bounds.append((float(row["sigma_crb_eff"]), float(row["sigma_crb"])))
    (wide, fixed), (narrow, fixed2) = bounds
    assert fixed == fixed2 and fixed < narrow < wide


@pytest.mark.parametrize("extra, message", [
    (["--nuisances", "bsz", "--prior-scale", "0"], "--prior-scale must be a finite number > 0"),
    (["--nuisances", "bsz", "--prior-scale", "-1"], "--prior-scale must be a finite number > 0"),
    (["--prior-scale", "2"], "--prior-scale goes with --nuisances bsz"),
    (["--nuisances", "lcsr"], "--nuisances"),
    (["--nuisances", "bsz", "--no-level"], "--nuisances on --events-file needs --level"),
    (["--nuisances", "bsz", "--sets", "99"], "needs 297000"),
])
def test_bad_nuisance_options_are_one_line_errors(small_tables, world_events, tmp_path, capsys, extra, message):
    _, calls = small_tables
    path, _ = world_events
    before = len(calls)
    out = tmp_path / "never" / "fit.csv"
    level = [] if "--no-level" in extra else ["--level", "gen"]
    extra = [e for e in extra if e != "--no-level"]
    sets = [] if "--sets" in extra else ["--sets", str(M)]
    code = _run("--events-file", path, *level, "--dc9-true", DC9, "--events-per-set", N, *sets, *extra, "--out", out)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert len(calls) == before  # refused before any table was built


def test_the_profiled_fit_of_a_dataset(small_tables, tmp_path):
    """A generated dataset (central form factors) fitted with them profiled: the same columns, a wider bound."""
    ds = tmp_path / "events"
    assert main(["generate", "--dc9", "-0.5", "--events", "4000", "--seed", "2", "--out", str(ds), "--workers", "0",
                 "--quiet"]) == 0
    out = tmp_path / "ds.csv"
    assert _run("--dataset", ds, "--nuisances", "bsz", "--events-per-set", 2000, "--sets", 2, "--out", out) == 0
    with open(out, newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["sigma_crb_eff"]) > float(row["sigma_crb"]) > 0


def test_the_power_corrections_profiled_on_a_users_events(world_events, tmp_path, ff_tables_cache, monkeypatch):
    from kernels import amplitudes

    pc = ("B0->K*0 delta_C7 b_- Re",)
    real = amplitudes.amplitude_table
    monkeypatch.setattr(amplitudes, "amplitude_table", lambda c, w, ff, **kw: real(c, w, FF, pc, cache=ff_tables_cache))
    path, arr = world_events
    out = tmp_path / "fit-pc.csv"
    code = _run("--events-file", path, "--level", "gen", "--dc9-true", DC9, "--nuisances", "bsz+pc",
                "--events-per-set", N, "--sets", M, "--out", out)
    assert code == 0
    with open(out, newline="") as fh:
        row = list(csv.DictReader(fh))[0]
    at = real(["C9_bsmumu"], ((1.1, 6.0),), FF, pc, cache=ff_tables_cache)
    ref = profile.fit_sets_profiled(at, arr.astype(np.float32).astype(np.float64), prior_scale=1.0)
    assert float(row["mean"]) == pytest.approx(float(np.mean(ref.values)), abs=1e-6)
    I = likelihood.fisher_information_nuisances(at, [DC9])
    eff = float(likelihood.efficient_bound(I, 1, N, np.eye(at.n_nuisances))[0][0])
    ff_only = float(likelihood.efficient_bound(I[:4, :4], 1, N, np.eye(3))[0][0])
    assert float(row["sigma_crb_eff"]) == pytest.approx(eff, rel=1e-9) and eff > ff_only

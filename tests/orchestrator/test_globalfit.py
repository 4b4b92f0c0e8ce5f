"""`wcscan globalfit` end to end on the demo preset: the contract's outputs, MLflow, the cache, the targets, bad input.

The demo run (6 observables, 20 x 20 grid, Ray with 2 workers) is made once per module into a private cache;
the rerun reads that cache (theory inputs and the flavio check) with flavio's prediction functions and its
likelihood disabled. The demo with ``nuisances: true`` adds the ``chi2_nuisance`` and ``nn_nuisance`` rows.
"""

import csv
import doctest
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.cli import main

PRESETS = Path(__file__).resolve().parents[2] / "orchestrator" / "config" / "presets" / "globalfit"
COLUMNS = ["method", "c9", "c10", "chi2", "delta_chi2", "sigma_c9", "sigma_c10", "seconds"]
METHODS = ["chi2_min", "flavio", "nn", "cgan", "grid_min"]


def _yaml(path: Path) -> dict:
    """A YAML file as plain dicts and lists (flavio makes PyYAML load OrderedDicts, which safe_dump refuses)."""
    return json.loads(json.dumps(yaml.safe_load(path.read_text())))


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return {r["method"]: {k: (v if k == "method" else float(v)) for k, v in r.items()} for r in reader}


def _runs(out: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], {c.info.run_name: c for c in children}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private theory cache for this module ($WCSCAN_CACHE is read by the driver only)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("gf-cache")
    mp.setenv("WCSCAN_CACHE", str(root))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def demo_run(ray_local, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("gf") / "demo"
    code = main(["globalfit", "--config", "demo", "--out", str(out), "--quiet"])
    return code, out


def test_the_demo_runs_end_to_end(demo_run):
    code, out = demo_run
    assert code == 0


def test_the_outputs_follow_the_contract(demo_run):
    _, out = demo_run
    rows = _rows(out)
    assert list(rows) == METHODS  # chi2_min, flavio, nn, cgan first; grid_min beside them
    assert rows["chi2_min"]["delta_chi2"] == 0.0
    assert all(np.isfinite(list(r.values())[1:]).all() for r in rows.values())
    grid = pq.read_table(out / "chi2_grid.parquet")
    assert grid.column_names == ["c9", "c10", "chi2"] and grid.num_rows == 400
    assert min(grid.column("chi2").to_numpy()) >= rows["chi2_min"]["chi2"] - 1e-9  # MIGRAD beats every node
    samples = pq.read_table(out / "cgan_samples.parquet")
    assert samples.column_names == ["c9", "c10"] and samples.num_rows == 2000
    report = (out / "report.md").read_text()
    assert "| method | C9 | C10 | χ² | Δχ² to min | σ(C9) | σ(C10) | seconds |" in report
    assert "(-0.92, +0.10), χ² 30.67" in report  # the paper beside today
    for fig in ("contours", "observables"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
        assert f"figures/{fig}.png" in report


def test_mlflow_has_a_parent_and_one_child_per_method(demo_run):
    _, out = demo_run
    parent, children = _runs(out)
    assert parent.data.tags["kind"] == "globalfit" and len(parent.data.tags["observable_set_key"]) == 64
    assert parent.data.params["grid.chunk"] == "50"
    assert sorted(children) == sorted(METHODS)
    for name, child in children.items():
        assert {"c9", "c10", "chi2", "delta_chi2", "seconds"} <= set(child.data.metrics), name
    assert "coverage" in children["cgan"].data.metrics and "asimov_max_abs_error" in children["nn"].data.metrics


def test_the_demo_meets_the_issue_targets(demo_run):
    _, out = demo_run
    rows = _rows(out)
    best, flavio = rows["chi2_min"], rows["flavio"]
    assert abs(flavio["c9"] - best["c9"]) < 0.05 and abs(flavio["c10"] - best["c10"]) < 0.05
    assert abs(flavio["chi2"] - best["chi2"]) < 0.5
    assert rows["nn"]["delta_chi2"] <= 1.0
    assert rows["cgan"]["delta_chi2"] <= 2.30  # the sample mean is inside the 68% contour
    _, children = _runs(out)
    assert children["nn"].data.metrics["asimov_max_abs_error"] < 0.1  # Asimov data at 3 truths
    assert abs(children["cgan"].data.metrics["coverage"] - 0.68) <= 0.1  # 3 binomial sigma at 200 experiments


def test_a_rerun_reads_the_cache_and_calls_no_flavio_prediction(demo_run, tmp_path, monkeypatch):
    from kernels import chi2, observables

    def refuse(*args, **kwargs):
        raise AssertionError("the cached rerun called flavio's predictions")

    for name in ("predict", "theory_covariance", "fit_surrogate"):
        monkeypatch.setattr(observables, name, refuse)
    monkeypatch.setattr(chi2, "flavio_likelihood_chi2", refuse)  # the flavio check, too, comes from the cache
    _, first = demo_run
    out = tmp_path / "again"
    assert main(["globalfit", "--config", "demo", "--out", str(out), "--workers", "0", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert "all read from the cache" in report and "Read from the cache (computed in" in report
    a, b = _rows(first), _rows(out)
    for method in ("chi2_min", "flavio", "nn", "cgan", "grid_min"):  # the same numbers, flavio's own included
        assert {k: v for k, v in a[method].items() if k != "seconds"} == {k: v for k, v in b[method].items() if k != "seconds"}


@pytest.fixture(scope="module")
def demo_yardstick(demo_run):
    """The demo's chi^2 yardstick, its theory inputs read from the module's cache (no Ray, no flavio call)."""
    from kernels.observables import experimental, load_observable_set
    from orchestrator.config.globalfit import load_globalfit_config
    from orchestrator.evaluate.globalfit import yardstick
    from orchestrator.generate.predictions import theory_inputs

    cfg = load_globalfit_config("demo")
    obs_set = load_observable_set(cfg.observables)
    tc, sc = cfg.theory_covariance, cfg.surrogate
    inputs = theory_inputs(obs_set, cfg.grid.c9, cfg.grid.c10, draws=tc.draws, seed=tc.seed, chunks=tc.chunks,
                           surrogate=sc.model_dump(exclude={"enabled"}), chunk=cfg.grid.chunk, workers=0)
    assert all(inputs.cached.values())
    return yardstick(inputs, *experimental(obs_set))[0]


def test_the_flavio_check_is_cached_by_its_inputs(demo_yardstick, tmp_path, monkeypatch):
    """A second call with the same inputs reads the first one's result (flavio would raise); another n_exp or seed
    does not; a result computed under a random PYTHONHASHSEED is not written."""
    from orchestrator.evaluate import globalfit as ev

    y, calls = demo_yardstick, []

    def fake(obs_set, points, theory_cov, experimental, n_exp, seed, hashseed="0"):
        calls.append((n_exp, seed))
        u = points - points[4]
        return y.chi2(points) + 0.3 + 0.1 * u[:, 0] - 0.2 * u[:, 1] ** 2, 0.01, 2.5, hashseed

    def refuse(*args):
        raise AssertionError("the cached flavio check ran again")

    def check(n_exp=100, seed=0, use_ray=False):
        return ev.start_flavio_check(y, n_exp, 1.0, seed, use_ray, cache=tmp_path)()

    monkeypatch.setattr(ev, "_flavio_chi2", fake)
    first = check()
    assert calls == [(100, 0)] and first.metrics["cached"] == 0.0 and first.metrics["written_to_cache"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == [Path(first.params["cache"]).name]
    assert first.c9 != y.fit.c9 and first.chi2 == pytest.approx(y.fit.chi2_min + 0.3, abs=0.05)  # the fake's offset

    monkeypatch.setattr(ev, "_flavio_chi2", refuse)
    for use_ray in (False, True):  # read on the driver: no task is submitted either
        again = check(use_ray=use_ray)
        assert again.metrics["cached"] == 1.0 and again.metrics["seconds_computed"] == 2.5
        assert (again.c9, again.c10, again.chi2, again.sigma_c9) == (first.c9, first.c10, first.chi2, first.sigma_c9)

    monkeypatch.setattr(ev, "_flavio_chi2", fake)
    check(n_exp=200)
    check(seed=1)
    assert calls[1:] == [(200, 0), (100, 1)] and len(list(tmp_path.iterdir())) == 3

    monkeypatch.setattr(ev, "_flavio_chi2", lambda *a: fake(*a, hashseed=None))
    unfixed = check(n_exp=300)
    assert unfixed.metrics["written_to_cache"] == 0.0 and len(list(tmp_path.iterdir())) == 3


#: The demo with the hadronic nuisances on; its token cGAN and no flavio check keep it to seconds.
NUISANCE_METHODS = ["chi2_min", "nn", "nn_nuisance", "cgan", "grid_min", "chi2_nuisance"]


@pytest.fixture(scope="module")
def nuisance_run(demo_run, tmp_path_factory):
    """``nuisances: true`` on the demo (theory inputs from the module's cache, no Ray)."""
    root = tmp_path_factory.mktemp("gf-nuisances")
    cfg = root / "nuisances.yaml"
    cfg.write_text(yaml.safe_dump({
        **_yaml(PRESETS / "demo.yaml"), "name": "demo-nuisances", "nuisances": True, "flavio_check": {"enabled": False},
        "cgan": {"hidden": 16, "layers": 2, "epochs": 2, "noise_draws": 1}, "cgan_samples": 200,
        "coverage": {"pseudo_experiments": 20, "samples": 50, "level": 0.68}}))
    out = root / "out"
    assert main(["globalfit", "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"]) == 0
    return out


def test_nuisances_add_the_profiled_and_the_learned_rows(nuisance_run):
    rows = _rows(nuisance_run)
    assert list(rows) == NUISANCE_METHODS
    assert all(np.isfinite(list(r.values())[1:]).all() for r in rows.values())
    _, children = _runs(nuisance_run)
    assert sorted(children) == sorted(NUISANCE_METHODS)
    assert "## NN inverse map with the hadronic nuisances" in (nuisance_run / "report.md").read_text()


def test_nn_nuisance_recovers_asimov_truths_and_matches_the_profiled_fit(nuisance_run):
    rows = _rows(nuisance_run)
    _, children = _runs(nuisance_run)
    m = children["nn_nuisance"].data.metrics
    assert m["n_nuisances"] == 6  # (a0, a1, a2) for <P2> and for <P5p>
    # (C9, C10) on Asimov data at the 3 truths, the nuisances at 0: the nn's target
    assert m["asimov_max_abs_error"] < 0.1
    # the nuisances drawn from their priors: against the exact posterior mean of the linearised model
    assert m["asimov_shifted_max_abs_error_vs_exact"] < 0.1
    # on the data: near the chi2_nuisance minimum, with its widths
    assert m["delta_chi2_nuisance"] <= 1.0
    assert 0.8 < m["sigma_c9_over_nuisance_hesse"] < 1.25 and 0.8 < m["sigma_c10_over_nuisance_hesse"] < 1.25
    assert rows["nn_nuisance"]["chi2"] == pytest.approx(rows["chi2_nuisance"]["chi2"] + m["delta_chi2_nuisance"])
    # the nuisances' own estimates and widths beside the exact ones (demo: the data barely see them, both ~ prior)
    assert abs(m["nuisance_mean_abs_error_over_prior"] - m["nuisance_exact_mean_abs_error_over_prior"]) < 0.1
    assert abs(m["nuisance_sigma_over_prior"] - m["nuisance_exact_sigma_over_prior"]) < 0.1


def test_direct_predictions_on_ray_match_the_surrogate_grid(demo_run, cache, tmp_path):
    """The surrogate-free path: every grid point a direct flavio call in a Ray item; the table equals the closed forms."""
    from kernels.observables import load_observable_set
    from orchestrator.generate.predictions import theory_inputs

    (path,) = (cache / "globalfit").glob("grid-*.parquet")  # the demo's, from the surrogate
    closed = pq.read_table(path).to_pandas().set_index(["c9", "c10"])
    c9, c10 = (sorted(set(closed.index.get_level_values(k)))[::9] for k in ("c9", "c10"))  # nodes 0, 9, 18
    obs_set = load_observable_set(PRESETS / "observables-demo.yaml")
    inputs = theory_inputs(obs_set, c9, c10, draws=4, chunks=2, surrogate=None, chunk=3, workers=2, cache=tmp_path)
    assert inputs.surrogate is None and not any(inputs.cached.values())
    expected = closed.loc[[tuple(p) for p in inputs.points]].to_numpy()
    assert np.max(np.abs(inputs.grid - expected) / np.abs(closed.to_numpy()).max(0)) < 1e-6
    assert inputs.theory_cov.shape == (6, 6) and inputs.theory_cov_halves.shape == (2, 6, 6)


def _demo_set(tmp_path, edit) -> Path:
    doc = _yaml(PRESETS / "observables-demo.yaml")
    edit(doc)
    obs = tmp_path / "set.yaml"
    obs.write_text(yaml.safe_dump(doc))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({**_yaml(PRESETS / "demo.yaml"), "observables": "set.yaml"}))
    return cfg


def _files(root: Path) -> set:
    return set(root.rglob("*"))


def _refused(capsys, args, match, out, cache):
    before = _files(cache)
    code = main(["globalfit", *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("wcscan: error: ") and err.count("\n") == 1 and match in err, err
    assert not Path(out).exists() and _files(cache) == before  # nothing written, to OUT or to the cache


def test_an_unknown_observable_is_one_line_and_writes_nothing(tmp_path, capsys, cache):
    cfg = _demo_set(tmp_path, lambda d: d["observables"][2].update(observable="<P9p>(B0->K*mumu)"))
    _refused(capsys, ["--config", str(cfg)], "observables[2]: flavio knows no observable '<P9p>(B0->K*mumu)'",
             tmp_path / "out", cache)


def test_a_measurement_that_constrains_no_listed_observable_is_refused(tmp_path, capsys, cache):
    cfg = _demo_set(tmp_path, lambda d: d["measurements"].append("LHCb B0->Kmumu BR 2014"))
    _refused(capsys, ["--config", str(cfg)], "measurements[4]: 'LHCb B0->Kmumu BR 2014' constrains none",
             tmp_path / "o", cache)


def test_a_singular_covariance_names_the_entry(tmp_path, capsys, monkeypatch, cache):
    import flavio

    from kernels import observables

    real = observables._moments
    rk = flavio.Measurement["LHCb RK RK* 2022"]._parameters[("<Rmue>(B+->Kll)", 1.1, 6.0)][1]

    def degenerate(dist, positions):  # R_K and R_K*: 100% correlated with equal errors
        mean, cov = real(dist, positions)
        return (mean, np.full((2, 2), cov[0, 0])) if dist is rk else (mean, cov)

    monkeypatch.setattr(observables, "_moments", degenerate)
    _refused(capsys, ["--config", "demo"], "singular at <Rmue>(B0->K*ll) [1.1, 6] (experimental)", tmp_path / "o", cache)


def test_a_bad_out_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    code = main(["globalfit", "--config", "demo", "--out", str(target / "sub"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a file, not a directory" in err


@pytest.mark.parametrize("edit, match", [
    ({"nn": {"epochs": 0}}, "nn: InverseMapConfig: epochs must be an integer >= 1"),
    ({"cgan": {"widht": 3}}, "cgan: got an unexpected keyword argument 'widht'"),
    ({"asimov": [[0.5, 0.0]]}, "asimov truth (0.5, 0.0) is not inside the grid"),
    ({"theory_covariance": {"draws": 9, "chunks": 3}}, "chunks must be even"),
    ({"grid": {"c9": "0:-2:5"}}, "grid.c9: needs at least 3 strictly increasing values"),
    ({"observables": "no-such-set"}, "observables: no file 'no-such-set'; shipped sets: observables-demo"),
])
def test_a_config_that_does_not_validate_is_one_line(tmp_path, capsys, cache, edit, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**_yaml(PRESETS / "demo.yaml"), **edit}))
    _refused(capsys, ["--config", str(cfg)], match, tmp_path / "o", cache)


def test_the_docstring_examples_run():
    from orchestrator.generate import predictions

    assert doctest.testmod(predictions).failed == 0

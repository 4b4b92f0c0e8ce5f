"""`wcscan globalfit` end to end on the demo preset: the contract's outputs, MLflow, the cache, the targets, bad input.

The demo run (6 observables, 20 x 20 grid, Ray with 2 workers) is made once per module into a private cache;
the rerun reads that cache with flavio's prediction functions disabled.
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
    from kernels import observables

    def refuse(*args, **kwargs):
        raise AssertionError("the cached rerun called flavio's predictions")

    for name in ("predict", "theory_covariance", "fit_surrogate"):
        monkeypatch.setattr(observables, name, refuse)
    _, first = demo_run
    out = tmp_path / "again"
    assert main(["globalfit", "--config", "demo", "--out", str(out), "--workers", "0", "--quiet"]) == 0
    assert "all read from the cache" in (out / "report.md").read_text()
    a, b = _rows(first), _rows(out)
    for method in ("chi2_min", "nn", "cgan", "grid_min"):  # the same numbers (flavio's own draws may differ)
        assert {k: v for k, v in a[method].items() if k != "seconds"} == {k: v for k, v in b[method].items() if k != "seconds"}


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

"""`wcscan run` with hadronic nuisances: test sets in prior-drawn worlds, the profiled fit, sigma_CRB,eff."""

import csv

import numpy as np
import pytest

from kernels import nuisances
from kernels.metrics import NUISANCE_COLUMNS, POINT_COLUMNS
from orchestrator.cli import main

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")

TINY_FF = """
name: tiny-ff
seed: 3
nuisances: {form_factors: bsz, prior_scale: 1.0, worlds: per_set}
scan: {dc9: [-1.0, 0.0], events_per_point: 2000, level: gen}
models:
  ml_fit: {enabled: true}
  event_classifier:
    head: score
    hidden: 16
    layers: 2
    events_per_point: 1000
    train_events: 30000
    reference_events: 50000
    train: {epochs: 2, batch_size: 512, lr: 0.003, weight_decay: 0.0, patience: 2}
evaluation: {dc9: [-0.5], sets: 20, events_per_set: 2000}
"""


@pytest.fixture(scope="module")
def ff_run(tmp_path_factory, ff_tables_cache):
    """The job with three form factors instead of 19 (30 flavio calls instead of 630), the same code path."""
    tmp = tmp_path_factory.mktemp("ff")
    real = nuisances.nuisance_table
    mp = pytest.MonkeyPatch()
    mp.setattr(nuisances, "nuisance_table", lambda c, w, ff, **kw: real(c, w, FF, cache=ff_tables_cache, workers=1))
    cfg = tmp / "tiny-ff.yaml"
    cfg.write_text(TINY_FF)
    try:
        code = main(["run", "--config", str(cfg), "--out", str(tmp / "out"), "--workers", "0", "--quiet"])
    finally:
        mp.undo()
    return code, tmp / "out"


def _rows(out, name):
    with open(out / "evaluation" / name / "points.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_profiled_fit_is_measured_against_the_efficient_bound(ff_run):
    code, out = ff_run
    assert code == 0
    for name in ("ml_fit", "ml_fit_profiled"):
        rows = _rows(out, name)
        assert list(rows[0]) == list(POINT_COLUMNS + NUISANCE_COLUMNS)
        assert float(rows[0]["sigma_crb_eff"]) > float(rows[0]["sigma_crb"])
    prof, fixed = _rows(out, "ml_fit_profiled")[0], _rows(out, "ml_fit")[0]
    assert 0.6 < float(prof["sigma_over_crb_eff"]) < 1.5  # 20 sets: sigma known to about 16%
    assert float(prof["coverage_68"]) > float(fixed["coverage_68"])  # the naive fit's bars ignore the form factors


def test_the_event_posterior_gets_a_version_with_the_form_factors_profiled(ff_run):
    """Beside the naive event posterior (central form factors) the job trains its u-slopes and profiles each set."""
    code, out = ff_run
    assert code == 0
    naive, aware = _rows(out, "event_posterior")[0], _rows(out, "event_posterior_profiled")[0]
    assert list(aware) == list(POINT_COLUMNS + NUISANCE_COLUMNS)
    assert aware["sigma_crb_eff"] == naive["sigma_crb_eff"]
    # its errors carry the form factors (the efficient bound's size), the naive ones do not
    assert float(aware["pull_width"]) < float(naive["pull_width"])


def test_the_report_shows_the_efficient_bound(ff_run):
    _, out = ff_run
    assert "σ/CRB,eff mean" in (out / "report.md").read_text()


def test_the_worlds_of_the_test_sets_are_recorded(ff_run):
    _, out = ff_run
    with open(out / "evaluation" / "worlds.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and list(rows[0])[:2] == ["dc9_true", "set"]
    u = np.array([[float(r[f"u:{n}"]) for n in FF] for r in rows])
    assert len({tuple(x) for x in u}) == 20  # per_set: a world each
    assert np.allclose(u, nuisances.draw_worlds(20, 3, 1.0, seed=3, point=10_000))


@pytest.mark.parametrize("field, value, message", [
    ("prior_scale", "0", "prior_scale must be a finite number > 0"),
    ("form_factors", "lcsr", "nuisances.form_factors"),
    ("power_corrections", "true", "power corrections are not tabulated yet"),
])
def test_bad_nuisance_settings_are_one_line_errors(tmp_path, capsys, field, value, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY_FF.replace("form_factors: bsz, prior_scale: 1.0", f"form_factors: bsz, prior_scale: 1.0, {field}: {value}")
                   if field == "power_corrections" else TINY_FF.replace(f"{field}: " + ("1.0" if field == "prior_scale" else "bsz"), f"{field}: {value}"))
    code = main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()

"""`wcscan run` over several coefficients: a tiny (delta C9, delta C10) job end to end, and its bad configs."""

from __future__ import annotations

import csv
import math

import pytest

from kernels.metrics import joint_columns
from orchestrator.cli import main

TINY = """\
name: tiny-c9c10
seed: 2
theory: {coefficients: [C9_bsmumu, C10_bsmumu]}
scan: {shifts: {dc9: "-1:1:3", dc10: "-1:1:3"}, events_per_point: 4000}
models:
  ml_fit: {enabled: true}
  event_ratio: {hidden: 16, layers: 2, train_events: 30000, reference_events: 5000, train: {epochs: 2, batch_size: 1024}}
  deepsets: {hidden: 16, rho_hidden: 16, train_events: 30000, phi_train: {epochs: 2, batch_size: 1024}, rho_sets: 40,
             rho_val_sets: 10, moment_events: 9000, rho_train: {epochs: 3, batch_size: 16}}
  resnet3d: {bins: 4, width: 4, blocks: 1, rho_hidden: 8, score_images: 20, phi_train: {epochs: 2, batch_size: 8},
             rho_images: 30, pool_events: 20000, rho_val_images: 10, rho_train: {epochs: 3, batch_size: 16}}
evaluation: {shifts: {dc9: "-0.5,0.5", dc10: "-0.5,0.5"}, sets: 4, events_per_set: [500, 1000]}
"""


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint-run")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "out"
    code = main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "-q"])
    return code, out


def test_the_joint_run_writes_one_row_per_point_and_n_for_every_estimator(joint_run):
    code, out = joint_run
    assert code == 0
    cols = list(joint_columns(("dc9", "dc10")))
    for name in ("ml_fit", "event_ratio", "deepsets", "resnet3d"):
        with open(out / "evaluation" / name / "points.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        # the ResNet's rows add its images' own bound (>= the unbinned one) and its sigma over it
        image = [f"{k}_{s}" for s in ("dc9", "dc10") for k in ("sigma_crb_image", "sigma_over_crb_image")]
        assert list(rows[0]) == cols + (image if name == "resnet3d" else [])
        if name == "resnet3d":
            assert all(float(r["sigma_crb_image_dc9"]) >= float(r["sigma_crb_dc9"]) for r in rows)
        assert [(float(r["dc9_true"]), float(r["dc10_true"]), int(r["n_events"])) for r in rows] == [
            (d9, d10, n) for d9 in (-0.5, 0.5) for d10 in (-0.5, 0.5) for n in (500, 1000)]
        for r in rows:
            assert float(r["sigma_crb_dc9"]) > 0 and int(r["n_sets"]) == 4
            assert 0 <= float(r["joint_coverage_95"]) <= 1
            assert math.isfinite(float(r["corr_dc9_dc10"]))
    # one model, every N: the bound scales as 1 / sqrt(N)
    rows = list(csv.DictReader(open(out / "evaluation" / "ml_fit" / "points.csv")))
    assert float(rows[0]["sigma_crb_dc9"]) / float(rows[1]["sigma_crb_dc9"]) == pytest.approx(math.sqrt(2))
    report = (out / "report.md").read_text()
    assert "## N = 500" in report and "## N = 1,000" in report and "event_ratio" in report
    for f in ("ml_fit_regions_N500.png", "event_ratio_regions_N1000.png", "sigma_over_crb.png"):
        assert (out / "figures" / f).stat().st_size > 5_000
        assert f"figures/{f}" in report
    import json

    manifest = json.loads((out / "events" / "manifest.json").read_text())
    assert len(manifest["points"]) == 9 and manifest["config"]["coefficients"] == ["C9_bsmumu", "C10_bsmumu"]


def test_the_joint_run_logs_a_parent_and_a_child_per_estimator_with_per_n_metrics(joint_run):
    from mlflow.tracking import MlflowClient

    _, out = joint_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["coefficients"] == "dc9,dc10"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["deepsets", "event_ratio", "ml_fit", "resnet3d"]
    for child in children.values():
        for key in ("sigma_over_crb_mean_dc10_N500", "joint_coverage_68_mean_N1000", "corr_gap_max_N500"):
            assert key in child.data.metrics
    ratio = children["event_ratio"]
    assert [m.step for m in client.get_metric_history(ratio.info.run_id, "val_loss")] == [0, 1]
    deepsets = children["deepsets"].info.run_id
    assert [m.step for m in client.get_metric_history(deepsets, "phi_val_loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(deepsets, "rho_val_loss")] == [0, 1, 2]
    resnet = children["resnet3d"].info.run_id
    assert [m.step for m in client.get_metric_history(resnet, "phi_val_loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(resnet, "rho_val_loss")] == [0, 1, 2]
    assert client.list_artifacts(resnet, "model")  # the trained network, rebuildable from its hparams


@pytest.mark.parametrize("edit, message", [
    (("coefficients: [C9_bsmumu, C10_bsmumu]", "coefficients: [C9_bsmumu, C9]"), "dc9 is listed twice"),
    (('dc10: "-0.5,0.5"}, sets', 'dc9p: "-0.5,0.5"}, sets'), "shifts name dc9, dc9p; theory.coefficients are dc9, dc10"),
    (("events_per_point: 4000}", "events_per_point: 4000, level: det}"), "scan.level"),
    (("train_events: 30000, ref", "train_events: 90000, ref"), "models.event_ratio.train_events (90000) is more than"),
    (("train_events: 30000, phi", "train_events: 90000, phi"), "models.deepsets.train_events (90000) is more than"),
    (("rho_sets: 40", "rho_sets: 0"), "models.deepsets.rho_sets"),
    (("rho_images: 30", "rho_images: 0"), "models.resnet3d.rho_images"),
    (("bins: 4, width", "bins: 1, width"), "models.resnet3d.bins"),
    (('dc10: "-1:1:3"}', 'dc10: "0.5"}'), "dc10 takes one value"),
])
def test_a_bad_joint_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, edit, message):
    cfg = tmp_path / "bad.yaml"
    assert edit[0] in TINY
    cfg.write_text(TINY.replace(*edit))
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_with_the_form_factors_the_test_sets_come_from_prior_worlds_and_the_profiled_fit_joins(tmp_path, monkeypatch):
    """Two of the form factors (a small table, built here) stand in for the 19: the profiled joint fit and each
    coefficient's efficient bound, which is wider than the fixed one."""
    from kernels import nuisances

    real = nuisances.nuisance_table
    ff = ["B->K* BSZ a0_V", "B->K* BSZ a1_V"]
    monkeypatch.setattr(nuisances, "nuisance_table", lambda coeffs, windows, form_factors, **kw: real(
        coeffs, windows, form_factors=ff, spacing=0.25, cache=tmp_path / "cache"))
    cfg = tmp_path / "ff.yaml"
    cfg.write_text(TINY.replace("  event_ratio: {", "  event_ratio: {enabled: false, ")
                   + "nuisances: {form_factors: bsz, prior_scale: 2.0}\n")
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "-q"]) == 0
    for name in ("ml_fit", "ml_fit_profiled"):
        rows = list(csv.DictReader(open(out / "evaluation" / name / "points.csv")))
        assert list(rows[0]) == list(joint_columns(("dc9", "dc10"), nuisances=True)) and len(rows) == 8
        for r in rows:
            assert float(r["sigma_crb_eff_dc9"]) > float(r["sigma_crb_dc9"])
            assert float(r["sigma_over_crb_eff_dc10"]) == pytest.approx(
                float(r["sigma_dc10"]) / float(r["sigma_crb_eff_dc10"]))
    assert not (out / "evaluation" / "event_ratio").exists()
    report = (out / "report.md").read_text()
    assert "σ/σ_CRB,eff mean (max)" in report and "ml_fit_profiled" in report and "widths × 2" in report

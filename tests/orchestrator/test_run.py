"""A tiny `wcscan run` end to end: MLflow parent and children, points.csv, figures, report."""

import csv
import math

import pytest

from kernels.metrics import POINT_COLUMNS
from orchestrator.cli import main

ESTIMATORS = ["deepsets", "event_posterior", "ml_fit", "resnet3d"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_run_yaml):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(tiny_run_yaml)
    out = tmp / "out"
    code = main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"])
    return code, out


def test_tiny_run_succeeds_and_writes_the_report(tiny_run):
    code, out = tiny_run
    assert code == 0
    report = (out / "report.md").read_text()
    for name in ESTIMATORS:
        assert name in report
    for fig in ("linearity", "sensitivity", "bias", "sigma_over_crb", "training_curves", "image_slices",
                "calibration"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
        assert f"figures/{fig}.png" in report
    # the summary's new columns, the image bound beside sigma_CRB, and a verdict per estimator
    assert "coverage 68% | coverage 95% | σ/σ_CRB,image mean |" in report
    assert "σ_CRB,image (resnet3d)" in report
    assert "## Calibration" in report
    assert "- `ml_fit`: **untested**: pooled over 6 sets" in report  # 2 points x 3 sets: too few for a test
    assert "- `resnet3d`: no per-set width" in report


def test_tiny_run_writes_a_points_table_per_estimator(tiny_run):
    _, out = tiny_run
    for name in ESTIMATORS:
        with open(out / "evaluation" / name / "points.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [float(r["dc9_true"]) for r in rows] == [-1.0, -0.5]
        assert list(rows[0]) == list(POINT_COLUMNS)
        assert all(float(r["sigma_crb"]) > 0 for r in rows)
        image = [float(r["sigma_crb_image"]) for r in rows]
        if name == "resnet3d":  # the image estimator: its bound, >= sigma_CRB
            assert all(b >= float(r["sigma_crb"]) for b, r in zip(image, rows))
        else:
            assert all(math.isnan(b) for b in image)
        coverage = [float(r[k]) for r in rows for k in ("coverage_68", "coverage_95")]
        if name in ("ml_fit", "event_posterior"):  # they give widths
            assert all(0 <= c <= 1 for c in coverage)  # NaN fails too
        else:
            assert all(math.isnan(c) for c in coverage)


def test_tiny_run_logs_a_parent_and_one_child_per_estimator(tiny_run):
    from mlflow.tracking import MlflowClient

    _, out = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("wcscan")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["scan.events_per_point"] == "12000"
    assert len(parent.data.tags["dataset_manifest_sha256"]) == 64
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ESTIMATORS
    for child in children:
        assert "sigma_over_crb_mean" in child.data.metrics
        widths = child.info.run_name in ("ml_fit", "event_posterior")
        assert ({"coverage_68", "coverage_95"} <= set(child.data.metrics)) == widths
        assert (child.data.tags.get("calibration") == "untested") == widths
        image = {"sigma_crb_image", "sigma_over_crb_image_mean"} <= set(child.data.metrics)
        assert image == (child.info.run_name == "resnet3d")
        arts = [a.path for a in client.list_artifacts(child.info.run_id, "evaluation")]
        assert arts == ["evaluation/points.csv"]
    resnet = next(c for c in children if c.info.run_name == "resnet3d")
    assert [m.step for m in client.get_metric_history(resnet.info.run_id, "val_loss")] == [0]
    assert [a.path for a in client.list_artifacts(resnet.info.run_id, "model")] == ["model/model.pt"]


def test_a_config_that_does_not_validate_is_one_line(tmp_path, capsys, tiny_run_yaml):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_run_yaml.replace("events_per_point: 12000", "events_per_point: 0"))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.events_per_point" in err[0]
    assert not (tmp_path / "o").exists()

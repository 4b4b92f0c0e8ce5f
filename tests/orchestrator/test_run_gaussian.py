"""`wcscan run` with `head: gaussian` for both networks: their points.csv get finite coverage columns."""

import csv
import math
import os

import pytest

from kernels.errors import ConfigError
from orchestrator.cli import main
from orchestrator.config.run import load_config

#: Both networks with the Gaussian head, 6^3 images, nothing else trained (seconds on 2 cores).
GAUSSIAN_RUN = """\
name: tiny-gaussian
seed: 4
scan: {dc9: "-1:1:3", events_per_point: 6000}
images: {bins: 6, events_per_image: 400, images_per_point: 10, val_fraction: 0.2}
models:
  resnet3d: {depth: 10, width: 4, head: gaussian, train: {epochs: 2, batch_size: 8}}
  deepsets: {hidden: 8, phi_layers: 1, rho_layers: 1, set_size: 400, sets_per_point: 8, head: gaussian,
             head_loss: gaussian_nll, train: {epochs: 2, batch_size: 4}}
  ml_fit: {enabled: false}
evaluation: {dc9: [-1.0, 0.0], sets: 4, events_per_set: 400}
"""


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run-gaussian")
    cfg = tmp / "gaussian.yaml"
    cfg.write_text(GAUSSIAN_RUN)
    out = tmp / "out"
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)  # the Tracker sets it: keep other modules' runs apart
    try:
        code = main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "--quiet"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return code, out


def test_both_networks_write_finite_coverage_with_the_gaussian_head(gaussian_run):
    code, out = gaussian_run
    assert code == 0
    for name in ("resnet3d", "deepsets"):
        with open(out / "evaluation" / name / "points.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [float(r["dc9_true"]) for r in rows] == [-1.0, 0.0]
        for r in rows:
            for key in ("coverage_68", "coverage_95"):
                c = float(r[key])
                assert math.isfinite(c) and 0 <= c <= 1, (name, key, r[key])
    report = (out / "report.md").read_text()
    assert "- `resnet3d`: no per-set width" not in report
    assert (out / "figures" / "calibration.png").stat().st_size > 1000


def test_the_config_records_the_head_and_its_loss(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(GAUSSIAN_RUN)
    mc = load_config(cfg).models
    assert (mc.resnet3d.head, mc.resnet3d.training_loss) == ("gaussian", "beta_nll")
    assert (mc.deepsets.head, mc.deepsets.training_loss) == ("gaussian", "gaussian_nll")
    cfg.write_text(GAUSSIAN_RUN.replace("head: gaussian,\n             head_loss", "head_loss"))
    with pytest.raises(ConfigError, match="models.deepsets: head_loss needs head: gaussian"):
        load_config(cfg)
    cfg.write_text(GAUSSIAN_RUN.replace("head: gaussian, train: {epochs: 2", "train: {epochs: 2"))
    assert (load_config(cfg).models.resnet3d.head, load_config(cfg).models.resnet3d.training_loss) == ("point", "mae")


def test_the_networks_children_log_coverage_metrics(gaussian_run):
    from mlflow.tracking import MlflowClient

    _, out = gaussian_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["deepsets", "resnet3d"]
    for child in children.values():
        assert {"coverage_68", "coverage_95"} <= set(child.data.metrics)
        assert child.data.params["head"] == "gaussian"

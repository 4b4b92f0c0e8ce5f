"""`wcscan run` with the score summaries (``summary: score``) of Deep Sets and the ResNet: stage 1 on joint scores,
rho on fresh sets or images."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from kernels.errors import ConfigError
from orchestrator.build.stream_work import stream_seed
from orchestrator.cli import main
from orchestrator.config.run import load_config

CONFIG = """\
name: tinyds
seed: 3
scan: {{dc9: "-1:1:3", events_per_point: 4000}}
models:
  deepsets: {{head: gaussian, summary: score, data: {data}, {workers}hidden: 8, score_points: 4, score_events: 20000,
              rho_points: 5, set_size: 500, sets_per_point: 8,
              phi_train: {{epochs: 1, batch_size: 1024, lr: 0.003, loss: mse}},
              train: {{epochs: 3, batch_size: 16, lr: 0.003}}}}
  ml_fit: {{enabled: false}}
evaluation: {{dc9: [-1.0, 0.0, 0.5], sets: 4, events_per_set: 500}}
"""


@pytest.mark.parametrize("data", ["stream", "pool"])
def test_run_trains_the_score_summary_and_reports_widths(tmp_path, own_mlflow_store, data):
    cfg = tmp_path / "tinyds.yaml"
    cfg.write_text(CONFIG.format(data=data, workers="stream_workers: 0, " if data == "stream" else ""))
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "-q"]) == 0
    with open(out / "evaluation" / "deepsets" / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dc9_true"]) for r in rows] == [-1.0, 0.0, 0.5]
    for r in rows:
        assert math.isfinite(float(r["mean"])) and math.isfinite(float(r["pull_width"]))  # a width per set
    (model,) = out.glob("mlartifacts/*/artifacts/model/model.pt")  # the one trained network's weights
    state = torch.load(model, weights_only=True)
    assert {"score_mean", "score_std", "pooled_mean", "pooled_std"} <= set(state)  # the score summary's scalings
    assert state["pooled_std"].shape == (4,) and bool((state["pooled_std"] != 1).all())  # fitted, not defaults
    import sqlite3

    con = sqlite3.connect(out / "mlflow.db")
    keys = {k for (k,) in con.execute("select distinct key from metrics")}
    assert {"phi_val_loss", "val_loss"} <= keys  # both stages' curves are logged, apart


def test_the_score_stream_never_shares_a_seed_with_the_deep_sets_stream():
    assert stream_seed(1, 0, "deepsets_score", 2, 0) != stream_seed(1, 0, "deepsets", 2, 0)


@pytest.mark.parametrize("bad, needle", [
    ("rho_range: [1.0, -1.0]", "rho_range"),
    ("train_range: [0.5, 0.5]", "train_range"),
    ("data: stream, stream_sets_per_point: 3", "stream_sets_per_point"),
])
def test_bad_score_summary_settings_are_one_line_errors(tmp_path, bad, needle):
    text = CONFIG.format(data="pool", workers="").replace("summary: score,", f"summary: score, {bad},")
    if "data: stream," in bad:
        text = text.replace("data: pool,", "")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


RESNET = """\
name: tinyrs
seed: 3
scan: {dc9: "-1:1:3", events_per_point: 4000}
images: {bins: 4, events_per_image: 500, images_per_point: 4}
models:
  resnet3d: {head: gaussian, summary: score, data: stream, stream_workers: 0, width: 4, blocks: 1, score_points: 3,
             score_images: 52, rho_points: 4, rho_images_per_point: 5,
             phi_train: {epochs: 1, batch_size: 8, lr: 0.003, loss: mse}, train: {epochs: 3, batch_size: 8, lr: 0.003}}
  ml_fit: {enabled: false}
evaluation: {dc9: [-1.0, 0.5], sets: 4, events_per_set: 500}
"""


def test_run_trains_the_score_resnet_on_fresh_images(tmp_path, own_mlflow_store):
    cfg = tmp_path / "tinyrs.yaml"
    cfg.write_text(RESNET)
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--workers", "0", "-q"]) == 0
    with open(out / "evaluation" / "resnet3d" / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dc9_true"]) for r in rows] == [-1.0, 0.5]
    for r in rows:
        assert math.isfinite(float(r["pull_width"])) and float(r["sigma_crb_image"]) >= float(r["sigma_crb"])
    (model,) = out.glob("mlartifacts/*/artifacts/model/model.pt")
    state = torch.load(model, weights_only=True)
    assert {"coords", "score_scale", "pooled_mean", "pooled_std"} <= set(state)
    assert bool((state["score_scale"] != 1).all()) and bool((state["pooled_std"] != 1).all())


def test_the_score_resnet_needs_fresh_images(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(RESNET.replace("data: stream, stream_workers: 0, ", ""))
    with pytest.raises(ConfigError, match="needs data: stream"):
        load_config(path)

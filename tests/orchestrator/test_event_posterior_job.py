"""`wcscan run` with the score-trained event posterior (``head: score``): fresh MC, exact normalisation."""

from __future__ import annotations

import csv
import math

from orchestrator.cli import main

CONFIG = """\
name: tinyscore
seed: 3
scan: {dc9: "-1:1:3", events_per_point: 2000}
models:
  event_classifier: {head: score, hidden: 8, layers: 1, events_per_point: 2000, train_events: 10000,
                     reference_events: 20000, train: {epochs: 1, batch_size: 512, lr: 0.003}}
evaluation: {dc9: [-1.0, 0.0], sets: 4, events_per_set: 1000}
"""


def test_run_trains_the_score_head_on_fresh_mc_and_reports_its_width_and_coverage(tmp_path, own_mlflow_store):
    cfg = tmp_path / "tinyscore.yaml"
    cfg.write_text(CONFIG)
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--workers", "0", "-q"]) == 0
    with open(tmp_path / "out" / "evaluation" / "event_posterior" / "points.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dc9_true"]) for r in rows] == [-1.0, 0.0]
    for r in rows:
        assert math.isfinite(float(r["mean"])) and math.isfinite(float(r["pull_width"]))  # it gives a width
        assert 0.0 <= float(r["coverage_68"]) <= 1.0
    assert "event_posterior" in (tmp_path / "out" / "report.md").read_text()

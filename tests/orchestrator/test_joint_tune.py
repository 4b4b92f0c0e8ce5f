"""`wcscan tune --config`: a sweep over a joint model's hyperparameters, its MLflow runs, and the best trial
evaluated beside the joint ML fit at every N; and the one-line refusals."""

from __future__ import annotations

import csv

import pytest

from kernels.metrics import joint_columns
from orchestrator.cli import main

TINY = """\
name: tiny-tune-c9c10
seed: 3
theory: {coefficients: [C9_bsmumu, C10_bsmumu]}
scan: {shifts: {dc9: "-1:1:3", dc10: "-1:1:3"}, events_per_point: 4000}
models:
  event_ratio: {hidden: 16, layers: 2, train_events: 30000, reference_events: 5000, train: {epochs: 2, batch_size: 1024}}
  deepsets: {hidden: 16, rho_hidden: 16, train_events: 30000, phi_train: {epochs: 2, batch_size: 1024}, rho_sets: 40,
             rho_val_sets: 10, moment_events: 9000, rho_train: {epochs: 3, batch_size: 16}}
evaluation: {shifts: {dc9: "-0.5,0.5", dc10: "-0.5,0.5"}, sets: 4, events_per_set: [500, 1000]}
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_a_joint_deepsets_sweep_trains_its_trials_and_evaluates_the_best_beside_the_ml_fit(ray_local, tiny_config,
                                                                                            tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    code = main(["tune", "--model", "deepsets", "--config", str(tiny_config), "--num-samples", "2", "--tiny",
                 "--search", "random", "--scheduler", "fifo", "--eval-sets", "3", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "2 trials (0 failed)" in text and "best trial" in text
    assert "deepsets at N=1,000: sigma/sigma_CRB mean dc9" in text and "ml_fit at N=500" in text
    cols = list(joint_columns(("dc9", "dc10")))
    for name in ("ml_fit", "deepsets"):  # the best network and the ML fit on the same test sets, every N
        rows = list(csv.DictReader(open(out / "evaluation" / name / "points.csv", newline="")))
        assert list(rows[0]) == cols
        assert [(float(r["dc9_true"]), float(r["dc10_true"]), int(r["n_events"])) for r in rows] == [
            (d9, d10, n) for d9 in (-0.5, 0.5) for d10 in (-0.5, 0.5) for n in (500, 1000)]
        assert all(int(r["n_sets"]) == 3 for r in rows)  # --eval-sets overrides the config's 4
    report = (out / "report.md").read_text()
    assert "## N = 1,000" in report and "deepsets" in report
    assert (out / "figures" / "deepsets_regions_N500.png").stat().st_size > 5_000
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("wcscan").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["kind"] == "tune" and parent.data.tags["config"] == "tiny-tune-c9c10"
    assert "deepsets.sigma_over_crb_mean_dc10_N1000" in parent.data.metrics
    assert "ml_fit.joint_coverage_68_mean_N500" in parent.data.metrics
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2
    for t in trials:  # each trial's sampled settings, and the last stage's losses per epoch (3), then the final
        assert {"hidden", "rho_train.lr", "rho_layers"} <= set(t.data.params)
        assert len(client.get_metric_history(t.info.run_id, "val_loss")) == 4
    assert parent.data.tags["best.hidden"] in ("8", "16")
    assert "best_retrained" not in parent.data.tags  # FIFO: every trial ends, its final checkpoint loaded


def test_the_trial_settings_land_in_the_configs_model_section():
    from orchestrator.config.run import load_config
    from orchestrator.jobs.joint_tune import trial_config

    cfg = load_config("demo-c9c10")
    got = trial_config(cfg, "event_ratio", {"hidden": 32, "train.lr": 0.004}, epochs=3)
    assert (got.models.event_ratio.hidden, got.models.event_ratio.train.lr, got.models.event_ratio.train.epochs) == (
        32, 0.004, 3)
    assert got.models.deepsets == cfg.models.deepsets and cfg.models.event_ratio.hidden == 64  # a copy
    from kernels.errors import ConfigError

    with pytest.raises(ConfigError, match="no setting 'widht'"):
        trial_config(cfg, "resnet3d", {"widht": 8})


@pytest.mark.parametrize("args, message", [
    (["--model", "deepsets"], "give exactly one of --dataset (a delta C9 sweep) and --config"),
    (["--model", "deepsets", "--config", "demo-c9c10", "--set-size", "100"], "--set-size: for --dataset sweeps"),
    (["--model", "deepsets", "--config", "demo"], "not a joint config"),
    (["--model", "event_ratio", "--dataset", "x"], "is a joint model: sweep it with --config"),
    (["--model", "resnet3d", "--config", "TINY"], "has no models.resnet3d section"),
    (["--model", "deepsets", "--config", "demo-c9c10", "--epochs", "0"], "--epochs must be"),
])
def test_bad_joint_sweeps_are_one_line_exit_2_before_ray_starts(tiny_config, tmp_path, capsys, args, message):
    args = [str(tiny_config) if a == "TINY" else a for a in args]
    out = tmp_path / "never"
    assert main(["tune", *args, "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_an_event_ratio_sweep_under_optuna_and_asha_evaluates_the_best(ray_local, tiny_config, tmp_path,
                                                                                     capsys):
    out = tmp_path / "out"
    code = main(["tune", "--model", "event_ratio", "--config", str(tiny_config), "--num-samples", "2", "--tiny",
                 "--epochs", "2", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "event_ratio at N=500" in text
    rows = list(csv.DictReader(open(out / "evaluation" / "event_ratio" / "points.csv", newline="")))
    assert len(rows) == 8 and all(0 <= float(r["joint_coverage_95"]) <= 1 for r in rows)

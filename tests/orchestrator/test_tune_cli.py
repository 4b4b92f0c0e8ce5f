"""`wcscan tune` from the command line: the Optuna + ASHA path on the ResNet, and one-line errors."""

import csv
import math

from kernels.metrics import POINT_COLUMNS
from orchestrator.cli import main


def test_tune_runs_an_optuna_asha_resnet_sweep_and_reports_the_best(ray_local, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["tune", "--model", "resnet3d", "--dataset", str(tiny_dataset), "--num-samples", "2", "--epochs", "2",
                 "--tiny", "--search", "optuna", "--scheduler", "asha", "--events-per-image", "200",
                 "--eval-sets", "2", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    assert "2 trials (0 failed)" in text and "best trial" in text and "sigma_over_crb_mean" in text
    assert (out / "mlflow.db").is_file()
    assert (out / "figures" / "tune-resnet3d-sigma_over_crb.png").stat().st_size > 1000
    # evaluated as `wcscan run` evaluates it: the image bound beside sigma_CRB, no widths (yet) so no coverage
    with open(out / "evaluation" / "tune-resnet3d" / "points.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(POINT_COLUMNS)
    assert all(float(r["sigma_crb_image"]) >= float(r["sigma_crb"]) > 0 for r in rows)
    assert all(math.isnan(float(r["coverage_68"])) for r in rows)
    assert not (out / "figures" / "tune-resnet3d-calibration.png").exists()


def test_tune_refuses_a_directory_that_is_not_a_dataset_in_one_line(tmp_path, capsys):
    code = main(["tune", "--model", "deepsets", "--dataset", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "not a wcscan dataset" in err


def test_tune_resume_without_a_sweep_says_so(ray_local, tiny_dataset, tmp_path, capsys):
    code = main(["tune", "--model", "deepsets", "--dataset", str(tiny_dataset), "--resume", "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err


def test_tune_help_shows_examples(capsys):
    assert main(["tune", "--help"]) == 0
    assert "wcscan tune --model deepsets --dataset" in capsys.readouterr().out

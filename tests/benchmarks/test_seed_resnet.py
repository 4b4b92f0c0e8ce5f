"""The GPU benchmark script (``seed_resnet.py``) runs end to end on the CPU at toy sizes and reports its figures."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path


def _script():
    spec = importlib.util.spec_from_file_location("seed_resnet", Path(__file__).with_name("seed_resnet.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["seed_resnet"] = mod  # its image workers are pickled by module name
    spec.loader.exec_module(mod)
    return mod


def test_the_seed_network_script_trains_evaluates_and_projects_the_full_config(capsys):
    out = _script().main(["--images-per-point", "10", "--bins", "8", "--depth", "10", "--width", "4",
                          "--train-seconds", "5", "--max-epochs", "2", "--sets", "6", "--device", "cpu",
                          "--workers", "2", "--json"])
    assert out["device"] == "cpu" and out["points"] == 22 and out["train_images"] == 22 * 8
    assert 1 <= out["epochs"] <= 2
    assert out["full_config_train_images"] == 60 * 22 * 2688  # seed-resnet34: 60 epochs, 80% of 3,360 per point
    assert out["loop_train_images_per_s"] > 0 and out["synthetic_train_images_per_s"] > 0
    rows = out["points_table"]
    assert [r["dc9_true"] for r in rows] == [-2.0, -1.0, -0.82, 0.0, 1.0]
    assert all(math.isfinite(r["sigma_over_crb"]) and r["sigma_crb_image"] >= r["sigma_crb"] for r in rows)
    assert '"benchmark": "seed_resnet"' in capsys.readouterr().out


def test_bad_options_are_one_line_errors_before_any_work(capsys):
    import pytest

    for argv, what in ((["--images-per-point", "0"], "--images-per-point"), (["--device", "bogus"], "--device"),
                       (["--train-seconds", "-1"], "--train-seconds")):
        with pytest.raises(SystemExit) as e:
            _script().main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and what in err[-1] and err[-1].startswith("seed_resnet.py: error:")

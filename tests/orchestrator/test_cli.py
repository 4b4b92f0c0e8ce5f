"""Specification of the ``wcscan`` command line (parsing and error reporting)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.cli import main, wcscan
from orchestrator.config.grammar import parse_dc9

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str):
    """The parsed options of one subcommand, as the command function receives them."""
    ctx = wcscan.commands[argv[0]].make_context(argv[0], list(argv[1:]))
    return SimpleNamespace(**ctx.params)


def gen_args(*extra: str, out: str = "out") -> list[str]:
    return ["generate", "--events", "10", "--out", out, *extra]


def assert_one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wcscan: error: ")
    for f in fragments:
        assert f in lines[0]
    return lines[0]


# --- --dc9 ------------------------------------------------------------------


def test_dc9_range_after_a_space_with_negative_start_is_an_inclusive_linspace():
    values = parse(*gen_args("--dc9", "-2:1.1:22")).dc9
    assert len(values) == 22
    assert values[0] == -2.0 and values[-1] == 1.1
    steps = [b - a for a, b in zip(values, values[1:])]
    assert max(steps) - min(steps) < 1e-12


def test_dc9_comma_list_after_a_space_with_negative_value():
    assert parse(*gen_args("--dc9", "-1.5,0")).dc9 == [-1.5, 0.0]


def test_dc9_with_equals_sign_and_negative_value():
    assert parse(*gen_args("--dc9=-1")).dc9 == [-1.0]


def test_dc9_range_with_equals_sign():
    assert parse(*gen_args("--dc9=-1:1:3")).dc9 == [-1.0, 0.0, 1.0]


def test_dc9_range_of_one_point_is_its_start():
    assert parse_dc9("0.5:3:1") == [0.5]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("1:2:0", "NUM must be at least 1"),
        ("1:2:2.5", "NUM must be a whole number"),
        ("1:2", "expected START:STOP:NUM"),
        ("abc", "'abc' is not a number"),
        ("nan", "not a finite number"),
        ("1,inf", "not a finite number"),
        ("1,,2", "empty value"),
    ],
)
def test_bad_dc9_exits_2_with_one_line(capsys, tmp_path, spec, fragment):
    code = main(gen_args("--dc9", spec, out=str(tmp_path / "ds")))
    assert_one_line_error(capsys, code, "--dc9", fragment)


# --- generate: bad values never touch the disk --------------------------------


def test_events_zero_exits_2_and_does_not_create_the_output_dir(capsys, tmp_path):
    out = tmp_path / "ds"
    code = main(["generate", "--dc9", "0", "--events", "0", "--out", str(out)])
    assert_one_line_error(capsys, code, "--events", "positive")
    assert not out.exists()


def test_negative_seed_exits_2_and_does_not_create_the_output_dir(capsys, tmp_path):
    out = tmp_path / "ds"
    code = main(["generate", "--dc9", "0", "--events", "5", "--seed", "-1", "--out", str(out)])
    assert_one_line_error(capsys, code, "--seed")
    assert not out.exists()


def test_window_over_charmonium_exits_2_with_one_line(capsys, tmp_path):
    out = tmp_path / "ds"
    code = main(gen_args("--dc9", "0", "--q2-window", "7,12", out=str(out)))
    assert_one_line_error(capsys, code, "charmonium")
    assert not out.exists()


def test_malformed_window_exits_2_with_one_line(capsys, tmp_path):
    code = main(gen_args("--dc9", "0", "--q2-window", "1.1", out=str(tmp_path / "ds")))
    assert_one_line_error(capsys, code, "--q2-window", "LO,HI")


def test_window_option_is_repeatable_and_defaults_to_1p1_6():
    assert parse(*gen_args("--dc9", "0")).q2_windows == ()  # the job fills in (1.1, 6.0)
    args = parse(*gen_args("--dc9", "0", "--q2-window", "1.1,6", "--q2-window", "15,19"))
    assert list(args.q2_windows) == [(1.1, 6.0), (15.0, 19.0)]


def test_non_empty_output_dir_is_refused_with_one_line(capsys, tmp_path):
    (tmp_path / "somefile").write_text("x")
    code = main(["generate", "--dc9", "0", "--events", "5", "--out", str(tmp_path)])
    assert_one_line_error(capsys, code, "not empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]


def test_output_dir_holding_a_dataset_is_refused_with_one_line(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    code = main(["generate", "--dc9", "0", "--events", "5", "--out", str(tmp_path)])
    assert_one_line_error(capsys, code, "already holds a dataset")


def test_missing_required_option_exits_2_with_one_line(capsys):
    code = main(["generate", "--dc9", "0", "--out", "x"])
    assert_one_line_error(capsys, code, "--events")


def test_unknown_command_exits_2_with_one_line(capsys):
    assert_one_line_error(capsys, main(["frobnicate"]), "frobnicate")


# --- fit ----------------------------------------------------------------------


def test_fit_on_a_directory_without_manifest_exits_2_with_one_line(capsys, tmp_path):
    code = main(["fit", "--dataset", str(tmp_path), "--events-per-set", "10", "--sets", "2"])
    assert_one_line_error(capsys, code, "no manifest.json", str(tmp_path))


def test_fit_on_a_missing_directory_exits_2_with_one_line(capsys, tmp_path):
    code = main(["fit", "--dataset", str(tmp_path / "nope"), "--events-per-set", "10", "--sets", "2"])
    assert_one_line_error(capsys, code, "no such dataset directory")


def test_fit_with_zero_sets_exits_2_with_one_line(capsys, tmp_path):
    code = main(["fit", "--dataset", str(tmp_path), "--events-per-set", "10", "--sets", "0"])
    assert_one_line_error(capsys, code, "--sets")


def test_fit_on_a_corrupt_manifest_exits_2_with_one_line(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text("{oops")
    code = main(["fit", "--dataset", str(tmp_path), "--events-per-set", "10", "--sets", "2"])
    assert_one_line_error(capsys, code, "corrupt manifest")


# --- help ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, example",
    [
        ([], "wcscan generate --dc9"),
        (["generate"], "wcscan generate --dc9 -2:1.1:22"),
        (["fit"], "wcscan fit --dataset"),
        (["bench"], "wcscan bench fit --json"),
    ],
)
def test_help_exits_0_and_shows_an_example(capsys, argv, example):
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out
    assert example in out


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    assert "Usage: wcscan" in proc.stdout


def test_python_dash_m_reports_errors_with_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "generate", "--dc9", "x", "--events", "1", "--out", "o"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("wcscan: error: Invalid value for '--dc9'")
    assert len(proc.stderr.splitlines()) == 1


# --- unexpected errors ----------------------------------------------------------


def test_unexpected_exceptions_propagate_with_their_traceback(monkeypatch):
    import orchestrator.jobs.fit

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(orchestrator.jobs.fit, "read_event_manifest", lambda *a: SimpleNamespace(points=(), shift_columns=("dc9",)))
    monkeypatch.setattr(orchestrator.jobs.fit, "fit_dataset", boom)
    with pytest.raises(RuntimeError, match="bug"):
        main(["fit", "--dataset", "x", "--events-per-set", "1", "--sets", "1"])


def test_bench_resnet_prints_the_median_throughput_as_json(capsys):
    import json

    code = main(["bench", "resnet", "--depth", "10", "--bins", "8", "--width", "4", "--batch", "2", "--steps", "1",
                 "--repeats", "2", "--device", "cpu", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["depth"] == 10 and r["bins"] == 8 and r["batch"] == 2 and len(r["images_per_s_runs"]) == 2
    assert r["images_per_s_median"] > 0 and r["amp"] is False  # AMP applies on CUDA only


def test_bench_resnet_refuses_zero_steps_in_one_line(capsys):
    assert main(["bench", "resnet", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps must be a positive integer" in err


def test_bench_nuisances_belongs_to_the_fit_benchmark(capsys):
    assert_one_line_error(capsys, main(["bench", "images", "--nuisances", "bsz"]), "--nuisances is an option of bench fit")

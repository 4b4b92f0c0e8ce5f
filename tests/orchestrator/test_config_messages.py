"""Config and grammar messages name the real fault: the unknown field and its nearest valid name, a directory
given for a file, identical scan points, a shipped-config name that does not exist (found before the heavy
imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.cli import main

TAIL = 'scan: {dc9: "-1:1:3", events_per_point: 100}\nevaluation: {dc9: [0.0], sets: 2, events_per_set: 10}\n'


def _line(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("wcscan: error: "), lines
    return lines[0]


def test_a_misspelt_top_level_field_is_named_with_the_nearest_valid_one(capsys, tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("nmae: x\n" + TAIL)
    assert _line(capsys, ["run", "--config", cfg]).endswith("unknown field 'nmae'; did you mean 'name'?")


def test_a_misspelt_nested_field_is_named_where_it_is(capsys, tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("name: x\n" + TAIL.replace("events_per_point", "evnts_per_point"))
    assert "scan: unknown field 'evnts_per_point'; did you mean 'events_per_point'?" in _line(
        capsys, ["run", "--config", cfg])


def test_a_misspelt_globalfit_field_is_named_with_the_nearest_valid_one(capsys, tmp_path):
    cfg = tmp_path / "gf.yaml"
    cfg.write_text("name: x\nobservables: observables-demo\nsed: 1\n")
    assert "unknown field 'sed'; did you mean 'seed'?" in _line(capsys, ["globalfit", "--config", cfg])


@pytest.mark.parametrize("command", ["run", "globalfit"])
def test_a_directory_given_as_the_config_is_called_a_directory(capsys, tmp_path, command):
    assert f"config {tmp_path}: is a directory" in _line(capsys, [command, "--config", tmp_path])


def test_a_file_given_as_the_dataset_is_called_a_file(capsys, tmp_path):
    f = tmp_path / "events.parquet"
    f.write_text("x")
    assert f"{f}: is a file; a dataset is a directory" in _line(
        capsys, ["fit", "--dataset", f, "--events-per-set", "10", "--sets", "2"])


@pytest.mark.parametrize("dc9", ["0,0", "-1,0.5,-1", "1:1:3"])
def test_identical_scan_points_are_refused(capsys, tmp_path, dc9):
    line = _line(capsys, ["generate", "--dc9", dc9, "--events", "10", "--out", tmp_path / "o"])
    assert "the scan points must differ" in line
    assert not (tmp_path / "o").exists()


def test_identical_scan_points_in_a_config_file_are_refused(capsys, tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("name: x\n" + TAIL.replace('"-1:1:3"', "[0, 1, 0]"))
    assert "scan.dc9: 0 appears twice" in _line(capsys, ["run", "--config", cfg])


def test_the_generator_itself_refuses_identical_points(tmp_path):
    from kernels.errors import ConfigError
    from orchestrator.generate.dataset import generate

    with pytest.raises(ConfigError, match="appears twice"):
        generate(tmp_path / "o", [0.5, 0.5], 10, 0, [(1.1, 6.0)], workers=0)


def test_a_misspelt_shipped_name_gets_the_nearest_one(capsys):
    assert "unknown config 'dmeo' (did you mean 'demo'?)" in _line(capsys, ["run", "--config", "dmeo"])


@pytest.mark.parametrize("command", ["run", "globalfit"])
def test_an_unknown_shipped_name_is_refused_before_torch_is_imported(command):
    code = ("import sys; from orchestrator.cli import main; "
            f"rc = main(['{command}', '--config', 'nope']); print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr

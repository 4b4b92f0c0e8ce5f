"""Every subcommand, every user-caused failure: one line ``wcscan: error: ...``, exit 2, the output untouched.

Each case runs before any expensive work, so the whole walk takes seconds (Ray only where a cluster is
the subject of the check).
"""

from __future__ import annotations

import os

import pytest

from orchestrator.cli import main


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*")) if root.exists() else None


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


def _assert_refused(capsys, argv, *fragments, untouched=()):
    before = [_snapshot(p) for p in untouched]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wcscan: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]
    assert [_snapshot(p) for p in untouched] == before


def _bad_outs(tmp_path, afile):
    return [("/proc/wcscan-x", "cannot write in /proc"), (afile / "sub", "is a file, not a directory")]


COMMANDS = {
    "generate": lambda out, ds: ["generate", "--dc9", "0", "--events", "10", "--out", out, "--workers", "0"],
    "images": lambda out, ds: ["images", "--dataset", ds, "--bins", "4", "--events-per-image", "100",
                               "--images-per-point", "2", "--out", out],
    "run": lambda out, ds: ["run", "--config", "demo", "--out", out],
    "tune": lambda out, ds: ["tune", "--model", "deepsets", "--dataset", ds, "--out", out],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("which", [0, 1])
def test_an_output_directory_that_cannot_be_made_is_one_line(capsys, tmp_path, afile, tiny_dataset, command, which):
    out, fragment = _bad_outs(tmp_path, afile)[which]
    _assert_refused(capsys, COMMANDS[command](out, tiny_dataset), fragment, untouched=[tmp_path])


@pytest.mark.parametrize("command", ["generate", "images", "run", "tune"])
def test_an_output_that_is_an_existing_file_is_one_line(capsys, tmp_path, afile, tiny_dataset, command):
    _assert_refused(capsys, COMMANDS[command](afile, tiny_dataset), "not a directory", untouched=[tmp_path])


@pytest.mark.parametrize("out", ["/proc/wcscan-x/fit.csv", "afile/fit.csv"])
def test_fit_refuses_an_unwritable_csv_before_fitting(capsys, tmp_path, afile, tiny_dataset, out, monkeypatch):
    import orchestrator.jobs.fit

    monkeypatch.setattr(orchestrator.jobs.fit, "fit_dataset", lambda *a, **k: pytest.fail("fitted before checking"))
    out = out if out.startswith("/") else tmp_path / out
    _assert_refused(capsys, ["fit", "--dataset", tiny_dataset, "--events-per-set", "100", "--sets", "2", "--out", out],
                    "--out", untouched=[tmp_path])


@pytest.mark.parametrize("argv", [
    ["run", "--config", "demo", "--device", "bogus"],
    ["tune", "--model", "deepsets", "--device", "bogus"],
    ["bench", "resnet", "--device", "bogus"],
])
def test_a_device_that_is_not_a_torch_device_is_one_line(capsys, tmp_path, tiny_dataset, argv):
    argv = [*argv, "--out", tmp_path / "o"] if argv[0] != "bench" else argv
    if argv[0] == "tune":
        argv += ["--dataset", tiny_dataset]
    _assert_refused(capsys, argv, "--device", "bogus", untouched=[tmp_path])


def test_cuda_without_a_gpu_is_refused_before_any_work(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _assert_refused(capsys, ["run", "--config", "demo", "--device", "cuda", "--out", tmp_path / "o"],
                    "no CUDA GPU", untouched=[tmp_path])


def test_a_part_whose_sha256_differs_from_the_manifest_is_refused(capsys, tmp_path):
    from orchestrator.generate.dataset import generate

    ds = tmp_path / "events"
    generate(ds, [0.0], 2000, 1, [(1.1, 6.0)], chunk_size=2000, workers=0)
    part = next(ds.rglob("part-*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    _assert_refused(capsys, ["fit", "--dataset", ds, "--events-per-set", "100", "--sets", "2"], "sha256", part.name)
    _assert_refused(capsys, ["images", "--dataset", ds, "--bins", "4", "--events-per-image", "100",
                             "--images-per-point", "2", "--test-images", "0", "--out", tmp_path / "img"],
                    "sha256", part.name, untouched=[tmp_path / "img"])
    assert not (tmp_path / "img").exists()


def test_tune_refuses_a_set_size_larger_than_the_training_events(capsys, tmp_path, tiny_dataset):
    _assert_refused(capsys, ["tune", "--model", "deepsets", "--dataset", tiny_dataset, "--set-size", "5000",
                             "--out", tmp_path / "o"], "--set-size 5000", untouched=[tmp_path])


def test_tune_refuses_gpus_a_local_cluster_does_not_have_in_seconds(capsys, tmp_path, tiny_dataset, ray_local):
    _assert_refused(capsys, ["tune", "--model", "deepsets", "--dataset", tiny_dataset, "--gpus-per-trial", "1",
                             "--out", tmp_path / "o"], "--gpus-per-trial 1", "0 GPU", "no autoscaler")


def test_the_file_system_refusing_mid_job_is_one_line_not_a_traceback(capsys, tmp_path, monkeypatch):
    import orchestrator.jobs.generate

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(orchestrator.jobs.generate, "generate", full)
    _assert_refused(capsys, ["generate", "--dc9", "0", "--events", "10", "--out", tmp_path / "o"],
                    "No space left on device")


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe is the check; as root, chmod does not stop writes")
def test_the_probe_not_the_mode_bits_decides(tmp_path):
    from orchestrator.config.checks import output_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert output_dir(ro / "new") == ro / "new"  # root may write anyway: no false refusal

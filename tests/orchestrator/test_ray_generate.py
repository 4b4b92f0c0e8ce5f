"""Specification of distributed generation on Ray: determinism, resume, faults, levels, nodes.

All tests use the real kernels (the theory table comes from the on-disk cache)
on small scans: 2 points x 25k events in parts of 10k, i.e. 6 work items.
Tests that need Ray share the session's local instance (``ray_local``); the
multi-node test starts its own cluster in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kernels.errors import ConfigError
from kernels.event_store import MANIFEST, read_manifest
from orchestrator.cli import main
from orchestrator.generate.dataset import generate, generation_pool
from orchestrator.generate.journal import JOURNAL
from orchestrator.runtime.pool import CRASH_ENV, ActorPool

WINDOWS = [(1.1, 6.0)]
SCAN = dict(dc9=[-1.0, 0.5], events=25_000, seed=3, windows=WINDOWS, chunk_size=10_000)
PARTS = [f"level=gen/point={i:03d}/part-{k:05d}.parquet" for i in (0, 1) for k in (0, 1, 2)]
HERE = Path(__file__).resolve().parent


def dataset_bytes(root: Path) -> dict[str, bytes]:
    """Every Parquet part and the manifest, by path: what the byte-identity contract covers."""
    files = sorted(root.rglob("*.parquet")) + [root / MANIFEST]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The scan made in this process, without Ray."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    generate(out, workers=0, **SCAN)
    return dataset_bytes(out)


class SharedPool:
    """Two generation actors kept across tests, so that actor start-up is paid once.

    They hold both CPUs of the session's Ray, so a test that starts its own
    workers first releases them (fixture ``free_cpus``).
    """

    def __init__(self):
        self._pool = None

    def get(self) -> ActorPool:
        if self._pool is None:
            self._pool = generation_pool(2)
        return self._pool

    def release(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


@pytest.fixture(scope="module")
def shared_pool(ray_local):
    holder = SharedPool()
    yield holder
    holder.release()


@pytest.fixture
def pool(shared_pool) -> ActorPool:
    return shared_pool.get()


@pytest.fixture
def free_cpus(shared_pool):
    """The session's CPUs, free for the workers a test starts itself."""
    shared_pool.release()


@pytest.fixture
def made(pool, tmp_path):
    """The scan made by 2 Ray workers in a fresh directory."""
    out = tmp_path / "ds"
    result = generate(out, pool=pool, **SCAN)
    return out, result


# --- determinism ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_dataset_is_byte_identical_whatever_the_number_of_workers(free_cpus, reference, tmp_path, workers):
    result = generate(tmp_path / "ds", workers=workers, **SCAN)
    assert dataset_bytes(tmp_path / "ds") == reference
    assert sorted(f"level=gen/point={p:03d}/part-{k:05d}.parquet" for p, k in result.ran_on) == PARTS
    assert len({w["pid"] for w in result.ran_on.values()}) == workers


def test_node_ids_are_reported_but_not_written_into_the_dataset(made):
    out, result = made
    assert {w["node_id"] for w in result.ran_on.values()} == {ray_node_id()}
    assert "node_id" not in (out / MANIFEST).read_text()
    assert pq.read_schema(out / PARTS[0]).names == ["q2", "cos_theta_mu", "cos_theta_k", "chi", "dc9"]


def test_each_worker_sizes_its_thread_pools_to_its_one_cpu(pool):
    for w in pool.warm_up():
        assert w["threads"] == 1 and w["arrow_threads"] == 1
        assert set(w["env"].values()) == {"1"}


def ray_node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# --- resume ---------------------------------------------------------------------


def test_resume_after_deleting_one_part_remakes_only_that_part_with_the_same_bytes(made, pool, reference):
    out, _ = made
    before = mtimes(out)
    (out / PARTS[4]).unlink()
    result = generate(out, pool=pool, **SCAN)
    assert (result.parts_made, result.parts_kept, result.was_complete) == (1, 5, False)
    assert list(result.ran_on) == [(1, 1)]
    assert dataset_bytes(out) == reference
    after = mtimes(out)
    assert {p: t for p, t in after.items() if p != PARTS[4]} == {p: t for p, t in before.items() if p != PARTS[4]}


def test_resume_after_deleting_the_manifest_makes_no_part_and_writes_the_same_manifest(made, pool, reference):
    out, _ = made
    before = mtimes(out)
    (out / MANIFEST).unlink()
    result = generate(out, pool=pool, **SCAN)
    assert (result.parts_made, result.parts_kept) == (0, 6)
    assert dataset_bytes(out) == reference
    assert mtimes(out) == before


def test_resume_remakes_a_part_whose_bytes_changed(made, pool, reference):
    out, _ = made
    (out / PARTS[0]).write_bytes(b"not parquet")
    result = generate(out, pool=pool, **SCAN)
    assert (result.parts_made, result.parts_kept) == (1, 5)
    assert dataset_bytes(out) == reference


def test_rerun_of_a_complete_dataset_is_a_no_op(made, pool):
    out, _ = made
    before = mtimes(out) | {MANIFEST: (out / MANIFEST).stat().st_mtime_ns}
    result = generate(out, pool=pool, **SCAN)
    assert result.was_complete and (result.parts_made, result.parts_kept) == (0, 6)
    assert mtimes(out) | {MANIFEST: (out / MANIFEST).stat().st_mtime_ns} == before
    assert result.manifest == read_manifest(out)


def test_rerun_with_another_config_is_refused_naming_the_differing_fields(made, pool):
    out, _ = made
    before = dataset_bytes(out)
    with pytest.raises(ConfigError, match=r"events: 25000 != 20000; seed: 3 != 4"):
        generate(out, pool=pool, **(SCAN | dict(events=20_000, seed=4)))
    assert dataset_bytes(out) == before


def test_an_interrupted_run_is_refused_with_another_config_and_resumed_with_the_same(
    pool, tmp_path, reference
):
    out = tmp_path / "ds"
    generate(out, pool=pool, **SCAN)
    (out / MANIFEST).unlink()
    for part in PARTS[3:]:
        (out / part).unlink()  # as if the run had stopped after point 0
    with pytest.raises(ConfigError, match=r"chunk_size: 10000 != 5000"):
        generate(out, pool=pool, **(SCAN | dict(chunk_size=5_000)))
    result = generate(out, pool=pool, **SCAN)
    assert (result.parts_made, result.parts_kept) == (3, 3)
    assert dataset_bytes(out) == reference


def test_journal_records_every_part_with_its_checksum(made):
    out, result = made
    entries = [e for p in result.manifest["points"] for e in p["parts"]]
    for e in entries:
        assert json.loads((out / JOURNAL / f"{e['path']}.json").read_text()) == e
    assert json.loads((out / JOURNAL / "config.json").read_text())["config"] == result.manifest["config"]


# --- faults ---------------------------------------------------------------------


def test_a_worker_killed_mid_run_is_replaced_and_the_dataset_is_identical(
    free_cpus, tmp_path, monkeypatch, reference
):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"1:0:{marker}")  # the worker given point 1 part 0 exits, once
    result = generate(tmp_path / "ds", workers=2, **SCAN)
    assert marker.is_file(), "the crash hook did not fire"
    assert result.ran_on[1, 0]["pid"] != int(marker.read_text())
    assert dataset_bytes(tmp_path / "ds") == reference


# --- CLI ------------------------------------------------------------------------


def cli_args(out: Path, *extra: str) -> list[str]:
    return ["generate", "--dc9", "-1,0.5", "--events", "25000", "--seed", "3",
            "--chunk-size", "10000", "--out", str(out), *extra]


def test_cli_generates_on_ray_then_reports_a_complete_dataset(free_cpus, tmp_path, capsys, reference):
    out = tmp_path / "ds"
    assert main(cli_args(out, "--workers", "2")) == 0
    assert dataset_bytes(out) == reference
    capsys.readouterr()
    assert main(cli_args(out, "--workers", "2")) == 0
    assert "complete" in capsys.readouterr().out


def test_cli_refuses_another_config_with_one_line_naming_the_field(made, capsys):
    out, _ = made
    args = cli_args(out, "--workers", "2")
    args[args.index("25000")] = "20000"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("wcscan: error: ")
    assert "events: 25000 != 20000" in err


def test_cli_refuses_more_workers_than_cpus_with_one_line(free_cpus, tmp_path, capsys):
    assert main(cli_args(tmp_path / "ds", "--workers", "64")) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--workers 64" in err
    assert not (tmp_path / "ds").exists()


def test_cli_refuses_address_with_workers_0(tmp_path, capsys):
    assert main(cli_args(tmp_path / "ds", "--workers", "0", "--address", "auto")) == 2
    assert "--address" in capsys.readouterr().err


# --- levels ---------------------------------------------------------------------


@pytest.mark.parametrize("level", ["det", "det_bkg"])
def test_detector_levels_on_ray_equal_the_local_run_and_record_the_detector(pool, tmp_path, level):
    from kernels.detector import DetectorConfig

    scan = SCAN | dict(events=6_000, chunk_size=4_000)
    det = DetectorConfig(bkg_fraction=0.25)
    one = generate(tmp_path / "one", workers=0, level=level, detector=det, **scan).manifest
    generate(tmp_path / "two", pool=pool, level=level, detector=det, **scan)
    assert dataset_bytes(tmp_path / "one") == dataset_bytes(tmp_path / "two")
    assert one["config"]["level"] == level
    assert one["config"]["detector"] == json.loads(json.dumps(det.to_dict()))
    parts = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*.parquet"))
    assert parts[0] == f"level={level}/point=000/part-00000.parquet"
    names = pq.read_schema(tmp_path / "one" / parts[0]).names
    assert ("is_signal" in names) == (level == "det_bkg")


def test_a_detector_config_at_gen_level_is_not_recorded_and_changes_nothing(tmp_path, reference):
    manifest = generate(tmp_path / "ds", workers=0, detector={"bkg_fraction": 0.1}, **SCAN).manifest
    assert "detector" not in manifest["config"]
    assert dataset_bytes(tmp_path / "ds") == reference


def test_a_bad_detector_setting_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="accept"):
        generate(tmp_path / "ds", workers=0, level="det", detector={"accept": 0.5}, **SCAN)
    assert not (tmp_path / "ds").exists()


def test_another_detector_config_is_refused_naming_the_setting(tmp_path):
    scan = SCAN | dict(events=2_000, chunk_size=2_000)
    generate(tmp_path / "ds", workers=0, level="det_bkg", detector={"bkg_fraction": 0.2}, **scan)
    with pytest.raises(ConfigError, match=r"detector\.bkg_fraction: 0\.2 != 0\.3"):
        generate(tmp_path / "ds", workers=0, level="det_bkg", detector={"bkg_fraction": 0.3}, **scan)


def test_cli_level_option_writes_that_level(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["generate", "--dc9", "0", "--events", "2000", "--level", "det", "--workers", "0",
                 "--out", str(out)]) == 0
    assert read_manifest(out)["config"]["level"] == "det"
    assert (out / "level=det" / "point=000" / "part-00000.parquet").is_file()


# --- several nodes ----------------------------------------------------------------


def test_two_node_cluster_runs_items_on_both_nodes_and_writes_the_same_bytes(tmp_path, reference):
    out = tmp_path / "ds"
    config = {k: v for k, v in SCAN.items()}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "multinode_generate.py"), str(out), json.dumps(config)],
        capture_output=True, text=True, timeout=240, env=env, cwd=HERE.parents[1],
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MULTINODE ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("MULTINODE "))
    assert len(report["cluster_nodes"]) == 2
    assert set(report["ran_on"].values()) == set(report["cluster_nodes"])
    assert dataset_bytes(out) == reference


# --- benchmark ------------------------------------------------------------------


def test_bench_scan_times_1_and_2_workers_on_identical_datasets_and_projects_the_seed_study(free_cpus):
    from orchestrator.bench.scan import bench_scan

    r = bench_scan(events_per_point=20_000, points=2, chunk_size=10_000, repeats=1)
    assert r["identical"] is True
    assert r["seconds_1_worker"] > 0 and r["seconds_2_workers"] > 0
    assert r["speedup"] == pytest.approx(r["seconds_1_worker"] / r["seconds_2_workers"])
    assert r["events_per_s"] == pytest.approx(40_000 / r["seconds_2_workers"])
    assert r["projected_seed_study_hours_16_cores"] == pytest.approx(
        22 * 3360 * 24_000 / (16 * r["events_per_s_per_core"]) / 3600
    )
    assert "linear" in r["projection_note"] and "imag" in r["projection_note"]

"""Specification of image-dataset building (orchestrator.build.images) and ``wcscan images``.

Runs on stand-in kernels (a uniform sampler that records its seeds, a fake
theory table), so it pins which events and seeds each split uses, the layout,
the manifest and the errors without flavio.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kernels
import kernels.theory
import orchestrator.build.sources
from kernels.errors import ConfigError, DatasetError
from kernels.event_store import COLUMNS, read_manifest, read_point
from kernels.image_store import FORMAT, open_images, read_image_manifest
from kernels.voxels import CHANNELS, make_images
from orchestrator.build import images as oi
from orchestrator.build.images import TEST_SEED_OFFSET, build_images, plan_build, split_events
from orchestrator.cli import main
from orchestrator.generate.dataset import generate

WINDOWS = [(1.1, 6.0)]
BINS, EPI, K = 3, 50, 10  # 8 train + 2 val images of 50 events per point


def fake_jtable(coefficients, windows, **kw):
    return types.SimpleNamespace(
        key="fake-key", coefficients=("C9_bsmumu",), shift_columns=("dc9",),
        windows=tuple(tuple(w) for w in windows), flavio_version="fake",
    )


def fake_sample(table, shifts, n, seed):
    rng = np.random.default_rng(list(seed))
    cols = {
        "q2": rng.uniform(1.1, 6.0, n),
        "cos_theta_mu": rng.uniform(-1, 1, n),
        "cos_theta_k": rng.uniform(-1, 1, n),
        "chi": rng.uniform(0, 2 * np.pi, n),
    }
    t = {c: pa.array(v.astype(np.float32)) for c, v in cols.items()}
    t["dc9"] = pa.array(np.full(n, float(shifts[0])))
    return pa.table(t)


@pytest.fixture
def seeds(monkeypatch):
    """Stand-in theory and sampler; returns the list of (dc9, n, seed) the sampler was called with."""
    calls: list[tuple] = []

    def sample(table, shifts, n, seed):
        calls.append((float(shifts[0]), n, tuple(seed)))
        return fake_sample(table, shifts, n, seed)

    monkeypatch.setattr(kernels.theory, "jtable", fake_jtable)
    mod = types.ModuleType("kernels.sampler")
    mod.sample = sample
    monkeypatch.setitem(sys.modules, "kernels.sampler", mod)
    monkeypatch.setattr(kernels, "sampler", mod, raising=False)
    return calls


@pytest.fixture
def dataset(tmp_path, seeds):
    root = tmp_path / "events"
    generate(root, [-1.0, 0.5], 1000, 7, WINDOWS, chunk_size=300)
    seeds.clear()
    return root


def rows(table: pa.Table) -> set[tuple]:
    cols = [table.column(c).to_numpy() for c in COLUMNS]
    return set(zip(*(c.tolist() for c in cols)))


def point_events(root, i) -> pa.Table:
    return read_point(root, read_manifest(root), "gen", i).select(list(COLUMNS))


# --- layout and manifest -----------------------------------------------------------


def test_build_writes_one_file_per_split_and_point_and_the_manifest(tmp_path, dataset):
    out = tmp_path / "images"
    manifest = build_images(dataset, out, BINS, EPI, K)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert files == [f"split={s}/point={i:03d}.npy" for s in ("test", "train", "val") for i in (0, 1)]
    assert read_image_manifest(out) == manifest
    assert manifest["format"] == FORMAT
    assert (manifest["bins"], manifest["events_per_image"], manifest["channels"]) == (BINS, EPI, list(CHANNELS))
    assert (manifest["dtype"], manifest["image_shape"], manifest["fill"]) == ("float32", [2, 3, 3, 3], 0.0)
    counts = [(s, p["splits"][s]["images"]) for p in manifest["points"] for s in ("train", "val", "test")]
    assert counts == [("train", 8), ("val", 2), ("test", 2)] * 2


def test_manifest_names_the_source_dataset_and_its_manifest_checksum(tmp_path, dataset):
    manifest = build_images(dataset, tmp_path / "images", BINS, EPI, K)
    src = manifest["source"]
    assert src["kind"] == "dataset" and src["path"] == str(dataset.resolve())
    assert src["manifest_sha256"] == hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()
    assert [p["shifts"] for p in manifest["points"]] == [{"dc9": -1.0}, {"dc9": 0.5}]


def test_no_temporary_files_are_left_behind(tmp_path, dataset):
    out = tmp_path / "images"
    build_images(dataset, out, BINS, EPI, K)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


# --- which events each split uses -----------------------------------------------------


def test_train_and_val_are_consecutive_disjoint_blocks_of_the_stored_events(tmp_path, dataset):
    plan = plan_build(dataset, tmp_path / "images", BINS, EPI, K)
    for i in (0, 1):
        stored = point_events(dataset, i)
        tasks = {t.split: t for t in plan.tasks if t.point == i}
        train, val = split_events(tasks["train"]), split_events(tasks["val"])
        assert train.equals(stored.slice(0, 400)) and val.equals(stored.slice(400, 100))
        assert not rows(train) & rows(val)


def test_test_split_shares_no_event_with_the_dataset(tmp_path, dataset):
    plan = plan_build(dataset, tmp_path / "images", BINS, EPI, K)
    stored = rows(point_events(dataset, 0)) | rows(point_events(dataset, 1))
    for t in plan.tasks:
        if t.split == "test":
            test = split_events(t)
            assert test.num_rows == 2 * EPI
            assert not rows(test) & stored


def test_test_images_are_seeded_apart_from_the_generator_chunks(tmp_path, dataset, seeds):
    build_images(dataset, tmp_path / "images", BINS, EPI, K)
    assert [s for _, _, s in seeds] == [(7, p, TEST_SEED_OFFSET + k) for p in (0, 1) for k in (0, 1)]
    assert [(d, n) for d, n, _ in seeds] == [(-1.0, EPI)] * 2 + [(0.5, EPI)] * 2


def test_stored_images_equal_images_of_the_split_events(tmp_path, dataset):
    out = tmp_path / "images"
    build_images(dataset, out, BINS, EPI, K)
    stored = point_events(dataset, 1)
    np.testing.assert_array_equal(open_images(out, "train", 1), make_images(stored, BINS, EPI, 8, fill=0.0))
    np.testing.assert_array_equal(
        open_images(out, "val", 1), make_images(stored.slice(400), BINS, EPI, 2, fill=0.0)
    )
    test = [fake_sample(None, [0.5], EPI, (7, 1, TEST_SEED_OFFSET + k)) for k in (0, 1)]
    np.testing.assert_array_equal(
        open_images(out, "test", 1), make_images(pa.concat_tables(test), BINS, EPI, 2, fill=0.0)
    )


def test_images_are_read_back_through_a_read_only_memory_map(tmp_path, dataset):
    out = tmp_path / "images"
    build_images(dataset, out, BINS, EPI, K)
    arr = open_images(out, "train", 0)
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert arr.shape == (8, 2, BINS, BINS, BINS)
    assert np.all(arr[:, 1].sum(axis=(1, 2, 3)) == EPI)


def test_the_same_config_gives_the_same_bytes(tmp_path, dataset):
    a, b = tmp_path / "a", tmp_path / "b"
    build_images(dataset, a, BINS, EPI, K, seed=3)
    build_images(dataset, b, BINS, EPI, K, seed=3)
    for f in sorted(a.rglob("*.npy")):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()


def test_batches_of_images_across_parts_give_the_same_images(tmp_path, dataset, monkeypatch):
    build_images(dataset, tmp_path / "a", BINS, EPI, K)
    monkeypatch.setattr(orchestrator.build.sources, "_BATCH_EVENTS", 3 * EPI)  # 3-image batches, straddling the 300-row parts
    build_images(dataset, tmp_path / "b", BINS, EPI, K)
    for s in ("train", "val"):
        np.testing.assert_array_equal(open_images(tmp_path / "a", s, 0), open_images(tmp_path / "b", s, 0))


def test_fill_nan_keeps_empty_voxels_nan_and_is_recorded(tmp_path, dataset):
    manifest = build_images(dataset, tmp_path / "images", 8, EPI, K, fill=math.nan)
    assert manifest["fill"] is None
    arr = open_images(tmp_path / "images", "train", 0)
    assert np.array_equal(np.isnan(arr[:, 0]), arr[:, 1] == 0)


# --- streaming --------------------------------------------------------------------


def test_stream_samples_every_split_with_its_own_seeds(tmp_path, seeds):
    out = tmp_path / "images"
    manifest = build_images(None, out, BINS, EPI, 5, 0.4, stream=True, dc9=[0.0, 1.0], seed=3, test_images=1)
    want = [(3, p, sid, TEST_SEED_OFFSET + k) for p in (0, 1) for sid, n in ((0, 3), (1, 2), (2, 1)) for k in range(n)]
    assert [s for _, _, s in seeds] == want
    assert len(set(want)) == len(want)
    assert manifest["source"]["kind"] == "stream" and manifest["config"]["stream"] is True
    assert not list(out.rglob("*.parquet"))
    val = [fake_sample(None, [1.0], EPI, (3, 1, 1, TEST_SEED_OFFSET + k)) for k in (0, 1)]
    np.testing.assert_array_equal(open_images(out, "val", 1), make_images(pa.concat_tables(val), BINS, EPI, 2, fill=0.0))


def test_stream_needs_scan_points(tmp_path, seeds):
    with pytest.raises(ConfigError, match="--stream needs --dc9"):
        build_images(None, tmp_path / "images", BINS, EPI, 5, stream=True)


# --- refusals ----------------------------------------------------------------------


def test_too_few_events_names_the_point_and_the_counts_and_writes_nothing(tmp_path, dataset):
    out = tmp_path / "images"
    with pytest.raises(DatasetError) as err:
        build_images(dataset, out, BINS, 100, 11)
    assert str(err.value) == (
        "point 0 (dc9=-1) has 1000 gen events; 11 images x 100 events (9 train + 2 val) need 1100; "
        "1 more point(s) are short too"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"bins": 0}, "--bins must be an integer in [1, 512]"),
        ({"events_per_image": 0}, "--events-per-image must be a positive integer"),
        ({"images_per_point": 0}, "--images-per-point must be a positive integer"),
        ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
        ({"val_fraction": 0.95}, "leaves no training image"),
        ({"test_images": -1}, "--test-images must be a non-negative integer"),
        ({"seed": -2}, "--seed must be a non-negative integer"),
    ],
)
def test_bad_settings_are_config_errors_before_any_write(tmp_path, dataset, kwargs, fragment):
    args = {"bins": BINS, "events_per_image": EPI, "images_per_point": K, **kwargs}
    out = tmp_path / "images"
    with pytest.raises(ConfigError) as err:
        build_images(dataset, out, **args)
    assert fragment in str(err.value)
    assert not out.exists()


def test_a_non_empty_output_directory_is_refused(tmp_path, dataset):
    out = tmp_path / "images"
    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        build_images(dataset, out, BINS, EPI, K)


def test_a_failure_midway_removes_the_partial_image_dataset(tmp_path, dataset, monkeypatch):
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return make_images(*a, **kw)

    monkeypatch.setattr(oi, "make_images", failing)
    out = tmp_path / "images"
    with pytest.raises(RuntimeError):
        build_images(dataset, out, BINS, EPI, K)
    assert not out.exists()


# --- the command line -------------------------------------------------------------------


def one_line_error(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wcscan: error: "), err
    return lines[0]


def images_args(*extra, out) -> list[str]:
    return ["images", "-q", "--bins", str(BINS), "--events-per-image", str(EPI), "--out", str(out), *extra]


def test_help_explains_the_seed_study_settings(capsys):
    assert main(["images", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--bins 50 --events-per-image 24000 reproduces the seed study" in text
    for option in ("--dataset", "--events-file", "--column-map", "--stream", "--val-fraction", "--test-images"):
        assert option in text


def test_cli_builds_the_image_dataset(tmp_path, dataset, capsys):
    out = tmp_path / "images"
    code = main(images_args("--dataset", str(dataset), "--images-per-point", "10", "--test-images", "1", out=out))
    assert code == 0, capsys.readouterr().err
    assert "wrote 22 images" in capsys.readouterr().out
    manifest = read_image_manifest(out)
    assert manifest["config"]["test_images"] == 1 and manifest["config"]["seed"] == 7


def test_cli_too_few_events_exits_2_with_one_line(tmp_path, dataset, capsys):
    out = tmp_path / "images"
    code = main(images_args("--dataset", str(dataset), "--images-per-point", "100", out=out))
    line = one_line_error(capsys, code)
    assert "point 0 (dc9=-1) has 1000 gen events" in line and "need 5000" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ((), "give exactly one of --dataset, --events-file, --stream"),
        (("--dataset", "D", "--stream", "--images-per-point", "2"), "(got --dataset, --stream)"),
        (("--dataset", "D", "--dc9", "-1:1:3", "--images-per-point", "2"), "--dc9 only go with --stream"),
        (("--stream", "--dc9", "0", "--events", "120"), "--events 120 must be --images-per-point x --events-per-image"),
        (("--stream", "--dc9", "0"), "--images-per-point is required (or --events with --stream)"),
        (("--dataset", "D", "--column-map", "q2=Q", "--images-per-point", "2"), "--column-map only goes with"),
        (("--events-file", "F", "--column-map", "qq=Q", "--images-per-point", "2"), "'qq' is not a wcscan column"),
        (("--dataset", "nowhere", "--images-per-point", "2"), "no such dataset directory"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(tmp_path, capsys, seeds, extra, fragment):
    code = main(images_args(*extra, out=tmp_path / "images"))
    assert fragment in one_line_error(capsys, code)


def test_cli_stream_with_events_sets_the_images_per_point(tmp_path, capsys, seeds):
    out = tmp_path / "images"
    code = main(images_args("--stream", "--dc9", "-1,0", "--events", "500", "--seed", "2", out=out))
    assert code == 0, capsys.readouterr().err
    manifest = read_image_manifest(out)
    assert manifest["config"]["images_per_point"] == 10
    assert [p["shifts"]["dc9"] for p in manifest["points"]] == [-1.0, 0.0]


def test_cli_reads_a_users_events_file_with_a_column_map(tmp_path, capsys, seeds):
    t = pa.concat_tables([fake_sample(None, [v], 500, (9, i)) for i, v in enumerate((0.0, -1.0))])
    t = t.rename_columns(["Q2", "ctl", "cos_theta_k", "chi", "dc9"])
    path = tmp_path / "mine.parquet"
    pq.write_table(t, path)
    out = tmp_path / "images"
    code = main(images_args("--events-file", str(path), "--column-map", "q2=Q2,cos_theta_mu=ctl",
                            "--images-per-point", "10", out=out))
    assert code == 0, capsys.readouterr().err
    manifest = read_image_manifest(out)
    assert [p["shifts"] for p in manifest["points"]] == [{"dc9": -1.0}, {"dc9": 0.0}]
    assert manifest["source"]["kind"] == "events_file"
    assert manifest["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p["splits"]["test"]["images"] for p in manifest["points"]] == [0, 0]
    mine = fake_sample(None, [-1.0], 500, (9, 1))
    np.testing.assert_array_equal(open_images(out, "train", 0), make_images(mine, BINS, EPI, 8, fill=0.0))


def test_cli_events_file_with_invalid_events_exits_2(tmp_path, capsys):
    t = fake_sample(None, [0.0], 100, (1,))
    t = t.set_column(1, "cos_theta_mu", pa.array(np.full(100, 3.0, np.float32)))
    path = tmp_path / "bad.parquet"
    pq.write_table(t, path)
    code = main(images_args("--events-file", str(path), "--images-per-point", "1", out=tmp_path / "images"))
    assert "'cos_theta_mu' has 100 value(s) outside [-1, 1]" in one_line_error(capsys, code)


def test_cli_events_file_refuses_test_images(tmp_path, capsys):
    path = tmp_path / "ev.parquet"
    pq.write_table(fake_sample(None, [0.0], 100, (1,)), path)
    code = main(images_args("--events-file", str(path), "--images-per-point", "1", "--test-images", "1",
                            out=tmp_path / "images"))
    assert "--test-images needs theory" in one_line_error(capsys, code)


# --- benchmark -------------------------------------------------------------------------


def test_bench_images_reports_rates_and_agrees_with_scipy():
    from orchestrator.bench.images import bench_images

    r = bench_images(events=2000, bins=8, repeats=1, events_per_image=500, polars=False)
    assert r["agrees_with_baseline"] is True
    assert r["ratio"] == pytest.approx(r["ours_events_per_s_per_core"] / r["baseline_events_per_s_per_core"])
    assert r["images"] == 4


def test_cli_bench_images_prints_json(capsys, monkeypatch):
    import orchestrator.bench.images as bi

    real = bi.bench_images
    monkeypatch.setattr(bi, "bench_images", lambda: real(events=1000, bins=4, repeats=1, events_per_image=250))
    assert main(["bench", "images", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("ours_events_per_s_per_core", "baseline_events_per_s_per_core", "ratio"):
        assert result[key] > 0


def test_images_built_by_ray_tasks_per_point_and_split_equal_the_in_process_build(tmp_path, ray_local):
    """Parallel Ray tasks, one per (point, split), write the same bytes as the in-process build."""
    from kernels import theory
    from orchestrator.build.images import build_images
    from orchestrator.generate.dataset import generate

    theory.jtable(["C9_bsmumu"], [(1.1, 6.0)])  # warm the disk cache for the workers
    events = tmp_path / "ev"
    generate(events, [-1.0, 0.5], 6000, 7, [(1.1, 6.0)], chunk_size=3000)
    local = build_images(events, tmp_path / "local", 6, 500, 8, 0.25, test_images=2)
    on_ray = build_images(events, tmp_path / "ray", 6, 500, 8, 0.25, test_images=2, workers=2)
    assert on_ray == local
    for f in sorted((tmp_path / "local").rglob("*.npy")):
        assert f.read_bytes() == (tmp_path / "ray" / f.relative_to(tmp_path / "local")).read_bytes()

"""Specification of dataset generation and fitting (orchestrator.generate.dataset / .fitting).

The first part runs the orchestration on stand-in kernels (a uniform sampler,
a recording fitter), so it pins the layout, manifest, chunking, determinism and
clean-up without flavio. The second part runs end to end on the real kernels
and is skipped until they exist.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import kernels
import kernels.theory
from kernels.errors import DatasetError
from kernels.event_store import COLUMNS, MANIFEST, read_manifest, read_point, validate_events
from orchestrator.cli import main
from orchestrator.evaluate.fit import POINT_COLUMNS, fit_dataset, write_points_csv
from orchestrator.generate import dataset as gen_mod
from orchestrator.generate.dataset import generate

WINDOWS = [(1.1, 6.0)]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


# --- stand-in kernels -----------------------------------------------------------


def fake_jtable(coefficients, windows, **kw):
    return types.SimpleNamespace(
        key="fake-key", coefficients=("C9_bsmumu",), shift_columns=("dc9",),
        windows=tuple(windows), flavio_version="fake",
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


def _install(monkeypatch, name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(f"kernels.{name}")
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, f"kernels.{name}", mod)
    monkeypatch.setattr(kernels, name, mod, raising=False)
    return mod


@pytest.fixture
def fake_kernels(monkeypatch):
    """Uniform sampler, recording fitter: fast and independent of flavio."""
    monkeypatch.setattr(kernels.theory, "jtable", fake_jtable)
    _install(monkeypatch, "sampler", sample=fake_sample)
    seen: list[np.ndarray] = []

    def fit_sets(table, arr, model=None, progress=None):
        seen.append(arr)
        m = arr.shape[0]
        for _ in range(m):
            if progress is not None:
                progress(1)
        return types.SimpleNamespace(values=arr[:, :, 0].mean(axis=1), errors=np.ones(m),
                                     valid=np.ones(m, bool))

    def sigma_crb(table, shifts, n, model=None):
        return np.array([1.0 / np.sqrt(n)])

    def point_metrics(values, errors, truth, sigma_crb, n_events):
        row = {c: 0.0 for c in POINT_COLUMNS}
        row.update(dc9_true=truth, n_sets=len(values), n_events=n_events,
                   mean=float(np.mean(values)), sigma_crb=sigma_crb, extra="ignored")
        return row

    _install(monkeypatch, "likelihood", fit_sets=fit_sets, sigma_crb=sigma_crb, GEN=None, PdfModel=None)
    _install(monkeypatch, "metrics", point_metrics=point_metrics)
    return types.SimpleNamespace(fit_inputs=seen)


# --- generation: layout and manifest --------------------------------------------


def test_generate_writes_one_partition_per_point_and_the_manifest(tmp_path, fake_kernels):
    out = tmp_path / "ds"
    manifest = generate(out, [-1.0, 0.5], 1000, 7, WINDOWS, chunk_size=400).manifest
    rel = [p.relative_to(out).as_posix() for p in parquet_files(out)]
    assert rel == [f"level=gen/point={i:03d}/part-{k:05d}.parquet" for i in (0, 1) for k in (0, 1, 2)]
    assert read_manifest(out) == manifest


def test_generate_splits_events_into_full_chunks_then_the_remainder(tmp_path, fake_kernels):
    manifest = generate(tmp_path / "ds", [0.0], 1000, 7, WINDOWS, chunk_size=400).manifest
    assert [p["rows"] for p in manifest["points"][0]["parts"]] == [400, 400, 200]


def test_manifest_records_config_seeds_shifts_and_checksums(tmp_path, fake_kernels):
    from kernels.event_store import point_checksum

    m = generate(tmp_path / "ds", [-1.0, 0.5], 300, 7, WINDOWS, chunk_size=200).manifest
    assert m["format"] == "wcscan-events/1"
    assert m["theory_key"] == "fake-key"
    assert {"generator_version", "flavio_version"} <= m.keys()
    assert m["config"] == {"coefficients": ["C9_bsmumu"], "windows": [[1.1, 6.0]], "events": 300,
                           "seed": 7, "chunk_size": 200, "level": "gen", "dc9": [-1.0, 0.5]}
    for i, (p, v) in enumerate(zip(m["points"], [-1.0, 0.5])):
        assert (p["index"], p["shifts"], p["events"], p["seed"]) == (i, {"dc9": v}, 300, [7, i])
        assert p["checksum"] == point_checksum(p["parts"])


def test_generate_reports_progress_in_events(tmp_path, fake_kernels):
    calls: list[int] = []
    generate(tmp_path / "ds", [0.0, 1.0], 500, 1, WINDOWS, chunk_size=200, progress=calls.append)
    assert calls == [200, 200, 100, 200, 200, 100]


def test_generate_into_an_existing_empty_directory_is_allowed(tmp_path, fake_kernels):
    generate(tmp_path, [0.0], 10, 1, WINDOWS)
    assert (tmp_path / MANIFEST).is_file()


def test_same_seed_gives_identical_bytes_whatever_the_order_of_items(tmp_path, fake_kernels, monkeypatch):
    generate(tmp_path / "a", [0.0, 1.0], 500, 3, WINDOWS, chunk_size=200)
    original = gen_mod.work_items
    monkeypatch.setattr(gen_mod, "work_items", lambda *a: reversed(list(original(*a))))
    generate(tmp_path / "b", [0.0, 1.0], 500, 3, WINDOWS, chunk_size=200)
    a, b = parquet_files(tmp_path / "a"), parquet_files(tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()


def test_failure_midway_leaves_no_manifest_and_keeps_the_finished_parts_for_a_resume(
    tmp_path, fake_kernels, monkeypatch
):
    def sample(table, shifts, n, seed):
        if seed[1] == 1:
            raise RuntimeError("sampler died")
        return fake_sample(table, shifts, n, seed)

    monkeypatch.setattr(kernels.sampler, "sample", sample)
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="sampler died"):
        generate(out, [0.0, 1.0], 100, 1, WINDOWS)
    assert not (out / MANIFEST).exists()
    assert [p.relative_to(out).as_posix() for p in parquet_files(out)] == [
        "level=gen/point=000/part-00000.parquet"
    ]

    monkeypatch.setattr(kernels.sampler, "sample", fake_sample)
    generate(out, [0.0, 1.0], 100, 1, WINDOWS)
    generate(tmp_path / "undisturbed", [0.0, 1.0], 100, 1, WINDOWS)
    assert [p.read_bytes() for p in parquet_files(out)] == [
        p.read_bytes() for p in parquet_files(tmp_path / "undisturbed")
    ]
    assert (out / MANIFEST).read_bytes() == (tmp_path / "undisturbed" / MANIFEST).read_bytes()


def test_failure_midway_keeps_a_pre_existing_empty_output_dir_empty(tmp_path, fake_kernels, monkeypatch):
    monkeypatch.setattr(kernels.sampler, "sample", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        generate(tmp_path, [0.0], 100, 1, WINDOWS)
    assert list(tmp_path.iterdir()) == []


def test_generate_validates_every_argument_before_touching_the_disk(tmp_path, fake_kernels):
    from kernels.errors import ConfigError, TheoryError

    out = tmp_path / "ds"
    for kwargs, err in [
        (dict(events=0), ConfigError),
        (dict(dc9=[float("nan")]), ConfigError),
        (dict(dc9=[]), ConfigError),
        (dict(seed=-3), ConfigError),
        (dict(chunk_size=0), ConfigError),
        (dict(windows=[(7.0, 12.0)]), TheoryError),
    ]:
        args = dict(out=out, dc9=[0.0], events=10, seed=0, windows=WINDOWS) | kwargs
        with pytest.raises(err):
            generate(**args)
        assert not out.exists()


# --- fitting on stand-in kernels -------------------------------------------------


def test_fit_cuts_the_first_events_into_disjoint_consecutive_sets(tmp_path, fake_kernels):
    out = tmp_path / "ds"
    m = generate(out, [0.0], 1000, 1, WINDOWS, chunk_size=300).manifest
    fit_dataset(out, events_per_set=70, sets=4)
    (arr,) = fake_kernels.fit_inputs
    assert arr.shape == (4, 70, 4) and arr.dtype == np.float64
    events = read_point(out, m, "gen", 0)
    expected = np.stack([events.column(c).to_numpy() for c in COLUMNS], axis=-1)[:280]
    np.testing.assert_array_equal(arr.reshape(280, 4), expected)


def test_fit_returns_one_row_per_point_with_the_16_columns(tmp_path, fake_kernels):
    out = tmp_path / "ds"
    generate(out, [-1.0, 1.0], 200, 1, WINDOWS)
    rows = fit_dataset(out, events_per_set=50, sets=2)
    assert [list(r) for r in rows] == [list(POINT_COLUMNS)] * 2
    assert [r["dc9_true"] for r in rows] == [-1.0, 1.0]


def test_fit_reports_progress_in_sets(tmp_path, fake_kernels):
    out = tmp_path / "ds"
    generate(out, [-1.0, 1.0], 200, 1, WINDOWS)
    calls: list[int] = []
    fit_dataset(out, events_per_set=50, sets=3, progress=calls.append)
    assert sum(calls) == 6


def test_fit_with_too_few_events_names_the_point_and_the_counts(tmp_path, fake_kernels):
    out = tmp_path / "ds"
    generate(out, [0.0], 200, 1, WINDOWS)
    with pytest.raises(DatasetError, match=r"point 0 \(dc9=0\) has 200 events, needs 300 \(3 sets x 100"):
        fit_dataset(out, events_per_set=100, sets=3)
    assert fake_kernels.fit_inputs == []


def test_fit_refuses_invalid_events_naming_the_point(tmp_path, fake_kernels, monkeypatch):
    def sample(table, shifts, n, seed):
        t = fake_sample(table, shifts, n, seed)
        return t.set_column(3, "chi", pa.array(np.full(n, 9.0, np.float32)))

    monkeypatch.setattr(kernels.sampler, "sample", sample)
    out = tmp_path / "ds"
    generate(out, [0.0], 100, 1, WINDOWS)
    with pytest.raises(DatasetError, match=r"point=000: column 'chi' has 100 value"):
        fit_dataset(out, events_per_set=10, sets=2)


def test_points_csv_has_exactly_the_16_columns_in_order(tmp_path):
    row = {c: float(i) for i, c in enumerate(POINT_COLUMNS)} | {"n_sets": 5, "extra": 1}
    path = write_points_csv([row], tmp_path / "fit.csv")
    with open(path, newline="") as fh:
        header, values = list(csv.reader(fh))
    assert header == list(POINT_COLUMNS)
    assert values[1] == "5" and float(values[0]) == 0.0


def test_cli_generate_then_fit_writes_the_csv(tmp_path, fake_kernels, capsys):
    out = tmp_path / "ds"
    assert main(["generate", "--dc9", "-1:1:3", "--events", "400", "--seed", "2", "--workers", "0",
                 "--out", str(out)]) == 0
    assert main(["fit", "--dataset", str(out), "--events-per-set", "100", "--sets", "4",
                 "--out", str(tmp_path / "fit.csv")]) == 0
    with open(tmp_path / "fit.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["dc9_true"]) for r in rows] == [-1.0, 0.0, 1.0]
    assert list(rows[0]) == list(POINT_COLUMNS)
    text = capsys.readouterr().out
    assert "pull sd" in text and f"wrote all {len(POINT_COLUMNS)} columns" in text and len(POINT_COLUMNS) == 16
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the figure beside the CSV


def test_cli_fit_with_too_few_events_is_one_line_naming_point_and_counts(tmp_path, fake_kernels, capsys):
    out = tmp_path / "ds"
    main(["generate", "--dc9", "0.5", "--events", "100", "--workers", "0", "--out", str(out)])
    capsys.readouterr()
    code = main(["fit", "--dataset", str(out), "--events-per-set", "60", "--sets", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "point 0" in err and "has 100 events, needs 120" in err


# --- end to end on the real kernels -----------------------------------------------

needs_sampler = pytest.mark.skipif(not _has("kernels.sampler"), reason="kernels.sampler not there yet")
needs_fit = pytest.mark.skipif(
    not (_has("kernels.likelihood") and _has("kernels.metrics")),
    reason="kernels.likelihood / kernels.metrics not there yet",
)


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    if not _has("kernels.sampler"):
        pytest.skip("kernels.sampler not there yet")
    out = tmp_path_factory.mktemp("real") / "ds"
    manifest = generate(out, [-1.0, 1.0], 20_000, 5, WINDOWS, chunk_size=8_000).manifest
    return out, manifest


@needs_sampler
def test_real_generate_writes_layout_manifest_and_row_counts(real_dataset):
    out, manifest = real_dataset
    assert read_manifest(out) == manifest
    rel = [p.relative_to(out).as_posix() for p in parquet_files(out)]
    assert rel == [f"level=gen/point={i:03d}/part-{k:05d}.parquet" for i in (0, 1) for k in (0, 1, 2)]
    for p in manifest["points"]:
        t = read_point(out, manifest, "gen", p["index"], verify_checksums=True)
        assert t.num_rows == 20_000
        validate_events(t, f"point {p['index']}", q2_windows=WINDOWS)


@needs_sampler
def test_real_generate_writes_the_contract_columns_and_the_dc9_value(real_dataset):
    out, manifest = real_dataset
    for p, v in zip(manifest["points"], [-1.0, 1.0]):
        t = read_point(out, manifest, "gen", p["index"])
        assert [t.schema.field(c).type for c in COLUMNS] == [pa.float32()] * 4
        assert t.schema.field("dc9").type == pa.float64()
        assert np.all(t.column("dc9").to_numpy() == v)


@needs_sampler
def test_real_generate_is_byte_identical_for_the_same_seed_and_differs_for_another(tmp_path):
    for name, seed in [("a", 11), ("b", 11), ("c", 12)]:
        generate(tmp_path / name, [0.0, 1.0], 5_000, seed, WINDOWS, chunk_size=3_000)
    files = {n: [p.read_bytes() for p in parquet_files(tmp_path / n)] for n in "abc"}
    assert files["a"] == files["b"]
    assert all(x != y for x, y in zip(files["a"], files["c"]))


@needs_sampler
def test_real_generate_interrupted_on_the_second_point_leaves_no_manifest_and_only_point_0(
    tmp_path, monkeypatch
):
    import kernels.sampler as sampler

    real = sampler.sample

    def sample(table, shifts, n, seed):
        if seed[1] == 1:
            raise RuntimeError("interrupted")
        return real(table, shifts, n, seed)

    monkeypatch.setattr(sampler, "sample", sample)
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="interrupted"):
        generate(out, [0.0, 1.0], 2_000, 1, WINDOWS)
    assert not (out / MANIFEST).exists()
    assert sorted(p.name for p in (out / "level=gen").iterdir()) == ["point=000"]  # kept for a resume


@needs_sampler
@needs_fit
def test_real_fit_of_2000_x_5_writes_a_csv_with_the_16_columns(real_dataset, tmp_path):
    out, _ = real_dataset
    rows = fit_dataset(out, events_per_set=2_000, sets=5)
    path = write_points_csv(rows, tmp_path / "fit.csv")
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(POINT_COLUMNS)
    assert [float(r["dc9_true"]) for r in table] == [-1.0, 1.0]
    assert all(int(r["n_sets"]) == 5 and int(r["n_events"]) == 2_000 for r in table)


@needs_sampler
@needs_fit
def test_real_fit_with_too_few_events_is_one_line_naming_point_and_counts(real_dataset, capsys):
    out, _ = real_dataset
    code = main(["fit", "--dataset", str(out), "--events-per-set", "3000", "--sets", "7"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "point 0" in err and "has 20000 events, needs 21000" in err

"""Specification of the event-dataset contract (kernels.event_store)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from kernels.errors import DatasetError
from kernels.event_store import (
    COLUMNS,
    LEVELS,
    MANIFEST,
    load_events,
    part_path,
    point_checksum,
    read_manifest,
    read_point,
    validate_events,
    write_manifest,
    write_part,
)


def events(n: int = 100, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "q2": pa.array(rng.uniform(1.1, 6.0, n), pa.float32()),
            "cos_theta_mu": pa.array(rng.uniform(-1, 1, n), pa.float32()),
            "cos_theta_k": pa.array(rng.uniform(-1, 1, n), pa.float32()),
            "chi": pa.array(rng.uniform(0, 2 * np.pi, n), pa.float32()),
            "dc9": pa.array(np.full(n, -1.5), pa.float64()),
        }
    )


def with_column(table: pa.Table, name: str, values) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, name, values)


# --- layout -----------------------------------------------------------------


def test_contract_constants():
    assert COLUMNS == ("q2", "cos_theta_mu", "cos_theta_k", "chi")
    assert LEVELS == ("gen", "det", "det_bkg")
    assert MANIFEST == "manifest.json"


def test_part_path_is_hive_partitioned_by_zero_padded_integer_point(tmp_path):
    p = part_path(tmp_path, "det_bkg", 7, 12)
    assert p.relative_to(tmp_path).as_posix() == "level=det_bkg/point=007/part-00012.parquet"


def test_part_path_rejects_unknown_level(tmp_path):
    with pytest.raises(DatasetError, match="unknown level"):
        part_path(tmp_path, "reco", 0, 0)


# --- parts ------------------------------------------------------------------


def test_write_part_returns_relative_path_rows_and_file_sha256(tmp_path):
    import hashlib

    info = write_part(tmp_path, "gen", 1, 0, events(50))
    assert info["path"] == "level=gen/point=001/part-00000.parquet"
    assert info["rows"] == 50
    data = (tmp_path / info["path"]).read_bytes()
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


def test_write_part_gives_identical_bytes_for_the_same_table_twice(tmp_path):
    a = write_part(tmp_path / "a", "gen", 0, 0, events())
    b = write_part(tmp_path / "b", "gen", 0, 0, events())
    assert (tmp_path / "a" / a["path"]).read_bytes() == (tmp_path / "b" / b["path"]).read_bytes()
    assert a["sha256"] == b["sha256"]


def test_write_part_gives_different_bytes_for_different_tables(tmp_path):
    a = write_part(tmp_path, "gen", 0, 0, events(seed=1))
    b = write_part(tmp_path, "gen", 0, 1, events(seed=2))
    assert a["sha256"] != b["sha256"]


def test_write_part_leaves_no_temporary_files(tmp_path):
    write_part(tmp_path, "gen", 0, 0, events())
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert files == ["part-00000.parquet"]


def test_write_part_uses_zstd_compression(tmp_path):
    import pyarrow.parquet as pq

    info = write_part(tmp_path, "gen", 0, 0, events())
    meta = pq.ParquetFile(tmp_path / info["path"]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_point_checksum_depends_on_part_order(tmp_path):
    a = write_part(tmp_path, "gen", 0, 0, events(seed=1))
    b = write_part(tmp_path, "gen", 0, 1, events(seed=2))
    assert point_checksum([a, b]) != point_checksum([b, a])
    assert point_checksum([a, b]) == point_checksum([dict(a), dict(b)])


# --- manifest ---------------------------------------------------------------


def test_manifest_round_trips_with_sorted_keys_and_indent_2(tmp_path):
    manifest = {"points": [{"index": 0}], "format": "wcscan-events/1"}
    write_manifest(tmp_path, manifest)
    text = (tmp_path / MANIFEST).read_text()
    assert text == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert read_manifest(tmp_path) == manifest


def test_write_manifest_replaces_atomically_leaving_no_temporary_file(tmp_path):
    write_manifest(tmp_path, {"v": 1})
    write_manifest(tmp_path, {"v": 2})
    assert read_manifest(tmp_path) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_missing_manifest_is_a_dataset_error_saying_incomplete(tmp_path):
    with pytest.raises(DatasetError, match="no manifest.json — dataset is incomplete") as exc:
        read_manifest(tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_corrupt_manifest_is_a_one_line_dataset_error(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DatasetError, match="corrupt manifest") as exc:
        read_manifest(tmp_path)
    assert "\n" not in str(exc.value)


def test_missing_dataset_directory_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        read_manifest(tmp_path / "nope")


# --- reading points ---------------------------------------------------------


def _dataset_with_two_parts(root):
    parts = [write_part(root, "gen", 0, k, events(30, seed=k)) for k in range(2)]
    manifest = {"points": [{"index": 0, "parts": parts, "checksum": point_checksum(parts)}]}
    write_manifest(root, manifest)
    return manifest


def test_read_point_concatenates_parts_in_manifest_order(tmp_path):
    manifest = _dataset_with_two_parts(tmp_path)
    table = read_point(tmp_path, manifest, "gen", 0)
    expected = pa.concat_tables([events(30, seed=0), events(30, seed=1)])
    assert table.equals(expected)


def test_read_point_names_a_missing_part_file(tmp_path):
    manifest = _dataset_with_two_parts(tmp_path)
    (tmp_path / manifest["points"][0]["parts"][1]["path"]).unlink()
    with pytest.raises(DatasetError, match="part-00001.parquet: part listed in the manifest is missing"):
        read_point(tmp_path, manifest, "gen", 0)


def test_read_point_refuses_a_changed_part_by_default(tmp_path):
    manifest = _dataset_with_two_parts(tmp_path)
    write_part(tmp_path, "gen", 0, 1, events(30, seed=99))
    with pytest.raises(DatasetError, match="part-00001.parquet: sha256 differs from the manifest"):
        read_point(tmp_path, manifest, "gen", 0)
    assert read_point(tmp_path, manifest, "gen", 0, verify_checksums=False).num_rows == 60  # when asked not to check


def test_read_point_rejects_an_unknown_point(tmp_path):
    manifest = _dataset_with_two_parts(tmp_path)
    with pytest.raises(DatasetError, match="point 5 is not in the manifest"):
        read_point(tmp_path, manifest, "gen", 5)


# --- validation -------------------------------------------------------------


def test_valid_events_pass():
    validate_events(events(), "src", q2_windows=[(1.1, 6.0)])


def test_missing_column_is_named():
    with pytest.raises(DatasetError, match=r"src: missing column 'chi'"):
        validate_events(events().drop_columns(["chi"]), "src")


def test_string_column_is_rejected_as_non_floating_with_row_count():
    t = with_column(events(10), "cos_theta_k", pa.array(["x"] * 10))
    with pytest.raises(DatasetError, match=r"src: column 'cos_theta_k' has type string.*10 rows"):
        validate_events(t, "src")


def test_integer_column_is_rejected_as_non_floating():
    t = with_column(events(10), "q2", pa.array(np.arange(10), pa.int64()))
    with pytest.raises(DatasetError, match=r"column 'q2' has type int64, expected floating"):
        validate_events(t, "src")


def test_nan_values_are_counted_and_the_column_named():
    q2 = np.full(20, 2.0, np.float32)
    q2[[3, 7, 11]] = np.nan
    t = with_column(events(20), "q2", pa.array(q2))
    with pytest.raises(DatasetError, match=r"src: column 'q2' has 3 non-finite"):
        validate_events(t, "src")


def test_infinite_and_null_values_count_as_non_finite():
    chi = pa.array([1.0, float("inf"), None, 2.0], pa.float32())
    t = with_column(events(4), "chi", chi)
    with pytest.raises(DatasetError, match=r"column 'chi' has 2 non-finite"):
        validate_events(t, "src")


@pytest.mark.parametrize("column", ["cos_theta_mu", "cos_theta_k"])
def test_cosine_outside_minus_one_to_one_is_counted(column):
    values = np.zeros(10, np.float32)
    values[:2] = [1.5, -1.01]
    t = with_column(events(10), column, pa.array(values))
    with pytest.raises(DatasetError, match=rf"column '{column}' has 2 value\(s\) outside \[-1, 1\]"):
        validate_events(t, "src")


def test_chi_outside_zero_to_two_pi_is_counted():
    chi = np.full(10, 1.0, np.float32)
    chi[[0, 4, 9]] = [-0.1, 7.0, 2 * math.pi + 0.01]
    t = with_column(events(10), "chi", pa.array(chi))
    with pytest.raises(DatasetError, match=r"column 'chi' has 3 value\(s\) outside \[0, 2 pi\]"):
        validate_events(t, "src")


def test_chi_of_float32_two_pi_is_inside():
    t = with_column(events(3), "chi", pa.array(np.full(3, 2 * math.pi, np.float32)))
    validate_events(t, "src")


def test_q2_outside_the_union_of_windows_is_counted():
    q2 = np.array([1.5, 5.9, 7.0, 12.0, 16.0, 20.0], np.float32)
    t = with_column(events(6), "q2", pa.array(q2))
    with pytest.raises(DatasetError, match=r"column 'q2' has 3 value\(s\) outside the q2 window"):
        validate_events(t, "src", q2_windows=[(1.1, 6.0), (15.0, 19.0)])


def test_q2_is_not_checked_without_windows():
    t = with_column(events(2), "q2", pa.array(np.array([0.5, 30.0], np.float32)))
    validate_events(t, "src")


def test_validation_message_is_one_line_even_with_several_problems():
    t = with_column(events(5), "chi", pa.array(np.full(5, -1.0, np.float32)))
    t = with_column(t, "q2", pa.array(np.full(5, np.nan, np.float32)))
    with pytest.raises(DatasetError) as exc:
        validate_events(t, "src")
    assert "\n" not in str(exc.value)
    assert "'q2'" in str(exc.value) and "'chi'" in str(exc.value)


# --- user files -------------------------------------------------------------


def test_load_events_reads_a_parquet_file_and_applies_the_column_map(tmp_path):
    import pyarrow.parquet as pq

    t = events(10).rename_columns(["Q2", "ctl", "ctk", "phi", "dc9"])
    pq.write_table(t, tmp_path / "mine.parquet")
    loaded = load_events(tmp_path / "mine.parquet", {"Q2": "q2", "ctl": "cos_theta_mu",
                                                     "ctk": "cos_theta_k", "phi": "chi"})
    assert loaded.column_names == ["q2", "cos_theta_mu", "cos_theta_k", "chi", "dc9"]
    validate_events(loaded, "mine.parquet")


def test_load_events_on_a_corrupt_file_is_a_one_line_error_naming_it(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(DatasetError, match="bad.parquet: cannot read Parquet file") as exc:
        load_events(bad)
    assert "\n" not in str(exc.value)


def test_load_events_on_a_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetError, match="nope.parquet: no such file"):
        load_events(tmp_path / "nope.parquet")

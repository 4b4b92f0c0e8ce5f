"""Outside services are checked before any work: one line, exit 2, nothing written; a full disk mid-job is one line.

The rows of issue 17's table: an unknown tracking scheme, an MLflow port where no server listens, a Ray address
where no cluster listens, an event count that cannot fit on the disk; and a disk that fills during ``generate``
(a 3 MB tmpfs when this process may mount one, else writes sent to /dev/full), which keeps the finished part for
a resume.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from contextlib import contextmanager

import pytest

from kernels.errors import ServiceError
from orchestrator.cli import main


def _refused(capsys, argv, *fragments):
    code = main([str(a) for a in argv])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("wcscan: error: "), lines
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def closed_port():
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GENERATE = ["generate", "--dc9", "0", "--events", "100", "--workers", "0"]


@pytest.mark.parametrize("command", ["run", "tune", "globalfit"])
def test_an_unknown_tracking_scheme_is_refused_before_any_work(capsys, tmp_path, tiny_dataset, command):
    argv = {"run": ["run", "--config", "demo"], "globalfit": ["globalfit", "--config", "demo"],
            "tune": ["tune", "--model", "deepsets", "--dataset", tiny_dataset]}[command]
    _refused(capsys, [*argv, "--out", tmp_path / "o", "--tracking-uri", "bogus://x"], "unknown scheme 'bogus'")
    assert not (tmp_path / "o").exists()


def test_a_tracking_server_that_does_not_answer_is_refused_before_any_work(capsys, tmp_path, closed_port):
    uri = f"http://127.0.0.1:{closed_port}"
    _refused(capsys, ["run", "--config", "demo", "--out", tmp_path / "o", "--tracking-uri", uri],
             f"--tracking-uri {uri}", "unreachable")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["run", "generate", "images", "globalfit"])
def test_a_ray_address_where_no_cluster_listens_is_refused_before_any_work(capsys, tmp_path, tiny_dataset,
                                                                         closed_port, command):
    argv = {"run": ["run", "--config", "demo"], "generate": GENERATE[:-2],
            "globalfit": ["globalfit", "--config", "demo"],
            "images": ["images", "--dataset", tiny_dataset, "--bins", "4", "--events-per-image", "100",
                       "--images-per-point", "2", "--workers", "1"]}[command]
    address = f"127.0.0.1:{closed_port}"
    _refused(capsys, [*argv, "--out", tmp_path / "o", "--address", address], f"--address {address}",
             "no Ray cluster")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def not_a_service():
    """A plain HTTP server on loopback that answers 404 to everything: neither MLflow nor Ray."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_tracking_uri_where_something_else_answers_is_refused(capsys, tmp_path, not_a_service):
    _refused(capsys, ["run", "--config", "demo", "--out", tmp_path / "o", "--tracking-uri", f"http://{not_a_service}"],
             "answers HTTP 404 at /health")
    assert not (tmp_path / "o").exists()


def test_a_ray_address_where_something_else_listens_is_refused(capsys, tmp_path, not_a_service):
    _refused(capsys, [*GENERATE[:-2], "--out", tmp_path / "o", "--address", not_a_service], "no Ray cluster")
    assert not (tmp_path / "o").exists()


def test_events_that_cannot_fit_on_the_disk_are_refused_naming_both_sizes(capsys, tmp_path):
    line = _refused(capsys, ["generate", "--dc9", "0", "--events", "1000000000000000", "--out", tmp_path / "o"],
                    "writes about 24 PB", "free")
    assert "B free" in line
    assert not (tmp_path / "o").exists()


def test_images_that_cannot_fit_on_the_disk_are_refused(capsys, tmp_path, tiny_dataset, monkeypatch):
    import shutil

    from orchestrator.config import services

    real = shutil.disk_usage
    monkeypatch.setattr(services.shutil, "disk_usage", lambda p: real(p)._replace(free=500))
    _refused(capsys, ["images", "--dataset", tiny_dataset, "--bins", "8", "--events-per-image", "100",
                      "--images-per-point", "4", "--out", tmp_path / "o"], "but", "has 500 B free")
    assert not (tmp_path / "o").exists()


def test_a_resume_counts_the_bytes_already_there(tmp_path, monkeypatch):
    import shutil

    from orchestrator.config import services

    real = shutil.disk_usage  # a fixed free space: other tests write to the same disk meanwhile
    monkeypatch.setattr(services.shutil, "disk_usage", lambda p: real(p)._replace(free=20_000))
    out = tmp_path / "o"
    out.mkdir()
    (out / "part").write_bytes(b"x" * 10_000)
    assert services.check_storage(out, 25_000) == out  # 10 kB of it is there already
    with pytest.raises(ServiceError, match="has 20 kB free"):
        services.check_storage(out, 35_000)


# --- a disk that fills during generate ------------------------------------------------------------------


class SmallDisk:
    """A directory on a 3 MB tmpfs (``fill()`` writes ballast until it is full), or, where mounting is not
    allowed, one whose next part writes go to /dev/full (``fill()`` links their temporary names there)."""

    def __init__(self, root, tmpfs: bool):
        self.root, self.tmpfs = root, tmpfs

    def fill(self) -> None:
        if self.tmpfs:
            fd = os.open(self.root / "ballast", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError as err:
                assert err.errno == errno.ENOSPC
            finally:
                os.close(fd)
        else:
            for part in self.root.glob("events/level=gen/point=*"):
                for k in range(4):
                    link = part / f".part-{k:05d}.parquet.{os.getpid()}.tmp"
                    if not (part / f"part-{k:05d}.parquet").exists():
                        link.symlink_to("/dev/full")

    def free(self) -> None:
        if self.tmpfs:
            (self.root / "ballast").unlink()
        else:
            for link in self.root.glob("events/level=gen/point=*/.part-*.tmp"):
                link.unlink()


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(root)],
                             capture_output=True).returncode == 0
    if not mounted and not os.path.exists("/dev/full"):
        pytest.skip("neither a tmpfs nor /dev/full to fill")
    try:
        yield SmallDisk(root, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


GRID, EVENTS, CHUNK = [0.0, 1.0], 8000, 4000  # 4 parts of about 70 kB


@pytest.fixture(scope="module")
def disk_full_generate(small_disk):
    """Generate into the small disk, filled as soon as the first part is in place; the error it raised."""
    from orchestrator.jobs.generate import generate_job

    @contextmanager
    def progress(description, total, unit):
        done = []

        def advance(n):
            done.append(n)
            if len(done) == 1:
                small_disk.fill()

        yield advance

    out = small_disk.root / "events"
    with pytest.raises(ServiceError) as err:
        generate_job(out, GRID, EVENTS, 1, chunk_size=CHUNK, workers=0, progress=progress)
    return out, str(err.value)


def test_a_disk_that_fills_during_generate_is_one_line_naming_the_part(disk_full_generate):
    out, message = disk_full_generate
    assert "\n" not in message
    assert message.startswith(f"{out / 'level=gen' / 'point=000' / 'part-00001.parquet'}: No space left on device")


def test_a_disk_that_fills_leaves_no_partial_part_and_no_manifest(disk_full_generate):
    out, _ = disk_full_generate
    assert sorted(p.name for p in out.rglob("*.parquet")) == ["part-00000.parquet"]
    assert not [p for p in out.rglob("*.tmp") if not p.is_symlink()]
    assert not (out / "manifest.json").exists()


def test_a_rerun_once_there_is_room_resumes_from_the_finished_part(disk_full_generate, small_disk):
    from orchestrator.jobs.generate import generate_job

    out, _ = disk_full_generate
    small_disk.free()
    result = generate_job(out, GRID, EVENTS, 1, chunk_size=CHUNK, workers=0)
    assert (result.parts_kept, result.parts_made) == (1, 3)
    assert (out / "manifest.json").is_file()

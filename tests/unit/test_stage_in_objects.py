"""Stage-in of what other tools leave in a bucket, and of a stage-in that a signal stops.

Folder markers are skipped; DLOs, SLOs and S3 multipart objects are fetched and verified as
far as the store vouches for them, and each record says how. Download temporary files are
never opened through a link. A stop signal ends a stage-in whose transfers are stuck, at once,
leaving no temporary file; and however many files there are, only a few jobs are handed out
at a time. Against the in-memory `FakeStore`; the real servers are in
tests/stack/test_foreign_objects.py.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allasrun.process import HOST
from allasrun.staging.fetch import not_written, temporary_name
from allasrun.staging.plan import Settings, StageIn
from allasrun.staging.stager import Stager
from allasrun.staging.store import RemoteObject
from allasrun.staging.transfer import CANCELLED, DONE, FAILED, MISSING, SKIPPED, Transfer
from allasrun.staging.workers import Workers
from tests.unit.fakestore import FakeStore, md5
from tests.unit.keystone_fake import capture_log

MIB = 1024 * 1024
DATA = random.Random(9).randbytes(2500)
LARGE = random.Random(10).randbytes(11 * MIB + 777)  # three parts of 5 MiB, or two of 8 MiB


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    delays: list[float] = []
    monkeypatch.setattr("allasrun.staging.stager.time.sleep", delays.append)
    return delays


def stage_in(store: FakeStore, workdir: Path, *specs: StageIn, threads: int = 4) -> dict[str, Transfer]:
    settings = Settings(threads=threads, retries=3, progress=3600.0)
    records = Stager(store, settings, workdir).stage_in(specs, lambda: False)
    return {t.source.rpartition("/")[2]: t for t in records}


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- folder markers


def test_folder_markers_are_skipped(tmp_path: Path) -> None:
    store = FakeStore()
    for name, data in {"d/": b"", "d/x": b"x\n", "d/sub/": b"", "d/sub/y": b"y\n"}.items():
        store.put_object("b", name, data)
    records = stage_in(
        store, tmp_path, StageIn("job.sh:2", "b", "d/", "in/"), StageIn("job.sh:3", "b", "d", "all")
    )
    assert sorted((t.source, t.status) for t in records.values()) == [
        ("allas:b/d/sub/y", DONE),
        ("allas:b/d/x", DONE),
    ]
    assert files(tmp_path) == {"in/x": b"x\n", "in/sub/y": b"y\n", "all/x": b"x\n", "all/sub/y": b"y\n"}


def test_a_folder_of_only_markers_is_an_empty_directory(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "empty/", b"")
    store.put_object("b", "empty/inner/", b"")
    assert stage_in(store, tmp_path, StageIn("job.sh:2", "b", "empty/", "in/")) == {}
    assert (tmp_path / "in").is_dir() and files(tmp_path) == {}
    missing = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "nothing/", "in/"))
    assert [t.status for t in missing.values()] == [MISSING]


# ---------------------------------------------------------------- large and foreign objects


def test_dlo_is_fetched_and_verified_per_segment(tmp_path: Path, sleeps: list[float]) -> None:
    store = FakeStore()
    store.put_dlo("b", "dlo.bin", DATA, 1024)
    (obj,) = store.listing("b", "")
    assert (obj.size, obj.dlo) == (2500, "b_segments/dlo.bin/1796000000.5/2500/")
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "dlo.bin", "in/"))["dlo.bin"]
    assert (record.status, record.md5, record.verified) == (DONE, md5(DATA), "md5 per segment")
    assert (tmp_path / "in/dlo.bin").read_bytes() == DATA
    again = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "dlo.bin", "in/"))["dlo.bin"]
    assert (again.status, again.verified) == (SKIPPED, "md5 per segment")
    (tmp_path / "in/dlo.bin").unlink()
    store.corrupt.add("dlo.bin")  # a byte flipped in the middle: in segment 1
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "dlo.bin", "in/"))["dlo.bin"]
    assert record.status == FAILED and "dlo.bin: segment 1 has MD5" in record.error
    assert files(tmp_path) == {}


def test_dlo_whose_segments_changed_is_not_staged(tmp_path: Path, sleeps: list[float]) -> None:
    store = FakeStore()
    store.put_dlo("b", "dlo.bin", DATA, 1024)
    listed = store.listing

    def stale_listing(bucket: str, prefix: str) -> list[RemoteObject]:
        found = listed(bucket, prefix)
        store.put_object("b_segments", "dlo.bin/1796000000.5/2500/00000009", b"appended later")
        return found

    store.listing = stale_listing  # type: ignore[method-assign]
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "dlo.bin", "in/"))["dlo.bin"]
    assert record.status == FAILED
    assert (
        "its 4 segments in b_segments/dlo.bin/1796000000.5/2500/ (2514 bytes) do not make the object"
        in record.error
    )
    assert store.count("download") == 0 and files(tmp_path) == {}


def test_slo_says_it_was_verified_per_segment(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_slo("b", "slo.bin", DATA, 1024)
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "slo.bin", "in/"))["slo.bin"]
    assert (record.status, record.verified) == (DONE, "md5 per segment")


def test_plain_object_says_md5(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "p.txt", b"plain\n")
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "p.txt", "in/"))["p.txt"]
    assert (record.status, record.verified) == (DONE, "md5")


def test_s3_multipart_object_is_verified_per_part(tmp_path: Path, sleeps: list[float]) -> None:
    store = FakeStore(chunk=MIB)
    etag = store.put_multipart("b", "mp.bin", LARGE, 5 * MIB)  # rclone's part size
    assert etag.endswith("-3")
    spec = StageIn("job.sh:2", "b", "mp.bin", "in/")
    record = stage_in(store, tmp_path, spec)["mp.bin"]
    assert (record.status, record.md5, record.verified) == (DONE, md5(LARGE), "md5 per part")
    again = stage_in(store, tmp_path, spec)["mp.bin"]
    assert (again.status, again.verified) == (SKIPPED, "md5 per part")
    (tmp_path / "in/mp.bin").unlink()
    store.corrupt.add("mp.bin")  # no part size reproduces the ETag now: the size is all that is left
    record = stage_in(store, tmp_path, spec)["mp.bin"]
    assert (record.status, record.verified) == (DONE, "size")
    assert record.md5 != md5(LARGE)


def test_an_etag_that_vouches_for_nothing_leaves_the_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_log(caplog, monkeypatch)
    store = FakeStore(chunk=MIB)
    store.put_multipart("b", "odd.bin", LARGE, 7 * MIB)  # a part size no tool uses by default
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "odd.bin", "in/"))["odd.bin"]
    assert (record.status, record.md5, record.verified) == (DONE, md5(LARGE), "size")
    assert "is not a checksum allasrun can check: verified by its size only" in caplog.text
    again = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "odd.bin", "in/"))["odd.bin"]
    assert (again.status, again.verified) == (DONE, "size")  # a size alone never proves a file identical


# ---------------------------------------------------------------- temporary files


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path, sleeps: list[float]) -> None:
    store = FakeStore()
    store.put_object("b", "f.txt", b"attacker's bytes\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "in").mkdir()
    planted = temporary_name(tmp_path / "in" / "f.txt")
    planted.symlink_to(victim)
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "f.txt", "in/"))["f.txt"]
    assert record.status == FAILED
    assert f"cannot create the download's temporary file {planted}: File exists" in record.error
    assert victim.read_bytes() == b"precious\n"
    assert planted.is_symlink() and not (tmp_path / "in" / "f.txt").exists()
    assert store.count("download") == 1  # not retried: the store is not at fault


# ---------------------------------------------------------------- stopping, and many files


def test_a_stop_signal_ends_a_stuck_stage_in_at_once(tmp_path: Path) -> None:
    """A download stuck mid-body (a stalled connection) does not hold up a stop signal."""
    store = FakeStore()
    for n in range(3):
        store.put_object("b", f"many/{n}", DATA)
    release, stuck = threading.Event(), threading.Event()

    def stall_body() -> Iterator[bytes]:
        yield DATA[:100]
        stuck.set()
        release.wait(60)  # a socket that never answers
        yield DATA[100:]

    real_download = store.download

    def download(bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        headers, _ = real_download(bucket, name)
        return headers, stall_body()

    store.download = download  # type: ignore[method-assign]
    settings = Settings(threads=2, retries=3, progress=3600.0)
    started = time.monotonic()
    try:
        records = Stager(store, settings, tmp_path).stage_in(
            [StageIn("j:2", "b", "many/", "in/")], stuck.is_set
        )
    finally:
        release.set()
    assert time.monotonic() - started < 20  # without the stop: 60 s, the stall
    assert {t.status for t in records} == {CANCELLED}
    assert {t.error for t in records} == {"interrupted by a signal"}
    assert len(records) == 3
    assert files(tmp_path) == {}  # no .part left, though its thread is still stuck


def test_a_stop_signal_ends_a_stuck_listing_at_once(tmp_path: Path) -> None:
    store = FakeStore()
    release, listing = threading.Event(), threading.Event()

    def stall(method: str, bucket: str, name: str) -> None:
        if method == "listing":
            listing.set()
            release.wait(60)  # a socket that never answers

    store.before = stall
    started = time.monotonic()
    try:
        records = Stager(store, Settings(progress=3600.0), tmp_path).stage_in(
            [StageIn("j:2", "b", "x/", "in/"), StageIn("j:3", "b", "y/", "in/")], listing.is_set
        )
    finally:
        release.set()
    assert time.monotonic() - started < 20
    assert [(t.where, t.status, t.source) for t in records] == [
        ("j:2", CANCELLED, "allas:b/x/"),
        ("j:3", CANCELLED, "allas:b/y/"),
    ]


def test_only_a_few_jobs_are_handed_out_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    for n in range(300):
        store.put_object("b", f"many/{n:03d}", b"%d" % n)
    most = 0
    submit = Workers.submit

    def counting(pool: Workers[Transfer], call: Callable[[], Transfer]) -> None:
        nonlocal most
        submit(pool, call)
        most = max(most, pool.busy)

    monkeypatch.setattr(Workers, "submit", counting)
    records = stage_in(store, tmp_path, StageIn("j:2", "b", "many/", "in/"), threads=3)
    assert len(records) == 300 and {t.status for t in records.values()} == {DONE}
    assert 1 <= most <= 6  # twice the threads, not 300


def test_a_download_broken_mid_body_is_retried(tmp_path: Path, sleeps: list[float]) -> None:
    store = FakeStore()
    store.put_object("b", "f.bin", DATA)
    store.broken.add("f.bin")
    record = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "f.bin", "in/"))["f.bin"]
    assert (record.status, record.where, record.source) == (FAILED, "job.sh:2", "allas:b/f.bin")
    assert "Connection broken" in record.error
    assert store.count("download") == 3 and sleeps == [1, 2]
    store.broken.clear()
    assert stage_in(store, tmp_path, StageIn("job.sh:2", "b", "f.bin", "in/"))["f.bin"].status == DONE


# ---------------------------------------------------------------- what a killed run left


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def test_temporaries_of_killed_runs_on_this_host_are_removed(tmp_path: Path) -> None:
    """A SIGKILLed allasrun removes nothing: the re-run removes its `.part`, not a live one's."""
    store = FakeStore()
    store.put_object("b", "d/f.txt", DATA)
    store.put_object("b", "d/g.txt", DATA)
    (tmp_path / "in").mkdir()
    killed = temporary_name(tmp_path / "in" / "f.txt", pid=_dead_pid())
    live = temporary_name(tmp_path / "in" / "g.txt", pid=os.getppid())
    other_host = tmp_path / "in" / f".f.txt.allasrun-{HOST}x-{_dead_pid()}.part"
    for path in (killed, live, other_host):
        path.write_bytes(b"half")
    records = stage_in(store, tmp_path, StageIn("job.sh:2", "b", "d/", "in/"))
    assert {t.status for t in records.values()} == {DONE}
    assert not killed.exists() and live.exists() and other_host.exists()


def test_a_full_disk_names_the_file_and_its_file_system(tmp_path: Path) -> None:
    path = tmp_path / "in" / "f.txt"
    error = not_written(
        path, RemoteObject("f.txt", 5000, md5(DATA)), OSError(errno.ENOSPC, "No space left on device")
    )
    mount = Path(os.path.realpath(tmp_path))
    while not os.path.ismount(mount):
        mount = mount.parent
    assert str(error).startswith(f"cannot write {path}: No space left on device (file system {mount}: ")
    assert str(error).endswith("bytes free; the object is 5000 bytes)")


def test_a_long_name_still_fits_its_temporary(tmp_path: Path) -> None:
    temporary = temporary_name(tmp_path / ("é" * 127))
    assert len(temporary.name.encode()) <= 255 and temporary.name.endswith(f"-{os.getpid()}.part")

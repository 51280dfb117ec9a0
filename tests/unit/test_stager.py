"""The stager against an in-memory store: verified, retried, resumable transfers both ways.

Real files in tmp_path, a `FakeStore` with Swift's semantics and injected faults; the 1 s
sleeps between retries are recorded instead of slept.
"""

from __future__ import annotations

import errno
import random
import threading
from pathlib import Path
from typing import cast

import pytest

from allasrun.errors import EXIT_STAGE_OUT, Corrupt, StoreError, UsageError
from allasrun.staging.plan import Settings, StageIn, StageOut, StagePlan
from allasrun.staging.run import StagingRun
from allasrun.staging.stager import Stager
from allasrun.staging.store import Credentials, multipart_etag
from allasrun.staging.transfer import CANCELLED, DONE, FAILED, MISSING, REFUSED, SKIPPED, Transfer
from tests.unit.fakestore import FakePartStore, FakeStore, md5, unavailable

IN = StageIn("job.sh:2", "bkt", "data/", "in/")
OUT = StageOut("job.sh:3", "results/", "out", "run1/")
RANDOM = random.Random(2500)
BIG = RANDOM.randbytes(2500)  # three segments of 1024 bytes at most
SMALL = {"data/a.txt": b"alpha\n", "data/sub/b.bin": RANDOM.randbytes(1500), "other/c.txt": b"not asked for"}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the stager would have slept between retries."""
    delays: list[float] = []
    monkeypatch.setattr("allasrun.staging.stager.time.sleep", delays.append)
    return delays


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore()
    for name, data in SMALL.items():
        store.put_object("bkt", name, data)
    return store


def stager(store: FakeStore, workdir: Path, threads: int = 4, retries: int = 3) -> Stager:
    settings = Settings(threads=threads, segment_size=1024, retries=retries, progress=3600.0)
    return Stager(store, settings, workdir)


def stage_in(store: FakeStore, workdir: Path, *specs: StageIn, threads: int = 4) -> dict[str, Transfer]:
    """Run a stage-in (IN by default) and index its records by source."""
    records = stager(store, workdir, threads).stage_in(specs or (IN,), lambda: False)
    return {t.source: t for t in records}


def stage_out(store: FakeStore, workdir: Path, *specs: StageOut) -> dict[str, Transfer]:
    """Run a stage-out (OUT by default) and index its records by destination."""
    return {t.destination: t for t in stager(store, workdir).stage_out(specs or (OUT,))}


def statuses(records: dict[str, Transfer]) -> dict[str, str]:
    return {key: t.status for key, t in records.items()}


def files(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` (hidden ones too) and its content."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- stage-in


def test_stage_in_prefix(store: FakeStore, tmp_path: Path) -> None:
    records = stage_in(store, tmp_path)
    assert statuses(records) == {"allas:bkt/data/a.txt": DONE, "allas:bkt/data/sub/b.bin": DONE}
    assert files(tmp_path) == {"in/a.txt": SMALL["data/a.txt"], "in/sub/b.bin": SMALL["data/sub/b.bin"]}
    b = records["allas:bkt/data/sub/b.bin"]
    assert (b.destination, b.bytes, b.md5) == (
        str(tmp_path / "in/sub/b.bin"),
        1500,
        md5(SMALL["data/sub/b.bin"]),
    )


def test_stage_in_skips_identical_files_and_fetches_changed_ones(store: FakeStore, tmp_path: Path) -> None:
    stage_in(store, tmp_path)
    store.calls.clear()
    assert set(statuses(stage_in(store, tmp_path)).values()) == {SKIPPED}
    assert store.count("download") == 0
    (tmp_path / "in/a.txt").write_bytes(b"ALPHA\n")  # same size, other content
    assert statuses(stage_in(store, tmp_path))["allas:bkt/data/a.txt"] == DONE
    assert store.calls.count(("download", "bkt", "data/a.txt")) == 1
    assert (tmp_path / "in/a.txt").read_bytes() == SMALL["data/a.txt"]


def test_stage_in_retries_a_failed_download(store: FakeStore, tmp_path: Path, sleeps: list[float]) -> None:
    store.fail("download", unavailable())
    records = stage_in(store, tmp_path, threads=1)
    assert set(statuses(records).values()) == {DONE}
    assert store.count("download") == 3  # two objects, one of them twice
    assert sleeps == [1]
    assert files(tmp_path)["in/a.txt"] == SMALL["data/a.txt"]


def test_stage_in_gives_up_after_retries(store: FakeStore, tmp_path: Path, sleeps: list[float]) -> None:
    store.fail("download", *[unavailable("download bkt/data/a.txt")] * 3)
    record = stage_in(store, tmp_path, threads=1)["allas:bkt/data/a.txt"]
    assert (record.status, record.error) == (
        FAILED,
        "cannot download bkt/data/a.txt: HTTP 503 Service Unavailable",
    )
    assert store.calls.count(("download", "bkt", "data/a.txt")) == 3
    assert sleeps == [1, 2]
    assert "in/a.txt" not in files(tmp_path)


def test_stage_in_corrupt_download_leaves_nothing(
    store: FakeStore, tmp_path: Path, sleeps: list[float]
) -> None:
    store.corrupt.add("data/sub/b.bin")
    record = stage_in(store, tmp_path)["allas:bkt/data/sub/b.bin"]
    assert record.status == FAILED
    assert f"does not match the listed {md5(SMALL['data/sub/b.bin'])}" in record.error
    assert files(tmp_path) == {"in/a.txt": SMALL["data/a.txt"]}  # no final file, no .part
    assert store.calls.count(("download", "bkt", "data/sub/b.bin")) == 3


def test_stage_in_object_changed_since_listing(store: FakeStore, tmp_path: Path, sleeps: list[float]) -> None:
    def rewrite(method: str, bucket: str, name: str) -> None:
        if method == "download":
            store.put_object(bucket, name, b"changed")

    store.before = rewrite
    record = stage_in(store, tmp_path)["allas:bkt/data/a.txt"]
    assert record.status == FAILED
    assert f"data/a.txt: changed since it was listed (ETag {md5(b'changed')}" in record.error
    assert "in/a.txt" not in files(tmp_path)


@pytest.mark.parametrize("name", ["data/../x", "data/sub/../../x", "data//etc/x"])
def test_stage_in_refuses_escaping_names_and_fetches_nothing(
    store: FakeStore, tmp_path: Path, name: str
) -> None:
    store.put_object("bkt", name, b"evil")
    records = stage_in(store, tmp_path / "job")
    assert list(records) == [f"allas:bkt/{name}"]
    assert records[f"allas:bkt/{name}"].status == REFUSED
    assert "would escape" in records[f"allas:bkt/{name}"].error
    assert store.count("download") == store.count("segments") == 0
    assert files(tmp_path) == {}


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (StageIn("job.sh:4", "nobucket", "data/", "in/"), "bucket 'nobucket' does not exist"),
        (StageIn("job.sh:4", "bkt", "nothing/", "in/"), "no object matches allas:bkt/nothing/"),
        (StageIn("job.sh:4", "bkt", "data/*.csv", "in/"), "no object matches allas:bkt/data/*.csv"),
    ],
)
def test_stage_in_missing_fetches_nothing(
    store: FakeStore, tmp_path: Path, spec: StageIn, error: str
) -> None:
    records = stage_in(store, tmp_path, IN, spec)
    assert [(t.status, t.where, t.error) for t in records.values()] == [(MISSING, "job.sh:4", error)]
    assert store.count("download") == 0  # IN was fine, but the command will not run anyway


def test_stage_in_listing_failure_is_a_failure_not_missing(store: FakeStore, tmp_path: Path) -> None:
    store.fail("listing", unavailable("list bkt"))
    record = stage_in(store, tmp_path)["allas:bkt/data/"]
    assert (record.status, record.error) == (FAILED, "cannot list bkt: HTTP 503 Service Unavailable")


def test_stage_in_large_object(store: FakeStore, tmp_path: Path, sleeps: list[float]) -> None:
    store.put_slo("bkt", "data/big", BIG, 1024)
    assert statuses(stage_in(store, tmp_path))["allas:bkt/data/big"] == DONE
    assert (tmp_path / "in/big").read_bytes() == BIG
    store.calls.clear()
    assert statuses(stage_in(store, tmp_path))["allas:bkt/data/big"] == SKIPPED  # checked per segment
    assert store.count("download") == 0
    (tmp_path / "in/big").unlink()
    store.corrupt.add("data/big")  # a byte flipped in the middle: in segment 1
    record = stage_in(store, tmp_path)["allas:bkt/data/big"]
    assert record.status == FAILED and "data/big: segment 1 has MD5" in record.error
    assert "in/big" not in files(tmp_path)


def test_cancel_stops_starting_transfers(store: FakeStore, tmp_path: Path) -> None:
    for n in range(5):
        store.put_object("bkt", f"many/{n}", b"%d" % n)
    signalled = threading.Event()

    def cancelled() -> bool:  # the signal comes once the first file has landed
        if (tmp_path / "in/0").exists():
            signalled.set()
        return signalled.is_set()

    def hold_later_downloads(method: str, bucket: str, name: str) -> None:
        if method == "download" and name != "many/0":
            signalled.wait(5)  # one that started meanwhile stops at its next chunk

    store.before = hold_later_downloads
    many = StageIn("job.sh:2", "bkt", "many/", "in/")
    records = stager(store, tmp_path, threads=1).stage_in([many], cancelled)
    by_name = {t.source.rpartition("/")[2]: t for t in records}
    assert by_name["0"].status == DONE
    assert by_name["1"].status in (DONE, CANCELLED)  # it may have started before the signal
    assert [by_name[n].status for n in "234"] == [CANCELLED] * 3
    assert {by_name[n].error for n in "234"} == {"interrupted by a signal"}
    assert store.count("download") <= 2
    assert not {"in/2", "in/3", "in/4"} & set(files(tmp_path))


# ---------------------------------------------------------------- stage-out


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """results/a.txt and results/sub/b.txt in the job's directory."""
    (tmp_path / "results/sub").mkdir(parents=True)
    (tmp_path / "results/a.txt").write_bytes(b"first\n")
    (tmp_path / "results/sub/b.txt").write_bytes(b"bee\n")
    return tmp_path / "results"


def test_stage_out_directory(store: FakeStore, tmp_path: Path, results: Path) -> None:
    records = stage_out(store, tmp_path)
    assert statuses(records) == {"allas:out/run1/a.txt": DONE, "allas:out/run1/sub/b.txt": DONE}
    assert records["allas:out/run1/a.txt"].source == str(results / "a.txt")
    assert (records["allas:out/run1/a.txt"].md5, records["allas:out/run1/a.txt"].bytes) == (
        md5(b"first\n"),
        6,
    )
    assert store.content("out", "run1/a.txt") == b"first\n"
    assert store.content("out", "run1/sub/b.txt") == b"bee\n"
    assert files(tmp_path / "results") == {"a.txt": b"first\n", "sub/b.txt": b"bee\n"}  # untouched


@pytest.mark.parametrize(
    ("source", "key", "names"),
    [
        ("results", "run1", ["run1/a.txt", "run1/sub/b.txt"]),
        ("results/a.txt", "keep/", ["keep/a.txt"]),
        ("results/a.txt", "renamed.txt", ["renamed.txt"]),
        ("results/a.txt", "", ["a.txt"]),
        ("results/a*", "g/", ["g/a.txt"]),
    ],
)
def test_stage_out_names(
    store: FakeStore, tmp_path: Path, results: Path, source: str, key: str, names: list[str]
) -> None:
    stage_out(store, tmp_path, StageOut("job.sh:3", source, "out", key))
    assert store.names("out") == names


def test_stage_out_skips_identical_then_no_overwrite_refuses(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    stage_out(store, tmp_path)
    store.calls.clear()
    assert set(statuses(stage_out(store, tmp_path)).values()) == {SKIPPED}
    assert store.count("upload") == 0
    (results / "a.txt").write_bytes(b"second\n")
    keep = StageOut("job.sh:3", "results/", "out", "run1/", overwrite=False)
    records = stage_out(store, tmp_path, keep)
    assert statuses(records) == {"allas:out/run1/a.txt": REFUSED, "allas:out/run1/sub/b.txt": SKIPPED}
    assert "allas:out/run1/a.txt exists and differs" in records["allas:out/run1/a.txt"].error
    assert store.content("out", "run1/a.txt") == b"first\n"
    assert statuses(stage_out(store, tmp_path))["allas:out/run1/a.txt"] == DONE  # overwrite is the default
    assert store.content("out", "run1/a.txt") == b"second\n"


def test_stage_out_missing_source(store: FakeStore, tmp_path: Path) -> None:
    record = stage_out(store, tmp_path)["allas:out/run1/"]
    assert (record.status, record.source, record.error) == (MISSING, "results/", "nothing matches results/")


def segment_names(store: FakeStore) -> list[str]:
    return store.names("out_segments")


def test_stage_out_large_file(store: FakeStore, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(BIG)
    spec = StageOut("job.sh:3", "big.bin", "out", "run1/big.bin")
    record = stage_out(store, tmp_path, spec)["allas:out/run1/big.bin"]
    (listed,) = store.listing("out", "run1/")
    assert (record.status, record.bytes, record.md5) == (DONE, 2500, listed.md5)
    assert (listed.slo, listed.size, store.content("out", "run1/big.bin")) == (True, 2500, BIG)
    manifest = store.manifest("out", "run1/big.bin")
    assert [s.size for s in manifest] == [1024, 1024, 452]
    assert [f"out_segments/{n}" for n in segment_names(store)] == [s.path for s in manifest]
    store.calls.clear()
    assert stage_out(store, tmp_path, spec)["allas:out/run1/big.bin"].status == SKIPPED
    assert store.count("upload") == 0
    big.write_bytes(BIG[::-1] + b"more")  # replaced: the old segments go
    assert stage_out(store, tmp_path, spec)["allas:out/run1/big.bin"].status == DONE
    manifest = store.manifest("out", "run1/big.bin")
    assert [f"out_segments/{n}" for n in segment_names(store)] == [s.path for s in manifest]
    assert [s.size for s in manifest] == [1024, 1024, 456]
    assert store.content("out", "run1/big.bin") == BIG[::-1] + b"more"


def stage_out_big(store: FakeStore, tmp_path: Path) -> Transfer:
    (tmp_path / "big.bin").write_bytes(BIG)
    return stage_out(store, tmp_path, StageOut("job.sh:3", "big.bin", "out", "run1/"))[
        "allas:out/run1/big.bin"
    ]


def test_stage_out_large_file_retried(store: FakeStore, tmp_path: Path, sleeps: list[float]) -> None:
    store.fail("upload", None, unavailable())  # segment 0 lands, segment 1 fails
    assert stage_out_big(store, tmp_path).status == DONE
    assert sleeps == [1]
    assert store.count("upload") == 5
    assert len(segment_names(store)) == 3
    assert store.content("out", "run1/big.bin") == BIG


def test_stage_out_large_file_failures_leave_no_segments(
    store: FakeStore, tmp_path: Path, sleeps: list[float]
) -> None:
    store.fail("upload", *[None, unavailable("upload a segment")] * 3)  # every attempt fails at segment 1
    record = stage_out_big(store, tmp_path)
    assert (record.status, record.error) == (FAILED, "cannot upload a segment: HTTP 503 Service Unavailable")
    deleted = [name for method, bucket, name in store.calls if (method, bucket) == ("delete", "out_segments")]
    assert len(deleted) == 3 and all(name.endswith("/00000000") for name in deleted)  # segment 0, each time
    assert (segment_names(store), store.names("out")) == ([], [])


def test_stage_out_large_file_segment_with_wrong_etag(
    store: FakeStore, tmp_path: Path, sleeps: list[float]
) -> None:
    store.bad_etag.add("run1/big.bin/slo/")
    record = stage_out_big(store, tmp_path)
    assert record.status == FAILED
    assert f"big.bin: segment 0 stored as {md5(b'stored wrong')}, read as {md5(BIG[:1024])}" in record.error
    assert store.count("upload") == 3  # one segment per attempt
    assert (segment_names(store), store.count("put_manifest")) == ([], 0)


def test_stage_out_wrong_etag_fails_and_deletes(
    store: FakeStore, tmp_path: Path, results: Path, sleeps: list[float]
) -> None:
    store.bad_etag.add("run1/a.txt")
    record = stage_out(store, tmp_path)["allas:out/run1/a.txt"]
    assert record.status == FAILED
    wrong, right = md5(b"stored wrong"), md5(b"first\n")
    assert f"the store kept ETag {wrong}, the file read as MD5 {right}" in record.error
    assert store.names("out") == ["run1/sub/b.txt"]
    assert store.calls.count(("upload", "out", "run1/a.txt")) == 3
    assert store.calls.count(("delete", "out", "run1/a.txt")) == 3
    assert sleeps == [1, 2]


def test_stage_out_bucket_cannot_be_created(store: FakeStore, tmp_path: Path, results: Path) -> None:
    store.fail("ensure_bucket", unavailable("create out"))
    other = StageOut("job.sh:4", "results/a.txt", "other", "a.txt")
    records = stage_out(store, tmp_path, OUT, other)
    # every file of the directive is named, so the report says exactly what to upload later
    for name in ("a.txt", "sub/b.txt"):
        record = records[f"allas:out/run1/{name}"]
        assert (record.status, record.where, record.source) == (FAILED, "job.sh:3", str(results / name))
        assert record.error == "cannot create out: HTTP 503 Service Unavailable"
    assert records["allas:other/a.txt"].status == DONE  # one failure does not stop the rest
    assert store.names("other") == ["a.txt"]
    assert files(results) == {"a.txt": b"first\n", "sub/b.txt": b"bee\n"}  # untouched


def test_stage_out_does_not_retry_what_the_store_already_retried(
    store: FakeStore, tmp_path: Path, results: Path, sleeps: list[float]
) -> None:
    """An outage or throttling the store waited out already: retrying here would multiply its waits."""
    exhausted = unavailable("upload")
    exhausted.retried = True
    store.fail("upload", exhausted)
    records = stage_out(store, tmp_path)
    assert sorted(statuses(records).values()) == [DONE, FAILED]  # whichever upload came first failed
    assert store.count("upload") == 2 and sleeps == []  # each file once


def test_stage_out_only_the_pairs_asked_for(store: FakeStore, tmp_path: Path, results: Path) -> None:
    """Finishing a stage-out from its report: the other files are neither uploaded nor reported."""
    (results / "new.txt").write_bytes(b"written after the job\n")
    only = {(str(results / "sub/b.txt"), "allas:out/run1/sub/b.txt")}
    records = stager(store, tmp_path).stage_out([OUT], only=only)
    assert [(t.destination, t.status) for t in records] == [("allas:out/run1/sub/b.txt", DONE)]
    assert store.names("out") == ["run1/sub/b.txt"]


# ---------------------------------------------------------------- finishing a failed stage-out


def test_a_failed_stage_out_leaves_a_report_that_finishes_it(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """Store down: 75 and a report in the working directory; back: `resume` lands exactly those files."""
    plan = StagePlan(stage_out=[OUT], settings=Settings(segment_size=1024, progress=3600.0))
    store.fail("ensure_bucket", unavailable("create out"))
    run = StagingRun(plan, cast(Credentials, object()), tmp_path, store)
    assert run.finish(run.stage_out(0).exit_status or 0, 0) == EXIT_STAGE_OUT
    (path,) = tmp_path.glob("allasrun-stage-out-*.json")
    (results / "new.txt").write_bytes(b"not the job's\n")  # written after: not uploaded
    record = StagingRun.record(path)
    later = StagingRun(record.plan, cast(Credentials, object()), record.workdir, store)
    assert later.resume(record) == 0
    assert store.names("out") == ["run1/a.txt", "run1/sub/b.txt"]
    finished = StagingRun.record(path)
    assert {t.status for t in finished.transfers} == {DONE} and finished.exit_status == 0
    assert files(results) == {"a.txt": b"first\n", "sub/b.txt": b"bee\n", "new.txt": b"not the job's\n"}


def test_a_file_gone_before_the_finish_is_reported_missing(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    plan = StagePlan(stage_out=[OUT], settings=Settings(progress=3600.0))
    store.fail("ensure_bucket", unavailable("create out"))
    run = StagingRun(plan, cast(Credentials, object()), tmp_path, store)
    run.finish(run.stage_out(0).exit_status or 0, 0)
    (path,) = tmp_path.glob("allasrun-stage-out-*.json")
    (results / "a.txt").unlink()
    record = StagingRun.record(path)
    assert (
        StagingRun(record.plan, cast(Credentials, object()), record.workdir, store).resume(record)
        == EXIT_STAGE_OUT
    )
    statuses = {t.destination: t.status for t in StagingRun.record(path).transfers}
    assert statuses == {"allas:out/run1/a.txt": MISSING, "allas:out/run1/sub/b.txt": DONE}


def test_a_file_that_is_not_a_report_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"exit_status": 0}')
    with pytest.raises(UsageError, match="not a stage-out report of allasrun"):
        StagingRun.record(tmp_path / "x.json")


@pytest.mark.parametrize(
    ("error", "tries"),
    [
        (StoreError("cannot upload bkt/x: HTTP 400 Bad Request", 400), 1),  # e.g. a name too long
        (StoreError("cannot upload bkt/x: HTTP 403 Forbidden", 403), 1),
        (OSError(errno.ENAMETOOLONG, "File name too long", "x"), 1),
        (OSError(errno.EISDIR, "Is a directory", "x"), 1),
        (StoreError("cannot upload bkt/x: HTTP 422 Unprocessable Entity", 422), 3),  # corrupted on the way
        (Corrupt("x: the store kept ETag a, the file read as MD5 b"), 3),
        (OSError(errno.EIO, "Input/output error", "x"), 3),  # a flaky parallel file system may recover
    ],
)
def test_stage_out_retries_only_what_a_second_try_can_change(
    store: FakeStore, tmp_path: Path, results: Path, sleeps: list[float], error: Exception, tries: int
) -> None:
    """A refusal or a permanent local error is reported at once, not after the retries' sleeps."""
    store.fail("upload", *[error] * 3)
    one = StageOut("job.sh:3", "results/a.txt", "out", "a")
    records = stager(store, tmp_path, threads=1).stage_out([one])
    assert records[0].status == FAILED
    assert store.count("upload") == tries
    assert sleeps == [1, 2][: tries - 1]


def test_stage_in_reports_a_name_the_file_system_cannot_hold(store: FakeStore, tmp_path: Path) -> None:
    """The path is named and the error says what allasrun was doing, not a bare errno."""
    store.put_object("bkt", "data/" + "x" * 300, b"a")
    (tmp_path / "in").mkdir()
    (tmp_path / "in/sub").write_text("a file where a folder must go")
    records = stage_in(store, tmp_path, threads=1)
    long = records["allas:bkt/data/" + "x" * 300]
    assert long.status == FAILED
    assert long.error.startswith(f"cannot check the existing file {tmp_path}/in/xxx")
    assert long.error.endswith(": File name too long")
    blocked = records["allas:bkt/data/sub/b.bin"]
    assert blocked.error == f"cannot make the folder {tmp_path}/in/sub: a file of that name is in the way"


def test_stage_out_large_file_over_s3_goes_as_a_multipart_upload(tmp_path: Path) -> None:
    """Parts of segment-size, the whole checked by its md5-N ETag; no `_segments` bucket touched."""
    store = FakePartStore()
    store.put_object("bkt", "placeholder", b"")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/big.bin").write_bytes(BIG)
    records = stage_out(store, tmp_path, StageOut("job.sh:3", "results/", "bkt", "run1/"))
    record = records["allas:bkt/run1/big.bin"]
    assert (record.status, record.verified) == (DONE, "md5 per part")
    assert record.md5 == multipart_etag([md5(BIG[:1024]), md5(BIG[1024:2048]), md5(BIG[2048:])])
    assert store.content("bkt", "run1/big.bin") == BIG
    assert store.count("upload_part") == 3 and "bkt_segments" not in store.buckets
    assert not any(call[1] == "bkt_segments" for call in store.calls)
    again = stage_out(store, tmp_path, StageOut("job.sh:3", "results/", "bkt", "run1/"))
    assert again["allas:bkt/run1/big.bin"].status == SKIPPED  # the ETag is the parts' (1024 B each)


def test_a_failed_part_aborts_the_multipart_upload(tmp_path: Path, sleeps: list[float]) -> None:
    store = FakePartStore()
    store.put_object("bkt", "placeholder", b"")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/big.bin").write_bytes(BIG)
    store.fail("upload_part", None, unavailable("upload part 2"))
    record = stage_out(store, tmp_path, StageOut("job.sh:3", "results/", "bkt", "run1/"))[
        "allas:bkt/run1/big.bin"
    ]
    assert record.status == DONE and sleeps == [1]
    assert store.count("abort") == 1 and store.count("begin") == 2 and not store.uploads


def _two_protocols() -> tuple[FakePartStore, FakeStore]:
    """One bucket namespace seen over S3 (parts) and over Swift (segments), as Allas serves it."""
    s3, swift = FakePartStore(), FakeStore()
    swift.buckets = s3.buckets
    s3.put_object("bkt", "placeholder", b"")
    return s3, swift


def _large_out(s3: FakePartStore, swift: FakeStore, workdir: Path, large: str = "") -> dict[str, Transfer]:
    settings = Settings(segment_size=1024, progress=3600.0)
    spec = StageOut("job.sh:3", "results/", "bkt", "run1/", remote="s3allas", large=large)
    staged = Stager(s3, settings, workdir, swift=lambda: swift).stage_out([spec])
    return {t.destination: t for t in staged}


@pytest.mark.parametrize(
    ("segments_before", "large", "form"),
    [
        (True, "", "md5 per segment"),  # the bucket's large objects are segments: so is this one
        (False, "", "md5 per part"),  # none: S3's own form
        (True, "multipart", "md5 per part"),  # asked for
        (False, "segments", "md5 per segment"),  # asked for
    ],
)
def test_an_s3_stage_out_writes_a_large_file_in_the_buckets_form_or_the_one_asked_for(
    tmp_path: Path, segments_before: bool, large: str, form: str
) -> None:
    s3, swift = _two_protocols()
    if segments_before:
        swift.put_object("bkt_segments", "old/slo/1/2/3/00000000", b"x")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/big.bin").write_bytes(BIG)
    (tmp_path / "results/small.txt").write_bytes(b"small\n")
    records = _large_out(s3, swift, tmp_path, large)
    big = records["s3allas:bkt/run1/big.bin"]
    assert (big.status, big.verified) == (DONE, form)
    assert s3.content("bkt", "run1/big.bin") == BIG and s3.content("bkt", "run1/small.txt") == b"small\n"
    assert (swift.count("put_manifest") == 1) == (form == "md5 per segment")
    assert (s3.count("begin") == 1) == (form == "md5 per part")
    assert s3.count("upload") >= 1 and swift.count("upload") == (3 if form == "md5 per segment" else 0)
    again = _large_out(s3, swift, tmp_path, large)
    assert again["s3allas:bkt/run1/big.bin"].status == SKIPPED  # checked the way it was written


def test_segments_asked_for_without_swift_fail_the_file_and_say_why(tmp_path: Path) -> None:
    s3 = FakePartStore()
    s3.put_object("bkt", "placeholder", b"")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/big.bin").write_bytes(BIG)
    spec = StageOut("job.sh:3", "results/", "bkt", "run1/", remote="s3allas", large="segments")
    settings = Settings(segment_size=1024, progress=3600.0)
    [record] = Stager(s3, settings, tmp_path).stage_out([spec])
    assert record.status == FAILED and record.error.endswith(
        "--large=segments needs Swift; this run has S3 keys alone"
    )
    assert s3.count("begin") == 0

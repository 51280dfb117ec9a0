"""Small files out in tar bundles: grouped, verified by a listing, and sent alone whenever not proven.

Real files in tmp_path, the in-memory `FakeBulkStore`, which unpacks a tar as Swift's bulk
middleware and radosgw do and can refuse, drop or mis-store members, or not unpack at all. The
real servers are tests/stack/test_bundles.py's.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from allasrun.errors import DirectiveError, StoreError
from allasrun.staging import jobscript
from allasrun.staging.bundle import BUNDLE_BYTES, BUNDLE_FILES, NAME_FIELD, SMALL, bundles, member_problem
from allasrun.staging.plan import Settings, StageOut
from allasrun.staging.put import Put
from allasrun.staging.select import LocalFile
from allasrun.staging.stager import Stager
from allasrun.staging.store import RemoteObject
from allasrun.staging.transfer import DONE, REFUSED, SKIPPED, Transfer
from allasrun.staging.verify import MD5
from tests.unit.fakestore import FakeBulkStore, FakeStore, md5, unavailable
from tests.unit.keystone_fake import capture_log

OUT = StageOut("job.sh:3", "results/", "out", "run1/")


@pytest.fixture
def store() -> FakeBulkStore:
    store = FakeBulkStore()
    store.ensure_bucket("out")
    return store


def files(root: Path, count: int, size: int = 100) -> dict[str, bytes]:
    """`count` files under root/results/ (some in a subfolder), by object name."""
    written = {}
    for n in range(count):
        relative = f"sub/f{n:03d}.txt" if n % 3 == 0 else f"f{n:03d}.txt"
        path = root / "results" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size) + str(n).encode()
        path.write_bytes(data)
        written[f"run1/{relative}"] = data
    return written


def stage_out(store: FakeStore, workdir: Path, *specs: StageOut, **settings: object) -> dict[str, Transfer]:
    chosen = Settings(**{"threads": 2, "retries": 2, "progress": 3600.0, **settings})  # type: ignore[arg-type]
    transfers = Stager(store, chosen, workdir).stage_out(specs or (OUT,))
    return {t.destination.removeprefix("allas:out/"): t for t in transfers}


def stored(store: FakeStore) -> dict[str, bytes]:
    return {name: store.content("out", name) for name in store.names("out")}


def test_small_files_go_in_bundles_one_per_thread_each_verified_by_its_md5(
    store: FakeBulkStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = files(tmp_path, 20)
    log = capture_log(caplog, monkeypatch)
    records = stage_out(store, tmp_path)
    assert "stage-out: 20 small file(s) went in 2 tar bundle(s)" in log.text
    assert stored(store) == written
    # one empty tar sent to the container first asks whether the server unpacks at all
    asked = next(call for call in store.calls if call[0] == "extract")
    assert asked == ("extract", "out", "") and store.count("upload") == 0
    assert store.count("extract") == 3
    assert sorted(n for bundle in store.members for n in bundle) == sorted(written)
    assert [call for call in store.calls if call[:2] == ("listing", "out")] == [("listing", "out", "run1/")]
    for name, data in written.items():
        record = records[name]
        assert (record.status, record.md5, record.verified, record.bytes) == (DONE, md5(data), MD5, len(data))


def test_members_are_named_below_the_bundles_common_folder(store: FakeBulkStore, tmp_path: Path) -> None:
    files(tmp_path, 6)
    stage_out(store, tmp_path)
    extracts = [call for call in store.calls if call[0] == "extract"][1:]
    assert {base for _, _, base in extracts} == {"run1/"}


def test_bundles_off_sends_each_file_alone(store: FakeBulkStore, tmp_path: Path) -> None:
    written = files(tmp_path, 6)
    stage_out(store, tmp_path, bundles=False)
    assert stored(store) == written and store.count("extract") == 0 and store.count("upload") == 6


def test_a_server_that_does_not_unpack_gets_every_file_alone_and_no_more_bundles(
    store: FakeBulkStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = files(tmp_path, 30)
    store.unpacks = False
    log = capture_log(caplog, monkeypatch)
    records = stage_out(store, tmp_path, threads=1)
    assert stored(store) == written and all(r.status == DONE for r in records.values())
    assert store.count("extract") == 1 and store.count("upload") == 30
    assert (
        log.text.count("small files go one by one, not in tar bundles: it does not unpack them (HTTP 202")
        == 1
    )


@pytest.mark.parametrize("fault", ["refuse", "drop", "mangle"])
def test_a_member_the_bundle_did_not_store_right_goes_alone_with_the_reason(
    store: FakeBulkStore,
    tmp_path: Path,
    fault: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written = files(tmp_path, 8)
    victim = "run1/f004.txt"
    getattr(store, fault).add(victim)
    log = capture_log(caplog, monkeypatch)
    records = stage_out(store, tmp_path)
    assert stored(store) == written
    assert [call[2] for call in store.calls if call[0] == "upload"] == [victim]
    reasons = {
        "refuse": "the server refused it in its bundle (400 Bad Request)",
        "drop": "not stored from its bundle (the bundle: 201 Created)",
        "mangle": f"read as MD5 {md5(written[victim])}",
    }
    assert f"allas:out/{victim} goes alone: " in log.text and reasons[fault] in log.text
    assert all(r.status == DONE and r.verified == MD5 for r in records.values())


def test_a_bundle_that_fails_sends_its_files_alone(
    store: FakeBulkStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = files(tmp_path, 6)

    def too_large(method: str, bucket: str, base: str) -> None:
        if method == "extract" and base:
            raise StoreError("cannot upload a bundle: HTTP 413 Request Entity Too Large", 413)

    store.before = too_large
    log = capture_log(caplog, monkeypatch)
    stage_out(store, tmp_path, threads=1)
    assert stored(store) == written and store.count("upload") == 6
    assert "goes alone: its bundle failed: cannot upload a bundle: HTTP 413" in log.text


def test_when_the_server_cannot_be_asked_whether_it_unpacks_every_file_goes_alone(
    store: FakeBulkStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = files(tmp_path, 12)
    store.fail("extract", unavailable("upload"))
    log = capture_log(caplog, monkeypatch)
    stage_out(store, tmp_path)
    assert stored(store) == written and store.count("upload") == 12 and store.count("extract") == 1
    assert (
        "small files go one by one, not in tar bundles: it could not be asked whether it unpacks" in log.text
    )


def test_a_bundle_that_cannot_be_listed_sends_its_files_alone(store: FakeBulkStore, tmp_path: Path) -> None:
    written = files(tmp_path, 4)
    real = store.listing_between

    def failing(bucket: str, first: str, last: str) -> list[RemoteObject]:
        raise unavailable("list")

    store.listing_between = failing  # type: ignore[method-assign]
    stage_out(store, tmp_path, threads=1)
    store.listing_between = real  # type: ignore[method-assign]
    assert stored(store) == written and store.count("upload") == 4


def test_a_name_a_tar_cannot_carry_goes_alone(
    store: FakeBulkStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = files(tmp_path, 4)
    long = "x" * (NAME_FIELD + 1)
    (tmp_path / "results" / long).write_bytes(b"long name\n")
    written[f"run1/{long}"] = b"long name\n"
    log = capture_log(caplog, monkeypatch)
    stage_out(store, tmp_path, threads=1)
    assert stored(store) == written
    assert [call[2] for call in store.calls if call[0] == "upload"] == [f"run1/{long}"]
    assert f"is over the {NAME_FIELD} bytes a tar bundle carries" in log.text


def test_identical_objects_are_skipped_and_no_overwrite_refuses_in_a_bundle_too(
    store: FakeBulkStore, tmp_path: Path
) -> None:
    written = files(tmp_path, 6)
    store.put_object("out", "run1/f001.txt", written["run1/f001.txt"])
    store.put_object("out", "run1/f002.txt", b"someone else's")
    records = stage_out(store, tmp_path, StageOut("job.sh:3", "results/", "out", "run1/", overwrite=False))
    assert records["run1/f001.txt"].status == SKIPPED
    assert records["run1/f002.txt"].status == REFUSED
    assert store.content("out", "run1/f002.txt") == b"someone else's"
    assert store.count("upload") == 0 and sum(map(len, store.members)) == 4


def test_bundles_are_balanced_over_the_threads_and_bounded(tmp_path: Path) -> None:
    spec = OUT
    puts = []
    for n in range(2000):
        path = tmp_path / f"f{n:05d}"
        path.write_bytes(b"x" * 16384)
        puts.append(Put(spec, LocalFile.at(path, f"f{n:05d}", path, tmp_path), f"run1/f{n:05d}", None))
    big = tmp_path / "big"
    big.write_bytes(b"b" * (SMALL + 1))
    puts.append(Put(spec, LocalFile.at(big, "big", big, tmp_path), "run1/big", None))
    grouped, alone = bundles(FakeBulkStore(), puts, 8, True)
    assert [p.name for p in alone] == ["run1/big"]
    assert (
        len(grouped) == -(-2000 * (512 + 16384) // BUNDLE_BYTES)
        and max(map(len, grouped)) - min(map(len, grouped)) <= 1
    )
    assert all(len(g) * (512 + 16384) <= BUNDLE_BYTES and len(g) <= BUNDLE_FILES for g in grouped)
    assert bundles(FakeStore(), puts, 8, True) == ([], puts)  # a store that does not unpack
    other = [Put(replace(OUT, bucket="two"), p.file, p.name, None) for p in puts[:40]]
    grouped, alone = bundles(FakeBulkStore(), puts[:20] + other, 8, True)  # each bucket split evenly
    assert alone == [] and [len(g) for g in grouped] == [4] * 5 + [5] * 8
    assert [{p.spec.bucket for p in g} for g in grouped] == [{"out"}] * 5 + [{"two"}] * 8
    grouped, alone = bundles(FakeBulkStore(), puts[:3], 8, True)
    assert (grouped, alone) == ([], puts[:3])  # too few to be worth a bundle


def test_member_names_radosgw_would_misread_are_refused() -> None:
    assert member_problem("a/b.txt", "") == "" and member_problem("run/" + "ä" * 50, "run/") == ""
    assert "100 bytes" in member_problem("run/" + "ä" * 51, "run/")
    assert member_problem("a//b", "") and member_problem("./a", "") and member_problem("r/a/../b", "r/")
    assert "1024 bytes an object name" in member_problem("d" * 1030 + "/x", "d" * 1030 + "/")


def test_the_bundles_option_is_read() -> None:
    def plan(header: str) -> Settings:
        return jobscript.plan_of(f"#!/bin/sh\n{header}\ntrue\n", "job.sh", {}, strict=False).settings

    assert plan("").bundles is True and plan("#ALLAS option bundles=no").bundles is False
    with pytest.raises(
        DirectiveError, match=re.escape("job.sh:2: bad value for bundles: 'maybe' is not yes or no")
    ):
        plan("#ALLAS option bundles=maybe")

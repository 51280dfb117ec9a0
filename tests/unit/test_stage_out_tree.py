"""Stage-out of a real output tree that is not still: links, files that vanish or change, big files.

Real files in tmp_path, the in-memory `FakeStore`; its `before` hook is how a file vanishes or
changes at a chosen moment of the stage-out (after the listing, during one upload), so every
race here is deterministic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from allasrun.errors import DirectiveError, StoreError
from allasrun.process import HOST
from allasrun.staging import put as put_module
from allasrun.staging import select
from allasrun.staging.directives import parse
from allasrun.staging.plan import Settings, StageOut, build
from allasrun.staging.put import segment_stamp
from allasrun.staging.select import LocalFile
from allasrun.staging.stager import Stager
from allasrun.staging.store import Segment
from allasrun.staging.transfer import DONE, FAILED, MISSING, REFUSED, SKIPPED, Transfer
from tests.unit.fakestore import FakeStore, md5
from tests.unit.keystone_fake import capture_log
from tests.unit.test_stage_in_objects import _dead_pid

OUT = StageOut("job.sh:3", "results/", "out", "run1/")
BIG = os.urandom(2500)  # three segments of 1024 bytes


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """results/a.txt, results/sub/b.txt and results/big.bin (a large object at 1024-byte segments)."""
    (tmp_path / "results" / "sub").mkdir(parents=True)
    (tmp_path / "results" / "a.txt").write_bytes(b"first\n")
    (tmp_path / "results" / "sub" / "b.txt").write_bytes(b"bee\n")
    (tmp_path / "results" / "big.bin").write_bytes(BIG)
    return tmp_path / "results"


def stage_out(
    store: FakeStore, workdir: Path, *specs: StageOut, segment_size: int = 1024
) -> dict[str, Transfer]:
    """Run a stage-out (OUT by default) and index its records by destination."""
    settings = Settings(threads=1, segment_size=segment_size, retries=1, progress=3600.0)
    return {t.destination: t for t in Stager(store, settings, workdir).stage_out(specs or (OUT,))}


def on(method: str, name: str, action: Callable[[], object]) -> Callable[[str, str, str], None]:
    """A `before` hook that runs `action` once, at the first `method` call for `name`."""
    done: list[bool] = []

    def hook(called: str, bucket: str, object_name: str) -> None:
        if called == method and object_name == name and not done:
            done.append(True)
            action()

    return hook


def landed(store: FakeStore) -> list[str]:
    return store.names("out")


# ---------------------------------------------------------------- symbolic links


def test_link_to_a_private_file_outside_is_refused_and_the_rest_lands(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    private = tmp_path / "home" / ".ssh" / "id_ed25519"
    private.parent.mkdir(parents=True)
    private.write_bytes(b"PRIVATE KEY\n")
    private.chmod(0o600)
    (results / "ref").symlink_to(private)
    records = stage_out(store, tmp_path)
    ref = records["allas:out/run1/ref"]
    assert (ref.status, ref.where, ref.source) == (REFUSED, "job.sh:3", str(results / "ref"))
    assert ref.error == f"a symbolic link to {private}, outside {results}"
    assert landed(store) == ["run1/a.txt", "run1/big.bin", "run1/sub/b.txt"]
    assert all(b"PRIVATE" not in store.content(b, n) for b in ("out",) for n in store.names(b))


def test_link_to_a_directory_outside_is_refused(store: FakeStore, tmp_path: Path, results: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "z.txt").write_text("z")
    (results / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert stage_out(store, tmp_path)["allas:out/run1/linked"].status == REFUSED
    assert not [n for n in landed(store) if "z.txt" in n]


def test_link_inside_the_tree_uploads_the_content_under_its_name(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    (results / "latest.txt").symlink_to("sub/b.txt")
    (results / "again").symlink_to(".", target_is_directory=True)  # followed, it would never end
    records = stage_out(store, tmp_path)
    assert records["allas:out/run1/latest.txt"].status == DONE
    assert store.content("out", "run1/latest.txt") == b"bee\n"
    assert landed(store) == ["run1/a.txt", "run1/big.bin", "run1/latest.txt", "run1/sub/b.txt"]


def test_links_not_followed_inside_the_tree_are_warnings_not_failures(
    store: FakeStore,
    tmp_path: Path,
    results: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture_log(caplog, monkeypatch)
    (results / "again").symlink_to(".", target_is_directory=True)
    (results / "dangling").symlink_to("no-such-file")
    records = stage_out(store, tmp_path)
    assert {t.status for t in records.values()} == {DONE}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"stage-out job.sh:3: {results / 'again'}: a symbolic link to the directory {results} in the tree: "
        "not followed",
        f"stage-out job.sh:3: {results / 'dangling'}: a symbolic link to nothing at "
        f"{results / 'no-such-file'} in the tree: not followed",
    ]


def test_only_refused_links_is_no_missing_source(store: FakeStore, tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "ref").symlink_to("/etc/hostname")
    records = stage_out(store, tmp_path)
    assert [(t.destination, t.status) for t in records.values()] == [("allas:out/run1/ref", REFUSED)]


def test_a_link_swapped_in_after_the_listing_is_not_followed(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"PRIVATE\n")

    def swap() -> None:
        (results / "a.txt").unlink()
        (results / "a.txt").symlink_to(secret)

    store.before = on("listing", "run1/", swap)
    record = stage_out(store, tmp_path)["allas:out/run1/a.txt"]
    assert record.status == FAILED
    assert record.error == f"cannot read {results / 'a.txt'}: became a symbolic link after it was listed"
    assert "run1/a.txt" not in landed(store)


def test_a_directory_swapped_for_a_link_after_the_listing_is_not_followed(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """What was opened is checked, not the name: `sub/` turned into a link to a private directory."""
    private = tmp_path / "private"
    private.mkdir()
    (private / "b.txt").write_bytes(b"PRIVATE\n")

    def swap() -> None:
        (results / "sub" / "b.txt").unlink()
        (results / "sub").rmdir()
        (results / "sub").symlink_to(private, target_is_directory=True)

    store.before = on("listing", "run1/", swap)
    record = stage_out(store, tmp_path)["allas:out/run1/sub/b.txt"]
    assert record.status == FAILED
    assert (
        record.error
        == f"cannot read {results / 'sub/b.txt'}: leads to {private / 'b.txt'}, outside {results}"
    )
    assert "run1/sub/b.txt" not in landed(store)


def test_a_pipe_swapped_in_after_the_listing_does_not_hang_the_stage_out(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    def swap() -> None:
        (results / "a.txt").unlink()
        os.mkfifo(results / "a.txt")

    store.before = on("listing", "run1/", swap)
    record = stage_out(store, tmp_path)["allas:out/run1/a.txt"]
    assert (record.status, record.error) == (
        FAILED,
        f"cannot read {results / 'a.txt'}: is no longer a regular file",
    )


def test_a_pipe_swapped_in_after_the_open_is_never_read_by_the_skip_check(
    store: FakeStore, tmp_path: Path, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip check reads the descriptor already opened, not the name: a FIFO there would block."""
    (results / "empty.txt").write_bytes(b"")
    store.put_object("out", "run1/empty.txt", b"")
    opened = select.open_inside

    def open_then_swap(file: LocalFile) -> BinaryIO:
        source = opened(file)
        if file.path.name == "empty.txt":
            file.path.unlink()
            os.mkfifo(file.path)
        return source

    monkeypatch.setattr(put_module, "open_inside", open_then_swap)
    records: dict[str, Transfer] = {}
    worker = threading.Thread(target=lambda: records.update(stage_out(store, tmp_path)), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "the skip check opened the FIFO by name and blocks"
    assert records["allas:out/run1/empty.txt"].status == SKIPPED


# ---------------------------------------------------------------- files that vanish or change


def test_a_file_that_vanishes_after_the_listing_is_reported_alone(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """The review's probe: results/ with a `scratch.tmp` its writer renames away meanwhile."""
    (results / "scratch.tmp").write_bytes(b"partial")
    store.before = on("listing", "run1/", (results / "scratch.tmp").unlink)
    records = stage_out(store, tmp_path)
    gone = records["allas:out/run1/scratch.tmp"]
    assert (gone.status, gone.error) == (MISSING, f"{results / 'scratch.tmp'} vanished after it was listed")
    assert landed(store) == ["run1/a.txt", "run1/big.bin", "run1/sub/b.txt"]


def test_a_file_that_vanishes_while_it_is_uploaded_is_reported_and_removed(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    store.before = on("upload", "run1/a.txt", (results / "a.txt").unlink)
    record = stage_out(store, tmp_path)["allas:out/run1/a.txt"]
    assert (record.status, record.error) == (
        MISSING,
        f"{results / 'a.txt'} vanished while it was uploaded; the object was removed",
    )
    assert landed(store) == ["run1/big.bin", "run1/sub/b.txt"]


def append(path: Path) -> None:
    with open(path, "ab") as out:
        out.write(b"one more line\n")


def test_a_file_appended_while_it_is_uploaded_fails_alone(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    store.before = on("upload", "run1/a.txt", lambda: append(results / "a.txt"))
    records = stage_out(store, tmp_path)
    record = records["allas:out/run1/a.txt"]
    assert (record.status, record.error) == (
        FAILED,
        f"{results / 'a.txt'} changed while it was uploaded (6 -> 20 bytes); the object was removed",
    )
    assert landed(store) == ["run1/big.bin", "run1/sub/b.txt"]  # the others land
    assert {t.status for key, t in records.items() if key != "allas:out/run1/a.txt"} == {DONE}


def test_a_file_rewritten_in_place_while_it_is_uploaded_fails(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """Same size: only the times tell (a torn read is as likely as a clean one)."""
    before = (results / "a.txt").stat()
    store.before = on("upload", "run1/a.txt", lambda: (results / "a.txt").write_bytes(b"FIRST\n"))
    record = stage_out(store, tmp_path)["allas:out/run1/a.txt"]
    assert (results / "a.txt").stat().st_mtime_ns != before.st_mtime_ns
    assert (record.status, record.error) == (
        FAILED,
        f"{results / 'a.txt'} changed while it was uploaded (6 -> 6 bytes); the object was removed",
    )


def test_a_file_replaced_while_it_is_uploaded_fails(store: FakeStore, tmp_path: Path, results: Path) -> None:
    def replace() -> None:
        (results / "new").write_bytes(b"second\n")
        (results / "new").replace(results / "a.txt")

    store.before = on("upload", "run1/a.txt", replace)
    record = stage_out(store, tmp_path)["allas:out/run1/a.txt"]
    assert (record.status, record.error) == (
        FAILED,
        f"{results / 'a.txt'} was replaced while it was uploaded; the object was removed",
    )
    assert "run1/a.txt" not in landed(store)


def test_a_large_file_appended_while_its_segments_go_fails_and_leaves_nothing(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    segment_1 = [False]

    def hook(method: str, bucket: str, name: str) -> None:
        if (
            method == "upload"
            and bucket == "out_segments"
            and name.endswith("/00000001")
            and not segment_1[0]
        ):
            segment_1[0] = True
            append(results / "big.bin")

    store.before = hook
    records = stage_out(store, tmp_path)
    record = records["allas:out/run1/big.bin"]
    assert (record.status, record.error) == (
        FAILED,
        f"{results / 'big.bin'} changed while it was uploaded (2500 -> 2514 bytes); the object was removed",
    )
    assert landed(store) == ["run1/a.txt", "run1/sub/b.txt"]
    assert store.names("out_segments") == []


def test_a_changed_file_replacing_a_large_object_leaves_no_segments(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    stage_out(store, tmp_path)
    (results / "big.bin").write_bytes(BIG[::-1])
    store.before = lambda method, bucket, name: (
        append(results / "big.bin") if (method, bucket) == ("put_manifest", "out") else None
    )
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == FAILED
    assert (landed(store), store.names("out_segments")) == (["run1/a.txt", "run1/sub/b.txt"], [])


# ---------------------------------------------------------------- large objects: names and limits


def test_a_same_size_same_mtime_rewrite_keeps_its_new_segments(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """Segment names unique per upload: the replaced object's clean-up cannot hit the new ones."""
    big = results / "big.bin"
    stage_out(store, tmp_path)
    stamp = big.stat().st_mtime_ns
    big.write_bytes(BIG[::-1])
    os.utime(big, ns=(stamp, stamp))
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == DONE
    assert store.content("out", "run1/big.bin") == BIG[::-1]
    manifest = store.manifest("out", "run1/big.bin")
    assert [f"out_segments/{n}" for n in store.names("out_segments")] == [s.path for s in manifest]


def test_too_many_segments_raise_the_segment_size(
    store: FakeStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest holds at most 1000 segments: 1024-byte segments would need 1001 here."""
    capture_log(caplog, monkeypatch)
    data = os.urandom(1000 * 1024 + 1)
    (tmp_path / "huge.bin").write_bytes(data)
    spec = StageOut("job.sh:3", "huge.bin", "out", "huge.bin")
    record = stage_out(store, tmp_path, spec)["allas:out/huge.bin"]
    manifest = store.manifest("out", "huge.bin")
    assert (record.status, len(manifest), {s.size for s in manifest[:-1]}) == (DONE, 1000, {1025})
    assert store.content("out", "huge.bin") == data
    assert (
        f"{tmp_path / 'huge.bin'}: 1024-byte segments would be 1001, over the 1000 a large object may have: "
        "1025-byte segments instead" in caplog.messages
    )


def test_a_file_too_large_for_any_large_object_fails_before_uploading(
    store: FakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(put_module, "MAX_SEGMENTS", 3)
    monkeypatch.setattr(put_module, "LARGEST_SEGMENT", 1024)
    (tmp_path / "huge.bin").write_bytes(b"x" * (3 * 1024 + 1))
    record = stage_out(store, tmp_path, StageOut("job.sh:3", "huge.bin", "out", "huge.bin"))[
        "allas:out/huge.bin"
    ]
    assert (record.status, record.error) == (
        FAILED,
        f"{tmp_path / 'huge.bin'} is 3073 bytes, "
        "more than a large object can hold (3 segments of 1024 bytes)",
    )
    assert store.count("upload") == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("6G", "bad value for segment-size: 6G is more than 5G, the largest object Allas stores"),
        (
            "5368709121",
            "bad value for segment-size: 5368709121 is more than 5G, the largest object Allas stores",
        ),
        ("0", "bad value for segment-size: 0 is not a positive number"),
    ],
)
def test_segment_size_bounds_are_checked_when_the_script_is_read(value: str, error: str) -> None:
    directives, _ = parse(f"#ALLAS option segment-size={value}\n", "job.sh")
    with pytest.raises(DirectiveError, match="^job.sh:1: " + error):
        build(directives, {}, "login")


def test_segment_size_of_5g_is_allowed() -> None:
    directives, _ = parse("#ALLAS option segment-size=5G\n", "job.sh")
    assert build(directives, {}, "login").settings.segment_size == 5 * 1024**3


def test_uploads_say_how_they_were_verified(store: FakeStore, tmp_path: Path, results: Path) -> None:
    records = stage_out(store, tmp_path)
    verified = {key: (t.status, t.verified) for key, t in records.items()}
    assert verified == {
        "allas:out/run1/a.txt": (DONE, "md5"),  # the ETag Swift kept is the MD5 read
        "allas:out/run1/big.bin": (DONE, "md5 per segment"),
        "allas:out/run1/sub/b.txt": (DONE, "md5"),
    }
    again = stage_out(store, tmp_path)
    assert {key: t.verified for key, t in again.items()} == {
        "allas:out/run1/a.txt": "md5",
        "allas:out/run1/big.bin": "md5 per segment",
        "allas:out/run1/sub/b.txt": "md5",
    }
    assert {t.status for t in again.values()} == {SKIPPED}


# ---------------------------------------------------------------- lost answers and orphaned segments

NO_ANSWER = "cannot write the manifest of out/run1/big.bin: ('Connection aborted.', RemoteDisconnected())"


def answer_lost(store: FakeStore, landing: bool) -> None:
    """The next manifest PUT gets no answer: the connection was cut before (or after) it landed."""
    original = store.put_manifest

    def put_manifest(bucket: str, name: str, segments: list[Segment]) -> None:
        store.put_manifest = original  # type: ignore[method-assign]
        if landing:
            original(bucket, name, segments)
        raise StoreError(NO_ANSWER)

    store.put_manifest = put_manifest  # type: ignore[method-assign]


def test_a_manifest_whose_answer_was_lost_but_landed_is_done(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """Deleting its segments would leave an object that points at nothing: a corrupt object."""
    answer_lost(store, landing=True)
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == DONE
    assert store.content("out", "run1/big.bin") == BIG
    manifest = store.manifest("out", "run1/big.bin")
    assert [f"out_segments/{n}" for n in store.names("out_segments")] == [s.path for s in manifest]


def test_a_manifest_whose_answer_was_lost_keeps_its_segments_until_the_rerun(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    answer_lost(store, landing=False)
    record = stage_out(store, tmp_path)["allas:out/run1/big.bin"]
    assert (record.status, record.error) == (FAILED, NO_ANSWER)
    assert len(store.names("out_segments")) == 3  # it might have landed: kept
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == DONE
    manifest = store.manifest("out", "run1/big.bin")
    assert [f"out_segments/{n}" for n in store.names("out_segments")] == [s.path for s in manifest]


def test_a_refused_manifest_leaves_no_segments(store: FakeStore, tmp_path: Path, results: Path) -> None:
    store.fail("put_manifest", StoreError("cannot write the manifest: HTTP 400 Bad Request", 400))
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == FAILED
    assert store.names("out_segments") == []


def leftover(store: FakeStore, name: str, stamp: str, size: int = 2500) -> list[str]:
    """Two segments of an upload that was killed (or is still going): their names in the bucket."""
    store.ensure_bucket("out_segments")
    names = [f"{name}/slo/{stamp}/{size}/1024/{i:08d}" for i in range(2)]
    for segment in names:
        store.put_object("out_segments", segment, b"x" * 1024)
    return names


DAY = 24 * 3600
NOW = time.time()


@pytest.mark.parametrize("skipped", [False, True])
@pytest.mark.parametrize("size", [len(BIG), 5])
def test_segments_a_killed_upload_left_are_removed_by_the_rerun(
    store: FakeStore, tmp_path: Path, results: Path, skipped: bool, size: int
) -> None:
    """Killed between segments (no manifest), or after the manifest before the replaced object's
    segments went: the re-run's upload, or its skip, removes what the object does not list; also
    when the file is now too small to be segmented (size 5)."""
    (results / "big.bin").write_bytes(BIG[:size])
    if skipped:
        stage_out(store, tmp_path)
    orphans = leftover(store, "run1/big.bin", segment_stamp(pid=_dead_pid()))
    orphans += leftover(store, "run1/big.bin", f"{NOW - 15 * DAY:.6f}-0badf00d")  # an older allasrun's
    store.put_object("out_segments", "run1/big.bin/slo/not-a-segment", b"kept: not our layout")
    status = SKIPPED if skipped else DONE
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == status
    kept = {f"out_segments/{n}" for n in store.names("out_segments")}
    manifest = {s.path for s in store.manifest("out", "run1/big.bin")} if size > 1024 else set()
    assert kept == manifest | {"out_segments/run1/big.bin/slo/not-a-segment"}


def test_an_slo_replaced_by_a_small_file_leaves_no_segments(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    stage_out(store, tmp_path)
    assert len(store.names("out_segments")) == 3
    (results / "big.bin").write_bytes(b"small")
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == DONE
    assert (store.content("out", "run1/big.bin"), store.names("out_segments")) == (b"small", [])


@pytest.mark.parametrize("size", [len(BIG), 5])
def test_segments_of_uploads_still_going_are_kept(
    store: FakeStore, tmp_path: Path, results: Path, size: int
) -> None:
    """Another job uploading the same name, on this host (a live process) or another (young)."""
    (results / "big.bin").write_bytes(BIG[:size])
    going = leftover(store, "run1/big.bin", segment_stamp(pid=os.getppid()))
    going += leftover(store, "run1/big.bin", f"{NOW - 13 * DAY:.6f}-0badf00d.allasrun-elsewhere-1")
    going += leftover(store, "run1/big.bin", f"{NOW - DAY:.6f}-0badf00d")  # an older allasrun's
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == DONE
    assert set(going) <= set(store.names("out_segments"))


def test_the_sweep_keeps_the_segments_of_a_manifest_that_replaced_this_upload(
    store: FakeStore, tmp_path: Path, results: Path
) -> None:
    """Another job's upload ended after this one's manifest and before its sweep: its object."""
    other, stamp = os.urandom(2500), segment_stamp(pid=_dead_pid())

    def replace_it(called: str, bucket: str, name: str) -> None:
        if called == "listing" and bucket == "out_segments" and name == "run1/big.bin/slo/":
            store.before = None
            names = [f"run1/big.bin/slo/{stamp}/2500/1024/{i:08d}" for i in range(3)]
            parts = [other[i : i + 1024] for i in range(0, 2500, 1024)]
            for segment, part in zip(names, parts):
                store.put_object("out_segments", segment, part)
            listed = [Segment(f"out_segments/{n}", len(p), md5(p)) for n, p in zip(names, parts)]
            store.put_manifest("out", "run1/big.bin", listed)

    store.before = replace_it
    assert stage_out(store, tmp_path)["allas:out/run1/big.bin"].status == DONE
    assert store.content("out", "run1/big.bin") == other


@pytest.mark.parametrize(
    ("stamp", "age", "over"),
    [
        ("{now}-0badf00d.allasrun-{host}-{dead}", 0, True),
        ("{now}-0badf00d.allasrun-{host}-{live}", 0, False),
        ("{now}-0badf00d.allasrun-{host}-{live}", 15 * DAY, True),  # its id taken by another process
        ("{now}-0badf00d.allasrun-{host}x-{dead}", 13 * DAY, False),  # another host's
        ("{now}-0badf00d.allasrun-{host}x-{dead}", 15 * DAY, True),
        ("{now}-0badf00d.allasrun-a-b-{dead}", 0, False),  # a host name with dashes
        ("{now}-0badf00d", 13 * DAY, False),  # an older allasrun's
        ("{now}-0badf00d", 15 * DAY, True),
        ("{now}", 15 * DAY, True),  # the swift CLI's
        ("{now}", -DAY, False),  # a clock ahead
        ("abc", 15 * DAY, False),  # not allasrun's
    ],
)
def test_a_segment_set_is_abandoned_when_its_upload_is_over(stamp: str, age: float, over: bool) -> None:
    now = time.time()
    named = stamp.format(now=f"{now - age:.6f}", host=HOST, dead=_dead_pid(), live=os.getppid())
    assert put_module.abandoned(named, now) is over


def test_this_process_s_own_sets_are_abandoned_only_once_its_upload_ended() -> None:
    with put_module.uploading(segment_stamp()) as stamp:
        assert not put_module.abandoned(stamp, time.time())
    assert put_module.abandoned(stamp, time.time())
    assert put_module._OWNED.fullmatch(stamp)

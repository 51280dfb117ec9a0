"""`--unpack`: a-put's archives extracted as they stream in, safely, all or nothing.

Through the stager against the in-memory `FakeStore`: what lands, what is refused and named,
and that a refused or corrupt archive leaves nothing behind. The real servers, GNU tar and
zstd are in tests/stack/test_apack.py.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from allasrun.staging.plan import Settings, StageIn
from allasrun.staging.stager import Stager
from allasrun.staging.transfer import CANCELLED, DONE, FAILED, REFUSED, Transfer
from allasrun.staging.unpack import check_listing, kind_of
from tests.unit.fakestore import FakeStore
from tests.unit.keystone_fake import capture_log

Member = tuple[str, str, object]  # name, type ("file", "dir", "sym", "link", "fifo", "chr"), data or target


def tar_of(*members: Member) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                data = value if isinstance(value, bytes) else b""
                info.size, info.mode = len(data), 0o640
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            info.mode = 0o750 if kind == "dir" else 0o644
            info.linkname = str(value or "")
            tar.addfile(info)
    return buffer.getvalue()


TREE = (
    ("data", "dir", None),
    ("data/a.txt", "file", b"alpha\n"),
    ("data/empty", "dir", None),
    ("data/sub", "dir", None),
    ("data/sub/b.bin", "file", os.urandom(300_000)),
    ("data/sub/with space and\nnewline ä", "file", b"odd\n"),
    ("data/sub/to-a", "sym", "../a.txt"),
    ("data/sub/hard", "link", "data/a.txt"),
)


def unpacking(
    store: FakeStore, workdir: Path, name: str, destination: str = "in/", ameta: bool = False
) -> Transfer:
    settings = Settings(threads=2, retries=2, progress=3600.0)
    spec = StageIn("job.sh:2", "b", name, destination, unpack=True, ameta=ameta)
    records = Stager(store, settings, workdir).stage_in([spec], lambda: False)
    assert len(records) == 1, records
    return records[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".allasrun-" in p.name)


def test_kinds_are_told_by_name() -> None:
    assert [kind_of(n) for n in ("a.tar", "a.tar.zst", "a.zst", "a.txt", ".tar", "a.tar_ameta")] == [
        ".tar",
        ".tar.zst",
        ".zst",
        None,
        None,
        None,
    ]


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.zst"])
def test_a_tree_is_unpacked_whole(tmp_path: Path, compress: bool) -> None:
    archive = tar_of(*TREE)
    name = "data.tar.zst" if compress else "data.tar"
    store = FakeStore()
    store.put_object("b", name, zstandard.ZstdCompressor().compress(archive) if compress else archive)
    record = unpacking(store, tmp_path, name)
    assert (record.status, record.verified, record.bytes) == (DONE, "md5", len(store.buckets["b"][name].data))
    assert record.unpacked == [m[0] for m in TREE]
    root = tmp_path / "in" / "data"
    assert (root / "a.txt").read_bytes() == b"alpha\n"
    assert (root / "sub" / "b.bin").read_bytes() == TREE[4][2]
    assert (root / "sub" / "with space and\nnewline ä").read_bytes() == b"odd\n"
    assert (root / "empty").is_dir() and not any((root / "empty").iterdir())
    assert (
        os.readlink(root / "sub" / "to-a") == "../a.txt"
        and (root / "sub" / "to-a").read_bytes() == b"alpha\n"
    )
    assert os.stat(root / "sub" / "hard").st_ino == os.stat(root / "a.txt").st_ino
    assert stat.S_IMODE(os.stat(root / "a.txt").st_mode) == 0o640
    assert os.stat(root / "a.txt").st_mtime == 1_700_000_000
    assert leftovers(tmp_path) == []


def test_a_zst_is_one_file_named_without_zst(tmp_path: Path) -> None:
    store = FakeStore()
    data = os.urandom(100_000)
    store.put_object("b", "run/results.csv.zst", zstandard.ZstdCompressor().compress(data))
    record = unpacking(store, tmp_path, "run/results.csv.zst", "out")
    assert (record.status, record.unpacked) == (DONE, ["results.csv"])
    assert (tmp_path / "out" / "results.csv").read_bytes() == data


def test_a_zst_of_several_frames_is_whole_and_one_cut_short_is_refused(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    frames = b"".join(
        zstandard.ZstdCompressor().compress(data[i : i + 100_000]) for i in range(0, 300_000, 100_000)
    )
    store = FakeStore()
    store.put_object("b", "whole.csv.zst", frames)
    store.put_object("b", "cut.csv.zst", frames[:-50])  # stored cut: its MD5 is the cut object's
    assert unpacking(store, tmp_path, "whole.csv.zst", "out").status == DONE
    assert (tmp_path / "out" / "whole.csv").read_bytes() == data
    record = unpacking(store, tmp_path, "cut.csv.zst", "out")
    assert record.status == REFUSED and "ends inside a frame" in record.error, record
    assert not (tmp_path / "out" / "cut.csv").exists() and leftovers(tmp_path) == []


def test_unpacking_merges_into_what_is_there_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "in" / "data" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "data" / "mine.txt").write_text("kept\n")
    (tmp_path / "in" / "data" / "a.txt").write_text("old\n")
    store = FakeStore()
    store.put_object("b", "data.tar", tar_of(*TREE))
    assert unpacking(store, tmp_path, "data.tar").status == DONE
    assert (tmp_path / "in" / "data" / "mine.txt").read_text() == "kept\n"
    assert (tmp_path / "in" / "data" / "a.txt").read_text() == "alpha\n"


def test_a_file_never_replaces_a_folder_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "in" / "data" / "a.txt").mkdir(parents=True)
    (tmp_path / "in" / "data" / "a.txt" / "precious").write_text("mine\n")
    store = FakeStore()
    store.put_object("b", "data.tar", tar_of(*TREE))
    record = unpacking(store, tmp_path, "data.tar")
    assert record.status == FAILED and "a folder of that name is in the way" in record.error
    assert (tmp_path / "in" / "data" / "a.txt" / "precious").read_text() == "mine\n"
    assert leftovers(tmp_path) == []


EVIL = {
    "dot-dot": (("../escape.txt", "file", b"x"),),
    "dot-dot-inside": (("data/../../escape.txt", "file", b"x"),),
    "absolute": (("/tmp/escape.txt", "file", b"x"),),
    "link-absolute": (("data/l", "sym", "/etc"),),
    "link-out": (("data/l", "sym", "../../outside"),),
    "link-then-write-through": (("l", "sym", "."), ("l/x", "sym", "../../outside")),
    "file-through-link-out": (("up", "sym", "data/../.."),),
    "hard-link-out": (("h", "link", "../outside/secret"),),
    "hard-link-to-nothing": (("h", "link", "not-there"),),
    "device": (("dev", "chr", None),),
    "fifo": (("pipe", "fifo", None),),
}


@pytest.mark.parametrize("members", EVIL.values(), ids=EVIL.keys())
def test_a_malicious_tar_is_refused_and_leaves_nothing(tmp_path: Path, members: tuple[Member, ...]) -> None:
    store = FakeStore()
    good = ("ok.txt", "file", b"fine\n")
    store.put_object("b", "evil.tar", tar_of(good, *members, good))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret\n")
    record = unpacking(store, tmp_path / "job", "evil.tar")
    assert record.status == REFUSED, record
    assert "evil.tar: member " in record.error and "nothing of it was unpacked" in record.error
    assert not (tmp_path / "job" / "in").exists() or not any((tmp_path / "job" / "in").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job", "outside"]
    assert [p.name for p in (tmp_path / "outside").iterdir()] == ["secret"]


def test_a_link_inside_the_tree_is_kept_even_through_dot_dot(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object(
        "b", "t.tar", tar_of(("d", "dir", None), ("d/x", "file", b"x"), ("d/l", "sym", "e/../x"))
    )
    assert unpacking(store, tmp_path, "t.tar").status == DONE
    assert os.readlink(tmp_path / "in" / "d" / "l") == "x"  # normalised: `e` cannot become a link later


def test_not_an_archive_by_content_is_refused(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "junk.tar.zst", b"this is no zstd frame at all" * 100)
    store.put_object("b", "junk.tar", b"\x01" * 5000)
    for name, words in (
        ("junk.tar.zst", "not a readable tar.zst archive"),
        ("junk.tar", "not a readable tar"),
    ):
        record = unpacking(store, tmp_path, name)
        assert record.status == REFUSED and words in record.error, record
    assert leftovers(tmp_path) == []


def test_a_name_that_is_no_archive_is_refused_with_unpack(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "notes.txt", b"hello\n")
    record = unpacking(store, tmp_path, "notes.txt")
    assert record.status == REFUSED and "not a .tar, .tar.zst or .zst object" in record.error


def test_a_transfer_that_breaks_the_archive_is_corrupt_and_retried(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "data.tar", tar_of(*TREE))
    store.corrupt.add("data.tar")
    record = unpacking(store, tmp_path, "data.tar")
    assert record.status == FAILED and "MD5" in record.error, record
    assert store.count("download") >= 2  # retried, as a corrupt transfer is
    assert leftovers(tmp_path) == [] and not (tmp_path / "in" / "data").exists()


def ls_l(size: int, path: str) -> str:
    return f"-rw-r----- 1 user group {size} Dec  1 12:00 {path}"


def ameta_text(*lines: str) -> bytes:
    head = ["user: user", "host: puhti-login11", "input: data", "original_location: /scratch/p/data "]
    return "\n".join([*head, "protocol: swift", "compression: none", *lines, ""]).encode()


def test_the_ameta_file_list_checks_the_unpacked_tree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FakeStore()
    store.put_object("b", "data.tar", tar_of(*TREE))
    listed = [ls_l(6, "data/a.txt"), ls_l(300_000, "data/sub/b.bin")]
    store.put_object("b", "data.tar_ameta", ameta_text(*listed))
    logged = capture_log(caplog, monkeypatch)
    assert unpacking(store, tmp_path, "data.tar").status == DONE
    assert "the 2 file(s) data.tar_ameta lists arrived whole" in logged.text
    store.put_object("b", "data.tar_ameta", ameta_text(ls_l(7, "data/a.txt")))
    record = unpacking(store, tmp_path / "again", "data.tar")
    assert record.status == REFUSED and "data/a.txt is 6 bytes, data.tar_ameta says 7" in record.error
    store.put_object("b", "data.tar_ameta", ameta_text(ls_l(1, "data/gone.txt")))
    record = unpacking(store, tmp_path / "third", "data.tar")
    assert record.status == REFUSED and "data/gone.txt is listed in data.tar_ameta" in record.error
    assert not (tmp_path / "third" / "in" / "data").exists()


def test_a_listing_with_names_with_spaces_and_no_files() -> None:
    from allasrun.staging.unpack import Unpacked

    tree = Unpacked(["d", "d/a b c"], {"d/a b c": 3})
    assert check_listing(ameta_text(ls_l(3, "d/a b c")).decode(), tree, "d.tar") == 1
    assert check_listing(ameta_text("Empty directory").decode(), Unpacked(["d"]), "d.tar") == 0
    assert check_listing(ameta_text(ls_l(3, "./d/a b c")).decode(), tree, "d.tar") == 1


def test_a_prefix_unpacks_each_archive_into_its_folder_and_leaves_ameta_out(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "runs/one.tar", tar_of(("one/x", "file", b"1")))
    store.put_object("b", "runs/one.tar_ameta", ameta_text(ls_l(1, "one/x")))
    store.put_object("b", "runs/2024/two.tar", tar_of(("two/y", "file", b"2")))
    settings = Settings(threads=2, retries=2, progress=3600.0)
    spec = StageIn("job.sh:2", "b", "runs/", "in/", unpack=True)
    records = Stager(store, settings, tmp_path).stage_in([spec], lambda: False)
    assert sorted((r.source, r.status) for r in records) == [
        ("allas:b/runs/2024/two.tar", DONE),
        ("allas:b/runs/one.tar", DONE),
    ]
    assert (tmp_path / "in" / "one" / "x").read_bytes() == b"1"
    assert (tmp_path / "in" / "2024" / "two" / "y").read_bytes() == b"2"


def test_a_stop_while_unpacking_leaves_no_temporary_folder(tmp_path: Path) -> None:
    store = FakeStore()
    store.put_object("b", "data.tar", tar_of(*TREE))
    stager = Stager(store, Settings(threads=1, retries=1, progress=3600.0), tmp_path)
    store.before = lambda method, bucket, name: stager._stop.set() if method == "download" else None
    records = stager.stage_in([StageIn("job.sh:2", "b", "data.tar", "in/", unpack=True)], lambda: False)
    assert [r.status for r in records] == [CANCELLED]
    assert leftovers(tmp_path) == [] and not (tmp_path / "in" / "data").exists()

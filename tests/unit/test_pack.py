"""`--pack`: a folder out as one a-put-style object and its `_ameta`, streamed in pieces.

Against the in-memory stores (one piece, Swift segments, S3 parts, failures), and read back
the way a-get reads it: GNU tar and zstd, the programs a-get calls, on the stored bytes. The
real servers are in tests/stack/test_apack.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from allasrun.errors import StoreError
from allasrun.staging.pack import ls_line
from allasrun.staging.plan import Settings, StageIn, StageOut
from allasrun.staging.stager import Stager
from allasrun.staging.transfer import DONE, MISSING, REFUSED, Transfer
from tests.unit.fakestore import FakePartStore, FakeStore, unavailable

KIB = 1024


def tree(root: Path, files: int = 40) -> Path:
    folder = root / "results"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "empty").mkdir()
    for n in range(files):
        (folder / "sub" / f"f{n:03d}.dat").write_bytes(os.urandom(16 * KIB + n))
    (folder / "odd name, ä\nnewline").write_text("odd\n")
    (folder / "sub" / "deeper" / "x").write_text("x\n")
    os.symlink("sub/f000.dat", folder / "link")
    os.link(folder / "sub" / "f000.dat", folder / "hard")
    return folder


def pack(
    store: FakeStore,
    workdir: Path,
    source: str = "results",
    destination: str = "out/",
    small: int = 0,
    compress: bool = False,
    overwrite: bool = True,
) -> Transfer:
    settings = Settings(threads=2, retries=2, progress=3600.0, segment_size=small or 5 << 30)
    spec = StageOut("job.sh:3", source, "b", destination, overwrite=overwrite, pack=True, compress=compress)
    records = Stager(store, settings, workdir).stage_out([spec])
    assert len(records) == 1, records
    return records[0]


def a_get(data: bytes, into: Path, compressed: bool) -> None:
    """What a-get does with the object: `zstdmt -d | tar -x -o`."""
    into.mkdir()
    if compressed:
        data = subprocess.run(["zstdmt", "-d"], input=data, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-o"], input=data, cwd=into, check=True)


def same_tree(one: Path, other: Path) -> None:
    command = ["diff", "-r", "--no-dereference", str(one), str(other)]
    found = subprocess.run(command, check=False, capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr
    names = [sorted(p.relative_to(top) for p in top.rglob("*")) for top in (one, other)]
    assert names[0] == names[1]


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.zst"])
@pytest.mark.parametrize("small", [0, 100 * KIB], ids=["one-object", "segments"])
def test_a_pack_is_what_a_get_unpacks(tmp_path: Path, compress: bool, small: int) -> None:
    folder = tree(tmp_path)
    store = FakeStore()
    record = pack(store, tmp_path, compress=compress, small=small)
    name = "out/results.tar.zst" if compress else "out/results.tar"
    assert (record.status, record.destination) == (DONE, f"allas:b/{name}"), record
    assert record.verified == ("md5 per segment" if small else "md5")
    assert (len(store.buckets.get("b_segments", {})) > 1) == bool(small)
    a_get(store.content("b", name), tmp_path / "a-get", compress)
    same_tree(folder, tmp_path / "a-get" / "results")
    assert record.bytes == len(store.content("b", name))


def test_over_s3_a_large_pack_is_a_multipart_upload(tmp_path: Path) -> None:
    folder = tree(tmp_path)
    store = FakePartStore()
    record = pack(store, tmp_path, compress=True, small=100 * KIB)
    assert (record.status, record.verified) == (DONE, "md5 per part")
    assert store.count("upload_part") > 1 and not store.uploads
    a_get(store.content("b", "out/results.tar.zst"), tmp_path / "a-get", True)
    same_tree(folder, tmp_path / "a-get" / "results")
    assert "protocol: S3 \n" in store.content("b", "out/results.tar.zst_ameta").decode()


def test_the_ameta_is_a_puts_and_unpack_checks_by_it(tmp_path: Path) -> None:
    tree(tmp_path)
    store = FakeStore()
    pack(store, tmp_path)
    lines = store.content("b", "out/results.tar_ameta").decode().splitlines()
    assert lines[:2] == [f"user: {os.environ.get('USER') or lines[0][6:]}", f"host: {os.uname().nodename}"]
    assert lines[3:7] == [
        "input: results",
        f"original_location: {tmp_path / 'results'} ",
        "protocol: swift",
        "compression: none",
    ]
    assert lines[7].startswith("Note: packed by allasrun ")
    files = [line for line in lines[8:] if line.startswith("-")]
    assert len(files) == 43  # 40 + odd name + deeper/x + the hard link; not the link or folders
    assert "newline" in lines  # as `ls -l` writes it: the name's newline kept
    entry = ls_line(os.stat(tmp_path / "results" / "sub" / "f000.dat"), "results/sub/f000.dat")
    assert entry in files and entry.split()[4] == str(16 * KIB)
    record = Stager(store, Settings(threads=2, retries=2, progress=3600.0), tmp_path).stage_in(
        [StageIn("job.sh:2", "b", "out/results.tar", "back/", unpack=True)], lambda: False
    )[0]
    assert record.status == DONE and len(record.unpacked) == 48


def test_an_empty_folder_is_an_empty_directory_in_ameta(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    store = FakeStore()
    assert pack(store, tmp_path, "nothing", "").status == DONE
    assert store.content("b", "nothing.tar_ameta").decode().endswith("\nEmpty directory\n")
    a_get(store.content("b", "nothing.tar"), tmp_path / "a-get", False)
    assert (tmp_path / "a-get" / "nothing").is_dir()


def test_a_file_is_packed_as_itself_or_as_zst(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    (tmp_path / "table.csv").write_bytes(data)
    store = FakeStore()
    record = pack(store, tmp_path, "table.csv", "keep/", compress=True)
    assert record.destination == "allas:b/keep/table.csv.zst"
    stored = store.content("b", "keep/table.csv.zst")
    plain = subprocess.run(["zstd", "-d"], input=stored, capture_output=True, check=True)
    assert plain.stdout == data
    assert pack(store, tmp_path, "table.csv", "keep/named").destination == "allas:b/keep/named"
    assert store.content("b", "keep/named") == data


def test_a_named_destination_gets_a_puts_suffix(tmp_path: Path) -> None:
    tree(tmp_path, files=1)
    store = FakeStore()
    assert pack(store, tmp_path, destination="run7/all").destination == "allas:b/run7/all.tar"
    assert pack(store, tmp_path, destination="x.tar.zst", compress=True).destination == "allas:b/x.tar.zst"


def test_missing_or_not_replaced(tmp_path: Path) -> None:
    store = FakeStore()
    missing = pack(store, tmp_path, "gone")
    assert missing.status == MISSING and "gone does not exist" in missing.error
    tree(tmp_path, files=1)
    assert pack(store, tmp_path).status == DONE
    refused = pack(store, tmp_path, overwrite=False)
    assert refused.status == REFUSED and "not replaced (--no-overwrite)" in refused.error


def test_a_failed_segment_leaves_no_segments_and_no_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("allasrun.staging.stager.time.sleep", lambda seconds: None)
    tree(tmp_path)
    store = FakeStore()
    store.fail("upload", None, None, *[unavailable("upload")] * 2)  # the third piece fails twice
    record = pack(store, tmp_path, small=100 * KIB)
    assert record.status != DONE and "503" in record.error, record
    assert store.buckets.get("b_segments", {}) == {}
    assert "out/results.tar" not in store.buckets.get("b", {})


def test_a_retried_piece_is_sent_again_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("allasrun.staging.stager.time.sleep", lambda seconds: None)
    folder = tree(tmp_path)
    store = FakeStore()
    store.fail("upload", None, unavailable("upload"))  # the second piece fails once
    assert pack(store, tmp_path, small=100 * KIB, compress=True).status == DONE
    a_get(store.content("b", "out/results.tar.zst"), tmp_path / "a-get", True)
    same_tree(folder, tmp_path / "a-get" / "results")


def test_mtimes_and_modes_survive(tmp_path: Path) -> None:
    folder = tree(tmp_path, files=1)
    os.chmod(folder / "sub" / "f000.dat", 0o600)
    os.utime(folder / "sub" / "f000.dat", (time.time() - 400 * 86400,) * 2)
    store = FakeStore()
    pack(store, tmp_path)
    a_get(store.content("b", "out/results.tar"), tmp_path / "a-get", False)
    back = tmp_path / "a-get" / "results" / "sub" / "f000.dat"
    assert (os.stat(back).st_mode & 0o777, int(os.stat(back).st_mtime)) == (
        0o600,
        int(os.stat(folder / "sub" / "f000.dat").st_mtime),
    )
    assert "  " + time.strftime("%Y", time.localtime(os.stat(back).st_mtime)) in ls_line(os.stat(back), "x")


def test_a_failed_pack_is_finished_from_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`allasrun stage-out REPORT` hands the stager the (source, destination) pairs that did not land."""
    monkeypatch.setattr("allasrun.staging.stager.time.sleep", lambda seconds: None)
    folder = tree(tmp_path, files=3)
    (tmp_path / "other").mkdir()
    store = FakeStore()
    store.fail("upload", *[unavailable("upload")] * 2)
    failed = pack(store, tmp_path)
    assert failed.status != DONE
    settings = Settings(threads=2, retries=2, progress=3600.0)
    specs = [StageOut("job.sh:3", name, "b", "out/", pack=True) for name in ("results", "other")]
    done = Stager(store, settings, tmp_path).stage_out(specs, only={(failed.source, failed.destination)})
    assert [(r.source, r.status) for r in done] == [(str(folder), DONE)]
    assert "out/other.tar" not in store.buckets["b"]


def test_pieces_grow_so_that_a_large_pack_fits_one_manifest() -> None:
    from allasrun.staging.pack import PIECE, piece_size

    assert piece_size(10 * 2**20, 5 << 30) == PIECE
    assert piece_size(10 * 2**20, 2**20) == 2**20  # a smaller segment-size is kept
    assert piece_size(2**40, 2**20) == -(-(2**40) // 900)  # 1 TiB: 900 pieces of 1.1 GiB, not 1,000,000
    with pytest.raises(StoreError, match="more than one object can hold"):
        piece_size(6 * 2**40, 5 << 30)


def test_a_pack_is_cut_by_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the segment limit set to 10, a 40-file folder in 16 KiB pieces would need 43: raised to fit 9."""
    monkeypatch.setattr("allasrun.staging.pack.MAX_SEGMENTS", 10)
    folder = tree(tmp_path)
    store = FakeStore()
    assert pack(store, tmp_path, small=16 * KIB).status == DONE
    segments = store.buckets["b_segments"]
    assert 1 < len(segments) <= 9
    a_get(store.content("b", "out/results.tar"), tmp_path / "a-get", False)
    same_tree(folder, tmp_path / "a-get" / "results")

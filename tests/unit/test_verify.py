"""Checking streamed downloads and local files against the listing: whole MD5, per segment of a
large object, per part of an S3 multipart upload (its part size guessed), or the size alone."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest

from allasrun.errors import Corrupt
from allasrun.staging.store import RemoteObject, Segment, multipart_etag, slo_etag
from allasrun.staging.verify import MIB, Verifier, identical_by, part_sizes
from tests.unit.fakestore import md5

DATA = random.Random(3000).randbytes(3000)  # fixed: test ids must agree across xdist workers
SIZES = (1000, 1000, 700, 300)  # four segments


def plain(data: bytes = DATA) -> RemoteObject:
    return RemoteObject("obj", len(data), md5(data))


def slo(data: bytes = DATA) -> tuple[RemoteObject, list[Segment]]:
    """An SLO of DATA's listing and its manifest (segments cut at SIZES)."""
    segments, offset = [], 0
    for index, size in enumerate(SIZES):
        segments.append(Segment(f"b_segments/obj/{index}", size, md5(data[offset : offset + size])))
        offset += size
    return RemoteObject("obj", offset, slo_etag(segments), slo=True), segments


def feed(check: Verifier, data: bytes, chunk: int) -> str:
    for offset in range(0, len(data), chunk):
        check.update(data[offset : offset + chunk])
    return check.finish()


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :]


@pytest.mark.parametrize("chunk", [1, 999, 3000, 4096])
def test_plain_object_right_data(chunk: int) -> None:
    assert feed(Verifier(plain(), None), DATA, chunk) == md5(DATA)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DATA[:-1], "received 2999 bytes, listed 3000 (short read)"),
        (DATA + b"x", "received 3001 bytes, listed 3000"),
        (flipped(DATA, 1234), f"does not match the listed {md5(DATA)}"),
    ],
    ids=["short", "extra", "wrong-md5"],
)
def test_plain_object_wrong_data(data: bytes, message: str) -> None:
    with pytest.raises(Corrupt, match=re.escape(message)):
        feed(Verifier(plain(), None), data, 512)


@pytest.mark.parametrize("chunk", [1, 333, 1000, 1700, 3000])  # most chunks straddle segment ends
def test_slo_right_data(chunk: int) -> None:
    obj, segments = slo()
    assert obj.md5 != md5(DATA)  # what is listed for an SLO is not the content's MD5
    assert feed(Verifier(obj, segments), DATA, chunk) == md5(DATA)


@pytest.mark.parametrize("chunk", [333, 3000])
def test_slo_wrong_byte_names_its_segment(chunk: int) -> None:
    obj, segments = slo()
    check = Verifier(obj, segments)
    with pytest.raises(Corrupt, match=f"obj: segment 2 has MD5 [0-9a-f]{{32}}, not {segments[2].md5}"):
        for offset in range(0, len(DATA), chunk):  # raised by update, before finish
            check.update(flipped(DATA, 2100)[offset : offset + chunk])


def test_slo_more_data_than_segments() -> None:
    obj, segments = slo()
    with pytest.raises(Corrupt, match="more data than its segments hold"):
        Verifier(obj, segments).update(DATA + b"x")


def test_slo_short_read() -> None:
    obj, segments = slo()
    with pytest.raises(Corrupt, match="received 2999 bytes, listed 3000"):
        feed(Verifier(obj, segments), DATA[:-1], 1000)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "local"
    path.write_bytes(data)
    return path


def test_identical_plain(tmp_path: Path) -> None:
    assert identical_by(write(tmp_path, DATA), plain(), None)
    assert not identical_by(write(tmp_path, flipped(DATA, 0)), plain(), None)
    assert not identical_by(write(tmp_path, DATA[:-1]), plain(), None)


def test_identical_slo(tmp_path: Path) -> None:
    obj, segments = slo()
    assert identical_by(write(tmp_path, DATA), obj, segments)
    assert not identical_by(write(tmp_path, flipped(DATA, 2999)), obj, segments)  # the last segment
    assert not identical_by(write(tmp_path, DATA), obj, None)  # an SLO cannot be judged without its manifest
    assert not identical_by(write(tmp_path, DATA), obj, [])


def multipart(data: bytes, part: int) -> RemoteObject:
    """An S3 multipart upload of `data` in parts of `part` bytes, as listed: ETag `md5-N`."""
    md5s = [md5(data[offset : offset + part]) for offset in range(0, len(data), part)]
    return RemoteObject("mp", len(data), multipart_etag(md5s))


def test_multipart_etag_is_the_s3_one() -> None:
    # boto3's documented example: two parts' binary MD5s, hashed, and "-2"
    assert (
        multipart_etag([md5(b"a"), md5(b"b")])
        == f"{hashlib.md5(bytes.fromhex(md5(b'a')) + bytes.fromhex(md5(b'b'))).hexdigest()}-2"
    )


@pytest.mark.parametrize(
    ("size", "count", "sizes"),
    [
        (11 * MIB, 3, [4 * MIB, 5 * MIB]),  # an even split rounded up to a MiB; rclone's 5 MiB
        (20 * MIB, 3, [7 * MIB, 8 * MIB]),  # the aws CLI's 8 MiB
        (40 * MIB, 3, [14 * MIB, 15 * MIB, 16 * MIB]),  # s3cmd's 15 MiB, mc's 16 MiB
        (100, 1, [100]),
    ],
)
def test_part_sizes_that_give_the_count(size: int, count: int, sizes: list[int]) -> None:
    assert part_sizes(size, count) == sizes


@pytest.mark.parametrize(
    ("size", "part"),
    [(13 * MIB + 5, 5 * MIB), (13 * MIB + 5, 8 * MIB), (40 * MIB + 5, 14 * MIB)],
    ids=["rclone", "aws", "even-split"],
)
def test_multipart_is_checked_per_part_with_a_known_part_size(size: int, part: int) -> None:
    data = random.Random(part).randbytes(size)
    check = Verifier(multipart(data, part), None)
    assert feed(check, data, MIB) == md5(data)
    assert check.how == "md5 per part"
    damaged = Verifier(multipart(data, part), None)
    feed(damaged, flipped(data, 7 * MIB), MIB)
    assert damaged.how == "size"  # no layout reproduces the ETag: nothing is claimed but the size


def test_an_unknown_etag_leaves_the_size() -> None:
    check = Verifier(RemoteObject("odd", len(DATA), "not-an-md5"), None)
    assert feed(check, DATA, 512) == md5(DATA)
    assert check.how == "size"
    with pytest.raises(Corrupt, match="received 2999 bytes, listed 3000"):
        feed(Verifier(RemoteObject("odd", len(DATA), "not-an-md5"), None), DATA[:-1], 512)


def test_identical_by_says_how(tmp_path: Path) -> None:
    path = write(tmp_path, DATA)
    obj, segments = slo()
    assert identical_by(path, plain(), None) == "md5"
    assert identical_by(path, obj, segments) == "md5 per segment"
    assert identical_by(path, multipart(DATA, 1000), None) == ""  # 1000-byte parts: no tool's size
    assert identical_by(path, RemoteObject("odd", len(DATA), "not-an-md5"), None) == ""  # size is no proof

"""Checking streamed downloads and local files against the listing: whole MD5, or per SLO segment."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from allasrun.errors import Corrupt
from allasrun.staging.store import RemoteObject, Segment, slo_etag
from allasrun.staging.verify import Verifier, same_content
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
    assert check.index == 2  # segments 0 and 1 passed


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


def test_same_content_plain(tmp_path: Path) -> None:
    assert same_content(write(tmp_path, DATA), plain(), None)
    assert not same_content(write(tmp_path, flipped(DATA, 0)), plain(), None)
    assert not same_content(write(tmp_path, DATA[:-1]), plain(), None)


def test_same_content_slo(tmp_path: Path) -> None:
    obj, segments = slo()
    assert same_content(write(tmp_path, DATA), obj, segments)
    assert not same_content(write(tmp_path, flipped(DATA, 2999)), obj, segments)  # the last segment
    assert not same_content(write(tmp_path, DATA), obj, None)  # an SLO cannot be judged without its manifest
    assert not same_content(write(tmp_path, DATA), obj, [])

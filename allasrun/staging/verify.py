"""Checking content against what the store vouches for: streamed downloads and local files.

Every check starts with the size. Then whatever checksum the server gives: an object uploaded
in one piece has its MD5 as its ETag; a large object (SLO, or a DLO such as rclone's chunked
files) is checked segment by segment against the MD5s its segments are listed with; an S3
multipart upload's ETag (`md5-N`) hides its part size, so the part sizes that tools use are
tried, and the one that reproduces the ETag checks every part. An ETag of any other form, or
a multipart one no known part size reproduces, leaves the size as the only check, and the
transfer's `verified` says so.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Optional, Union

from allasrun.errors import Corrupt
from allasrun.staging.store import CHUNK, EMPTY_MD5, RemoteObject, Segment, multipart_etag

# What a transfer was verified by (Transfer.verified). Each includes the size.
MD5, PER_SEGMENT, PER_PART, SIZE = "md5", "md5 per segment", "md5 per part", "size"

MIB = 1024 * 1024
# Part sizes of the tools that upload to Allas over S3, in MiB: rclone 5, the aws CLI and boto3
# 8, s3cmd 15, MinIO's mc 16, common settings above them, and allasrun's default 5 GiB.
PART_SIZES_MIB = (5, 8, 15, 16, 32, 50, 64, 100, 128, 256, 512, 1024, 5120)
_HEX_MD5 = re.compile("[0-9a-f]{32}")
_MULTIPART = re.compile("[0-9a-f]{32}-([0-9]+)")


class _Parts:
    """The MD5 of each consecutive part of a stream, cut at the given sizes."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = sizes
        self.md5s: list[str] = []
        self._start()

    def _start(self) -> None:
        while len(self.md5s) < len(self.sizes) and self.sizes[len(self.md5s)] == 0:
            self.md5s.append(EMPTY_MD5)
        self._hash = hashlib.md5()
        self._left = self.sizes[len(self.md5s)] if len(self.md5s) < len(self.sizes) else 0

    @property
    def complete(self) -> bool:
        return len(self.md5s) == len(self.sizes)

    def update(self, view: memoryview) -> bool:
        """Hash the next bytes; False if they run past the last part."""
        while view:
            if self._left == 0:
                return False
            take = view[: self._left]
            self._hash.update(take)
            self._left -= len(take)
            view = view[len(take) :]
            if self._left == 0:
                self.md5s.append(self._hash.hexdigest())
                self._start()
        return True


def part_sizes(size: int, count: int, also: Optional[int] = None) -> list[int]:
    """Part sizes that cut `size` bytes into exactly `count` parts.

    The tools' sizes, an even split rounded up to a MiB (what rclone does for files too large
    for its 10,000 parts), and `also`: the part size this run's stage-out uses.
    """
    if count <= 1:
        return [size]
    even = -(-size // count)
    candidates = {n * MIB for n in PART_SIZES_MIB} | {-(-even // MIB) * MIB} | ({also} if also else set())
    return sorted(p for p in candidates if -(-size // p) == count)


def _cut(size: int, part: int) -> list[int]:
    return [min(part, size - offset) for offset in range(0, size, max(part, 1))] or [0]


class Verifier:
    """Size, MD5 and whatever else the object's listing vouches for, as a download streams.

    After `finish`, `how` says what the content was checked by (MD5, PER_SEGMENT, PER_PART, SIZE).
    """

    def __init__(
        self, obj: RemoteObject, segments: Optional[list[Segment]], part_size: Optional[int] = None
    ) -> None:
        self.obj = obj
        self.segments = segments or []
        self.size = 0
        self.whole = hashlib.md5()
        self.how = ""
        self._segments = _Parts([s.size for s in self.segments]) if self.segments else None
        self._checked = 0
        multipart = None if self.segments else _MULTIPART.fullmatch(obj.md5)
        count = int(multipart[1]) if multipart else 0
        self._layouts = (
            [_Parts(_cut(obj.size, p)) for p in part_sizes(obj.size, count, part_size)] if count else []
        )

    def update(self, chunk: bytes) -> None:
        """Account for the next chunk; Corrupt as soon as a segment's digest is wrong."""
        self.size += len(chunk)
        self.whole.update(chunk)
        view = memoryview(chunk)
        for layout in self._layouts:
            layout.update(view)  # a layout that overflows is simply not the object's
        if self._segments is None:
            return
        if not self._segments.update(view):
            raise Corrupt(f"{self.obj.name}: more data than its segments hold")
        for index in range(self._checked, len(self._segments.md5s)):
            got, expected = self._segments.md5s[index], self.segments[index].md5
            if got != expected:
                raise Corrupt(f"{self.obj.name}: segment {index} has MD5 {got}, not {expected}")
        self._checked = len(self._segments.md5s)

    def finish(self) -> str:
        """The whole MD5, after checking size and digests; Corrupt if anything is off."""
        if self.size != self.obj.size:
            raise Corrupt(f"{self.obj.name}: received {self.size} bytes, listed {self.obj.size} (short read)")
        digest = self.whole.hexdigest()
        self.how = self._judge(digest)
        return digest

    def _judge(self, digest: str) -> str:
        if self._segments is not None:
            if not self._segments.complete:
                raise Corrupt(f"{self.obj.name}: ended inside segment {len(self._segments.md5s)}")
            return PER_SEGMENT
        if _HEX_MD5.fullmatch(self.obj.md5):
            if digest != self.obj.md5:
                raise Corrupt(f"{self.obj.name}: MD5 {digest} does not match the listed {self.obj.md5}")
            return MD5
        if any(p.complete and multipart_etag(p.md5s) == self.obj.md5 for p in self._layouts):
            return PER_PART
        return SIZE


def identical_by(
    local: Union[Path, BinaryIO],
    obj: RemoteObject,
    segments: Optional[list[Segment]],
    part_size: Optional[int] = None,
) -> str:
    """How a local file was found to hold the remote object's content; "" if it was not.

    Only a checksum proves it: a file that matches by size alone is not taken as identical.
    `part_size` is one more to try on a multipart ETag: the one stage-out would upload with.
    Stage-out passes the descriptor it already opened and checked: reopening the name would
    read whatever was swapped in meanwhile (a FIFO would block the stage-out for good).
    """
    if isinstance(local, Path):
        with open(local, "rb") as source:
            return identical_by(source, obj, segments, part_size)
    if (obj.large and not segments) or os.fstat(local.fileno()).st_size != obj.size:
        return ""
    check = Verifier(obj, segments, part_size)
    local.seek(0)
    try:
        while chunk := local.read(CHUNK):
            check.update(chunk)
        check.finish()
    except Corrupt:
        return ""
    return "" if check.how == SIZE else check.how

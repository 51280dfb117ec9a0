"""Checking content against what the store listed: streamed downloads and local files.

A single object is checked against its MD5 (the listing's hash); a static large object,
whose listed hash is not the content's MD5, is checked segment by segment against its
manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO, Optional

from allasrun.errors import Corrupt
from allasrun.staging.store import CHUNK, RemoteObject, Segment


class Verifier:
    """MD5 of a download as it streams: of the whole object, or of each SLO segment."""

    def __init__(self, obj: RemoteObject, segments: Optional[list[Segment]]) -> None:
        self.obj = obj
        self.segments = segments or []
        self.size = 0
        self.whole = hashlib.md5()
        self.index = 0
        self.left = self.segments[0].size if self.segments else 0
        self.part = hashlib.md5()

    def update(self, chunk: bytes) -> None:
        """Account for the next chunk; Corrupt as soon as a segment's digest is wrong."""
        self.size += len(chunk)
        if not self.segments:
            self.whole.update(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self.index >= len(self.segments):
                raise Corrupt(f"{self.obj.name}: more data than its segments hold")
            take = view[: self.left]
            self.part.update(take)
            self.whole.update(take)
            self.left -= len(take)
            view = view[len(take) :]
            if self.left == 0:
                self._segment_done()

    def _segment_done(self) -> None:
        expected = self.segments[self.index]
        if self.part.hexdigest() != expected.md5:
            raise Corrupt(
                f"{self.obj.name}: segment {self.index} has MD5 {self.part.hexdigest()}, not {expected.md5}"
            )
        self.index += 1
        self.part = hashlib.md5()
        self.left = self.segments[self.index].size if self.index < len(self.segments) else 0

    def finish(self) -> str:
        """The whole MD5, after checking size and digests; Corrupt if anything is off."""
        if self.size != self.obj.size:
            raise Corrupt(f"{self.obj.name}: received {self.size} bytes, listed {self.obj.size} (short read)")
        if self.segments and self.index != len(self.segments):
            raise Corrupt(f"{self.obj.name}: ended inside segment {self.index}")
        digest = self.whole.hexdigest()
        if not self.segments and digest != self.obj.md5:
            raise Corrupt(f"{self.obj.name}: MD5 {digest} does not match the listed {self.obj.md5}")
        return digest


def same_content(path: Path, obj: RemoteObject, segments: Optional[list[Segment]]) -> bool:
    """Whether a local file has the remote object's content (per segment for SLO)."""
    if obj.slo:
        if not segments:
            return False
        with open(path, "rb") as source:
            return all(md5_of(source, segment.size) == segment.md5 for segment in segments)
    with open(path, "rb") as source:
        return md5_of(source, obj.size) == obj.md5


def md5_of(source: BinaryIO, size: int) -> str:
    """The MD5 of the next `size` bytes of `source` (fewer if it ends first)."""
    digest = hashlib.md5()
    left = size
    while left > 0:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()

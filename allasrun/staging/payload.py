"""What an upload sends: `length` bytes of a file read once, and the MD5 of exactly what was sent.

Both stores check every upload by an MD5 the server compares: S3's Content-MD5 and Swift's
ETag request header make the server refuse a body that does not match before it stores
anything. A body up to `IN_MEMORY` bytes is read into memory with its MD5 (`whole`), so the
checksum can go with the request. A larger one is hashed while http.client reads it to send
(`Hashed`; from BEHIND bytes on, on a thread of its own, `behind`), and the ETag the server
answers, the MD5 of what it got, is compared afterwards (`put.py` deletes and resends on a
mismatch); `digest_ahead` hashes it first instead, a second read, where the request must carry
its checksum (an S3 part).

A file shorter than it was listed fails here (`Truncated`), before or instead of being stored.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Optional

from allasrun.errors import StoreError
from allasrun.staging.behind import BEHIND, Behind
from allasrun.staging.store import CHUNK

IN_MEMORY = 8 * 1024 * 1024  # an upload up to this size is read once into memory, MD5 and all


def whole(source: BinaryIO, length: int) -> tuple[bytes, str]:
    """`length` bytes from `source`'s position and their MD5 (hex)."""
    data = source.read(length)
    short(source, length, len(data))
    return data, hashlib.md5(data).hexdigest()


def short(source: BinaryIO, length: int, got: int) -> None:
    """A file shorter than it was listed fails before (or instead of) being sent."""
    if got != length:
        raise StoreError(f"{getattr(source, 'name', 'the file')} ended {length - got} bytes early")


class Hashed:
    """`length` bytes of a file from its position, MD5-hashed as http.client reads them to send.

    http.client asks for `blocksize` bytes a read; at least CHUNK are read. `close` it (with
    `contextlib.closing`): the hashing thread of a large one ends there, sent or not.
    """

    def __init__(self, source: BinaryIO, length: int) -> None:
        self._source, self._start, self._length = source, source.tell(), length
        self.digest = hashlib.md5()
        self._ahead = False
        self._behind: Optional[Behind] = None
        self.rewind()

    def close(self) -> None:
        """End the hashing thread, if any."""
        if self._behind:
            self._behind.close()
            self._behind = None

    def digest_ahead(self) -> None:
        """Hash every byte now (a second read), for a request that must carry its checksum."""
        self.close()  # in line: the request waits for the checksum anyway
        while self.read(CHUNK):
            pass
        short(self._source, self._length, self._sent)
        self._ahead = True
        self.rewind()

    def rewind(self) -> None:
        """Back to the first byte, for a request sent again."""
        self._source.seek(self._start)
        self._sent = 0
        if not self._ahead:
            self.close()
            self.digest = hashlib.md5()
            self._behind = Behind(self.digest.update) if self._length >= BEHIND else None

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (at least CHUNK), hashed unless hashed ahead."""
        left = self._length - self._sent
        data = self._source.read(left if size < 0 else min(max(size, CHUNK), left))
        self._sent += len(data)
        if not self._ahead:
            (self._behind or self.digest).update(data)
        if not data and left:
            short(self._source, self._length, self._sent)
        return data

    def md5(self) -> str:
        """The MD5 (hex) of what was sent; the file must not have ended early."""
        short(self._source, self._length, self._sent)
        if self._behind:
            self._behind.wait()
        return self.digest.hexdigest()

"""Hashing behind a transfer: chunks handed to a thread of its own, off the transfer's path.

MD5 costs about 1.5 s of CPU a GiB here, on the critical path of a large transfer when done in
line with receiving or sending. hashlib and socket calls both release the GIL, so on a thread
the hashing overlaps the transfer: a 1 GiB download from radosgw took 4.2-4.6 s with it in line,
3.0-3.1 s behind. Below BEHIND bytes a thread per file would be overhead where many small files
move and hashing is a small share of the time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Optional

BEHIND = 64 * 1024 * 1024  # bytes from which a transfer is hashed behind


class Behind:
    """`update` called on a thread of its own with each chunk, in order, at most `depth` behind.

    The queue is bounded, so memory stays flat however fast the transfer is. Whatever `update`
    raises (a Verifier's Corrupt) is raised at the next `update` after it, or at `wait`.
    """

    def __init__(self, update: Callable[[bytes], None], depth: int = 8) -> None:
        self._update = update
        self._chunks: queue.Queue[Optional[bytes]] = queue.Queue(depth)
        self._error: Optional[Exception] = None
        self._thread = threading.Thread(target=self._hash, name="allasrun-hash", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._error is None:
                try:
                    self._update(chunk)
                except Exception as error:  # kept for the transferring thread to raise
                    self._error = error

    def update(self, chunk: bytes) -> None:
        """Queue the next chunk (immutable bytes: it is read later); raise what hashing found."""
        if self._error is not None:
            raise self._error
        self._chunks.put(chunk)

    def wait(self) -> None:
        """Every chunk hashed, the thread ended; raise what hashing found."""
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """End the thread, done or abandoned; idempotent."""
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()

"""Progress while transfers run: a bar on a terminal, a summary line now and then in a batch log.

Batch logs get a one-line summary every N seconds rather than a bar: a bar's carriage
returns turn a Slurm output file into one enormous line.
"""

from __future__ import annotations

import sys
import time

from allasrun.log import log
from allasrun.staging.transfer import MIB, Transfer


class Progress:
    """A bar on a terminal, else a log line every `interval` seconds."""

    def __init__(self, label: str, files: int, size: int, interval: float) -> None:
        self.label = label
        self.files = files
        self.size = size
        self.interval = interval
        self.count = 0
        self.moved = 0
        self.started = time.monotonic()
        self.shown = self.started
        self.tty = sys.stderr.isatty()

    def advance(self, transfer: Transfer) -> None:
        """Account for one finished transfer and show progress when it is due."""
        self.count += 1
        self.moved += transfer.bytes
        now = time.monotonic()
        if self.tty:
            sys.stderr.write(f"\r{self._line(now)}\033[K")
            sys.stderr.flush()
        elif now - self.shown >= self.interval:
            log.info("%s", self._line(now))
            self.shown = now

    def close(self) -> None:
        """End the bar's line on a terminal."""
        if self.tty and self.count:
            sys.stderr.write("\n")

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        width = 20
        filled = width * self.moved // self.size if self.size else width * self.count // max(self.files, 1)
        bar = "#" * filled + "." * (width - filled)
        return (
            f"{self.label} [{bar}] {self.count}/{self.files} file(s) "
            f"{self.moved / MIB:.1f}/{self.size / MIB:.1f} MiB {self.moved / MIB / elapsed:.1f} MiB/s"
        )

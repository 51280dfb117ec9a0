"""Saying what happened: one record per transfer, progress while it runs, a JSON report after.

Batch logs get a one-line summary every N seconds rather than a bar: a bar's carriage
returns turn a Slurm output file into one enormous line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from allasrun.atomicfile import write_atomic
from allasrun.log import log

MIB = 1024 * 1024
# Outcomes of one transfer; only FAILED, REFUSED and MISSING make a stage fail.
DONE, SKIPPED, FAILED, REFUSED, MISSING, CANCELLED = (
    "done",
    "skipped",
    "failed",
    "refused",
    "missing",
    "cancelled",
)
PROBLEMS = (FAILED, REFUSED, MISSING)


@dataclass
class Transfer:
    """One file or object moved (or not), for the JSON report and the summary."""

    direction: str
    where: str
    source: str
    destination: str
    bytes: int = 0
    md5: str = ""
    seconds: float = 0.0
    status: str = FAILED
    error: str = ""


def problems(transfers: Sequence[Transfer]) -> list[Transfer]:
    """The transfers that make a stage fail."""
    return [t for t in transfers if t.status in PROBLEMS]


def summarise(label: str, transfers: Sequence[Transfer], seconds: float) -> str:
    """`stage-in: 502 file(s), 12.3 MiB in 8.1 s (500 done, 2 skipped, 0 failed)`."""
    moved = sum(t.bytes for t in transfers if t.status == DONE)
    counts = {status: sum(1 for t in transfers if t.status == status) for status in (DONE, SKIPPED)}
    bad = len(problems(transfers))
    rate = f", {moved / MIB / seconds:.1f} MiB/s" if seconds > 0 and moved else ""
    return (
        f"{label}: {len(transfers)} file(s), {moved / MIB:.1f} MiB moved in {seconds:.1f} s{rate} "
        f"({counts[DONE]} done, {counts[SKIPPED]} skipped as identical, {bad} failed)"
    )


def write(path: Path, status: Optional[int], command: Optional[int], transfers: Sequence[Transfer]) -> None:
    """The JSON report: allasrun's and the command's exit status, every transfer."""
    document = {
        "exit_status": status,
        "command_status": command,
        "transfers": [asdict(t) for t in transfers],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(document, indent=1) + "\n")


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

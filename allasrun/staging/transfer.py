"""One record per file or object moved (or not), and the words for counting them.

Also what the stager's two sides (`fetch`, `put`) share with it: the exception a stop raises,
and the retry they are handed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

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


@dataclass(slots=True)
class Transfer:
    """One file or object moved (or not), for the JSON report and the summary.

    `verified` says what the content was checked by, after its size: "md5" (the whole MD5
    against the ETag), "md5 per segment" (each segment of a large object against its listed
    MD5), "md5 per part" (an S3 multipart ETag reproduced), "size" (the server vouched for
    nothing more); "" when nothing was verified (failed, missing, cancelled). A skipped transfer
    says what proved the two copies identical.
    """

    direction: str
    where: str
    source: str
    destination: str
    bytes: int = 0
    md5: str = ""
    seconds: float = 0.0
    status: str = FAILED
    error: str = ""
    verified: str = ""
    unpacked: list[str] = field(default_factory=list)  # `--unpack`: the archive's members, in order


def not_moved(direction: str, where: str, source: str, destination: str, status: str, error: str) -> Transfer:
    """The record of a transfer that did not happen, and why."""
    return Transfer(direction, where, source, destination, status=status, error=error)


class Interrupted(Exception):
    """A stop signal ended this transfer: it is CANCELLED, not FAILED."""


class Retry(Protocol):
    """How the stager's two sides retry: its `_retry`, handed to them."""

    def __call__(self, attempt: Callable[[], T]) -> T:
        """Call `attempt` until it succeeds or the tries run out; the last error is raised."""


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

"""A Keystone token with what the clients need beside it: its expiry and the Swift URL."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional


@dataclass(frozen=True)
class Token:
    """One project-scoped token. Times are POSIX seconds so arithmetic needs no time zones.

    The times are Keystone's, stamped by its clock. `clock_offset` is how far this node's clock
    ran ahead of Keystone's (negative: behind) when the token reached it, if that is known: it
    travels with the token so whoever reads the token (the keeper, the token service) reads its
    times by the same clock, never a newer token with an older token's offset. It is this
    node's knowledge, not the token's: it is not compared and not serialised.
    """

    value: str
    issued_at: float
    expires_at: float
    storage_url: str
    project_id: str
    user_id: str
    renewable: bool = True
    clock_offset: Optional[float] = field(default=None, compare=False)

    @property
    def lifetime(self) -> float:
        """How long Keystone granted it for: 8 hours on Allas, 90 s on the test stack."""
        return max(self.expires_at - self.issued_at, 0.0)

    def remaining(self, now: float) -> float:
        """Seconds left before Keystone refuses it."""
        return self.expires_at - now

    def keystone_now(self, local_now: float) -> float:
        """`local_now` by Keystone's clock, as far as `clock_offset` tells it (else as it is)."""
        return local_now - (self.clock_offset or 0.0)

    def expiry_text(self) -> str:
        """The expiry in UTC, ISO 8601, for logs and `allasrun status`."""
        return utc_text(self.expires_at)

    def to_json(self) -> str:
        """Serialise for the token cache (without `clock_offset`: the cache entry holds the writer's)."""
        data = asdict(self)
        del data["clock_offset"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Token:
        """Read back what `to_json` wrote; a ValueError or TypeError means a bad cache file."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: object) -> Token:
        """A token from a parsed JSON object; ValueError or TypeError if it is none."""
        if not isinstance(data, dict):
            raise ValueError("token cache is not a JSON object")
        data.pop("clock_offset", None)  # another node's, if anyone wrote it
        return cls(**data)


def utc_text(timestamp: float) -> str:
    """POSIX seconds as `2026-11-29T04:40:00Z`."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`: short enough for a log line."""
    whole = int(max(seconds, 0))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"

"""A Keystone token with what the clients need beside it: its expiry and the Swift URL."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class Token:
    """One project-scoped token. Times are POSIX seconds so arithmetic needs no time zones."""

    value: str
    issued_at: float
    expires_at: float
    storage_url: str
    project_id: str
    user_id: str
    renewable: bool = True

    @property
    def lifetime(self) -> float:
        """How long Keystone granted it for: 8 hours on Allas, 90 s on the test stack."""
        return max(self.expires_at - self.issued_at, 0.0)

    def remaining(self, now: float) -> float:
        """Seconds left before Keystone refuses it."""
        return self.expires_at - now

    def expiry_text(self) -> str:
        """The expiry in UTC, ISO 8601, for logs and `allasrun status`."""
        return utc_text(self.expires_at)

    def to_json(self) -> str:
        """Serialise for the token cache."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Token:
        """Read back what `to_json` wrote; a ValueError or TypeError means a bad cache file."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("token cache is not a JSON object")
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

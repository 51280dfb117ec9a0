"""When to renew a token, and how to back off when renewal fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from allasrun.auth.token import Token


@dataclass(frozen=True)
class Schedule:
    """When to renew, and how to back off.

    By default a token is renewed at half its life (HTCondor's choice): an 8-hour Allas
    token every ~4 h, a 90-second test token every ~45 s, and a client that reads the files
    at any moment gets at least that much time. Jitter spreads many keepers apart.
    """

    margin: Optional[float] = None
    jitter: float = 0.1
    retry_first: float = 1.0
    retry_max: float = 60.0
    retry_share: float = 0.05  # of a token's life: the most time between two retries
    retry_jitter: float = 0.5  # a retry comes after this share of its delay, or up to all of it
    min_share: float = 0.1  # of a token's life: the least time between two renewals

    def margin_for(self, token: Token) -> float:
        """Seconds that must be left on a token; never more than 3/4 of its life."""
        half = token.lifetime / 2
        if self.margin is None:
            return half
        return min(self.margin, token.lifetime * 0.75)

    def fresh_enough(self, token: Token, now: float) -> bool:
        """Whether a cached token may be used as it is rather than renewed."""
        return token.remaining(now) > self.margin_for(token)

    def renew_at(self, token: Token, spread: float) -> float:
        """The moment to renew, `spread` in [0, 1) choosing a point within the jitter."""
        margin = self.margin_for(token)
        return token.expires_at - margin - margin * self.jitter * spread

    def min_interval(self, token: Token) -> float:
        """The least time between two successful renewals, whatever the local clock says.

        A tenth of the life Keystone granted (48 min for Allas, 9 s on the test stack): a
        renewal on schedule comes at least a quarter life minus the jitter after the last one, so
        this never delays it, but a clock ahead of Keystone by half a life or more, which sees
        every new token already due, renews ten times a life instead of in a loop.
        """
        return token.lifetime * self.min_share

    def delay(self, token: Token, now: float, spread: float, renewed_at: Optional[float]) -> float:
        """Seconds from `now` until `token` is to be renewed; `renewed_at` is the last renewal, if any."""
        due = self.renew_at(token, spread)
        if renewed_at is not None:
            due = max(due, renewed_at + self.min_interval(token))
        return max(due - now, 0.0)

    def retry_delay(self, attempt: int, token: Token, spread: float) -> float:
        """Jittered exponential backoff: 1, 2, 4 ... seconds, capped, `spread` in [0, 1).

        The cap is a minute (k5start retries every minute), or a twentieth of the token's life
        if that is less (4.5 s on the test stack), so the renewal follows Keystone's return
        within a small share of the life left. Jitter keeps the keepers of many jobs, all
        failing since the same outage, from returning to Keystone at the same instant.
        """
        cap = self.retry_cap(token)
        # The exponent is bounded: 2.0**1025 overflows, and a day-long outage counts that far.
        base = min(cap, self.retry_first * 2.0 ** min(attempt - 1, 64))
        return float(base * (1 - self.retry_jitter * spread))

    def retry_cap(self, token: Token) -> float:
        """The longest wait between two attempts to renew `token`."""
        return min(self.retry_max, max(self.retry_first, token.lifetime * self.retry_share))

    def clock_offset(self, token: Token, received_at: float) -> float:
        """How far the local clock runs ahead of Keystone's (negative: behind); 0 if none shows.

        `received_at` is when the token arrived, by the local clock. Keystone stamps
        `issued_at` by its own clock before it answers, so a token that seems issued after it
        arrived, or before by more than its renewal share, reveals the skew (give or take the
        answer's way back, a renewal that much late). Within that range the local clock is
        trusted: a token from the cache, issued earlier by another run, looks just like a
        small skew ahead, and that only renews early.
        """
        age = received_at - token.issued_at
        if age < 0 or age > token.lifetime - self.margin_for(token):
            return age
        return 0.0

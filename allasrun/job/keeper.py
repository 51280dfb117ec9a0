"""The keeper: a background thread that renews the run's token before it expires.

It sleeps until the schedule's renewal point, asks the `TokenSource` to renew (which writes
the client files through its listeners before handing the token out), and on failure retries
with jittered backoff for as long as the job runs, saying once that renewal fails and once
that it works again. Token times are Keystone's: the keeper reads them by Keystone's clock as
far as the last token shows it. Nothing it does can end the job.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional

from allasrun.auth import Schedule, Token, TokenSource, duration
from allasrun.errors import AllasrunError
from allasrun.log import log


class Keeper:
    """Renews `source`'s token on its schedule until stopped; a context manager."""

    def __init__(self, source: TokenSource, clock: Callable[[], float] = time.time) -> None:
        self._source = source
        self._schedule = source.schedule
        self._clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="allasrun-keeper", daemon=True)

    def start(self) -> None:
        """Start renewing in the background; a token that cannot be renewed is only watched."""
        token = self._source.token
        if not token.renewable:
            log.warning(
                "the token from OS_AUTH_TOKEN cannot be renewed: it expires at %s (in %s)",
                token.expiry_text(),
                duration(token.remaining(token.keystone_now(time.time()))),
            )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a renewal in flight finishes its file writes first."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Keeper:
        self.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()

    def _run(self) -> None:
        if not self._source.token.renewable:
            self._watch_expiry()
            return
        # Keystone stamps the token's times by its own clock; reading them by a node clock that
        # is off by more than half a life would renew in a loop, or only after the expiry.
        offset = self._offset(self._source.token)
        outage = _Outage(self._schedule)
        renewed_at: Optional[float] = None  # by Keystone's clock, as far as `offset` tells it
        while True:
            planned = self._source.token
            if outage.attempts == 0:
                delay = self._schedule.delay(planned, self._clock() - offset, random.random(), renewed_at)
            else:
                delay = self._schedule.retry_delay(outage.attempts, planned, random.random())
            if self._stopping.wait(delay):
                return
            if outage.attempts == 0 and self._source.token is not planned:
                renewed_at = self._clock() - offset
                continue  # a 401 renewed it meanwhile: schedule from the new token
            try:
                fresh = self._source.renew(planned)
            except Exception as error:  # a bug must not end the job either: it is retried alike
                outage.failed(error, planned, self._clock() - offset)
                continue
            offset = self._offset(fresh)
            renewed_at = self._clock() - offset
            outage.ended(renewed_at)

    def _offset(self, token: Token) -> float:
        """The offset the source learnt with `token` (from Keystone, its answer, or the cache entry).

        Only when it learnt none (a token of another host used while Keystone could not be asked)
        the token's age has to tell, and a cached token's age may hide a skew.
        """
        if token.clock_offset is not None:
            return token.clock_offset
        return self._schedule.clock_offset(token, self._clock())

    def _watch_expiry(self) -> None:
        """Say when a token that cannot be renewed expires: from then on every client fails."""
        token = self._source.token
        if not self._stopping.wait(max(token.remaining(token.keystone_now(self._clock())), 0.0)):
            log.error(
                "the token from OS_AUTH_TOKEN expired at %s and cannot be renewed: the command's "
                "clients can no longer reach Allas",
                token.expiry_text(),
            )


class _Outage:
    """Failed renewals since the last success: logged when they begin and when they end.

    Keystone down for an hour means a hundred attempts; each is a debug line, and the user
    sees two warnings (and an error if the token runs out meanwhile), as k5start's log does.
    """

    def __init__(self, schedule: Schedule) -> None:
        self._schedule = schedule
        self.attempts = 0
        self._began = 0.0
        self._expired = False

    def failed(self, error: Exception, token: Token, now: float) -> None:
        if not isinstance(error, (AllasrunError, OSError)):
            log.debug("traceback of the renewal failure below", exc_info=True)
            error = AllasrunError(f"internal error {type(error).__name__}: {error}")
        self.attempts += 1
        log.debug("renewal attempt %d failed: %s", self.attempts, error)
        left = token.remaining(now)
        if self.attempts == 1:
            self._began = now
            log.warning(
                "cannot renew the token: %s; retrying at most %s apart; the current token expires in %s",
                error,
                duration(self._schedule.retry_cap(token)),
                duration(left),
            )
        if left <= 0 and not self._expired:
            self._expired = True
            log.error(
                "the token expired at %s and still cannot be renewed: the command's clients fail "
                "until Keystone answers again; still retrying",
                token.expiry_text(),
            )

    def ended(self, now: float) -> None:
        if self.attempts:
            log.warning(
                "renewed the token again after %d failed attempt(s) over %s",
                self.attempts,
                duration(now - self._began),
            )
        self.attempts, self._expired = 0, False

"""The keeper: a background thread that renews the run's token before it expires.

It sleeps until the schedule's renewal point, asks the `TokenSource` to renew (which writes
the client files through its listeners before handing the token out), and on failure retries
with backoff for as long as the job runs. Nothing it does can end the job.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional

from allasrun.auth import TokenSource, duration
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
                duration(token.remaining(time.time())),
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
        attempt = 0
        renewed_at: Optional[float] = None  # by the local clock, which may run ahead of Keystone's
        while True:
            planned = self._source.token
            if attempt == 0:
                delay = self._schedule.delay(planned, self._clock(), random.random(), renewed_at)
            else:
                delay = self._schedule.retry_delay(attempt)
            if self._stopping.wait(delay):
                return
            if attempt == 0 and self._source.token is not planned:
                renewed_at = self._clock()
                continue  # a 401 renewed it meanwhile: schedule from the new token
            try:
                self._source.renew(planned)
            except (AllasrunError, OSError) as error:
                attempt += 1
                self._report_failure(attempt, error)
                continue
            except Exception as error:  # a bug must not end the job: log it and retry
                attempt += 1
                log.exception("renewal attempt %d failed unexpectedly: %s", attempt, error)
                continue
            attempt, renewed_at = 0, self._clock()

    def _watch_expiry(self) -> None:
        """Say when a token that cannot be renewed expires: from then on every client fails."""
        token = self._source.token
        if not self._stopping.wait(max(token.remaining(self._clock()), 0.0)):
            log.error(
                "the token from OS_AUTH_TOKEN expired at %s and cannot be renewed: the command's "
                "clients can no longer reach Allas",
                token.expiry_text(),
            )

    def _report_failure(self, attempt: int, error: Exception) -> None:
        left = self._source.token.remaining(self._clock())
        state = f"current token expires in {duration(left)}" if left > 0 else "current token has EXPIRED"
        log.warning(
            "renewal attempt %d failed: %s; %s; retrying in %s",
            attempt,
            error,
            state,
            duration(self._schedule.retry_delay(attempt)),
        )

"""The keeper: turns credentials into tokens, and keeps the client files holding a live one.

A background thread sleeps until the renewal point, renews, rewrites the files, and on
failure retries with backoff for as long as the job runs. Nothing it does can end the job.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Optional

from allasrun.auth.cache import TokenCache
from allasrun.auth.identity import ExistingToken, Secret, Target
from allasrun.auth.schedule import Schedule
from allasrun.auth.token import Token
from allasrun.errors import AllasrunError
from allasrun.job.clientfiles import ClientFiles

log = logging.getLogger("allasrun")


def obtain(
    target: Target,
    secret: Secret,
    cache: Optional[TokenCache],
    schedule: Schedule,
    replacing: Optional[Token] = None,
) -> Token:
    """A token with enough life left: from the cache if another run left one, else Keystone.

    When renewing, `replacing` is the token in hand: a cached token only counts if it
    outlives that one, i.e. another process on this node renewed first.
    """
    if cache is None or isinstance(secret, ExistingToken):
        return _authenticate(target, secret)
    with cache.exclusive():
        cached = cache.load()
        newer = replacing is None or (cached is not None and cached.expires_at > replacing.expires_at)
        if cached is not None and newer and schedule.fresh_enough(cached, time.time()):
            log.debug("using the cached token (expires %s)", cached.expiry_text())
            return cached
        token = _authenticate(target, secret)
        cache.store(token)
        return token


def _authenticate(target: Target, secret: Secret) -> Token:
    # Imported here: keystoneauth costs ~65 ms of imports, which a run served by the cache
    # never pays.
    from allasrun.auth import keystone

    return keystone.authenticate(target, secret)


class Keeper:
    """Owns the current token and the renewal thread."""

    def __init__(
        self,
        token: Token,
        renew: Callable[[Token], Token],
        files: ClientFiles,
        schedule: Schedule,
    ) -> None:
        self.token = token
        self.renewals = 0
        self._renew = renew
        self._files = files
        self._schedule = schedule
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="allasrun-keeper", daemon=True)

    def start(self) -> None:
        """Start renewing in the background; a token that cannot be renewed is only watched."""
        if not self.token.renewable:
            log.warning(
                "the token from OS_AUTH_TOKEN cannot be renewed: it expires at %s (in %s)",
                self.token.expiry_text(),
                _duration(self.token.remaining(time.time())),
            )
            return
        self._thread.start()

    def current(self) -> Token:
        """The token to use now."""
        return self.token

    def refresh(self, stale: Token) -> Token:
        """Renew at once because Swift refused `stale`; reuse a renewal made meanwhile."""
        with self._lock:
            if self.token.value == stale.value:
                self._install(self._renew(self.token))
            return self.token

    def stop(self) -> None:
        """Stop the thread; a renewal in flight finishes its file writes first."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        attempt = 0
        while True:
            planned = self.token
            if attempt == 0:
                delay = self._schedule.renew_at(planned, random.random()) - time.time()
            else:
                delay = self._schedule.retry_delay(attempt)
            if self._stopping.wait(max(delay, 0.0)):
                return
            if attempt == 0 and self.token is not planned:
                continue  # a 401 made `refresh` renew meanwhile: schedule from the new token
            try:
                with self._lock:
                    self._install(self._renew(self.token))
            except (AllasrunError, OSError) as error:
                attempt += 1
                self._report_failure(attempt, error)
                continue
            except Exception as error:  # a bug must not end the job: log it and retry
                attempt += 1
                log.exception("renewal attempt %d failed unexpectedly: %s", attempt, error)
                continue
            attempt = 0

    def _install(self, token: Token) -> None:
        """Write the files first, then hand the token out: a client never sees it before them."""
        self._files.write(token)
        self.token = token
        self.renewals += 1
        log.info(
            "renewed token (%d); expires %s (in %s)",
            self.renewals,
            token.expiry_text(),
            _duration(token.remaining(time.time())),
        )

    def _report_failure(self, attempt: int, error: Exception) -> None:
        left = self.token.remaining(time.time())
        state = f"current token expires in {_duration(left)}" if left > 0 else "current token has EXPIRED"
        log.warning(
            "renewal attempt %d failed: %s; %s; retrying in %s",
            attempt,
            error,
            state,
            _duration(self._schedule.retry_delay(attempt)),
        )


def _duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`: short enough for a log line."""
    whole = int(max(seconds, 0))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"

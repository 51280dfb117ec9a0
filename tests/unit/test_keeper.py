"""The keeper thread against a fake Keystone: renews on schedule, backs off, recovers, stops.

Tokens here live a second or less, so every test finishes in well under a second.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Callable, Optional

import pytest

from allasrun.auth import Schedule, Token, TokenSource
from allasrun.job.keeper import Keeper
from tests.unit.keystone_fake import STORAGE_URL, FakeKeystone, password_identity, running, unique

QUICK = Schedule(jitter=0, retry_first=0.05, retry_max=0.2)


@pytest.fixture
def keystone() -> Iterator[FakeKeystone]:
    with running(lifetime=1.0) as fake:
        yield fake


def _source(lifetime: float, schedule: Schedule = QUICK) -> TokenSource:
    """A source holding a token issued just now, as if the run had just started."""
    now = time.time()
    token = Token(unique("tok"), now, now + lifetime, STORAGE_URL, "p", "u")
    return TokenSource(password_identity(), token, cache=None, schedule=schedule)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_short_lived_tokens_are_renewed_in_the_background_on_schedule(keystone: FakeKeystone) -> None:
    source = _source(0.4)
    seen: list[tuple[Token, float]] = []
    source.on_renew(lambda fresh: seen.append((fresh, time.time())))
    first = source.token
    with Keeper(source):
        _wait_for(lambda: source.renewals >= 2)
    assert keystone.logins == source.renewals == len(seen)
    assert seen[0][0] != first
    assert source.token == seen[-1][0]
    # the first at half the 0.4 s life, the next at half the new token's 1 s life
    assert seen[0][1] >= QUICK.renew_at(first, 0.0)
    assert seen[1][1] >= QUICK.renew_at(seen[0][0], 0.0)


class _RecordingEvent(threading.Event):
    """The keeper's stop event, noting every wait it is asked for: the backoff, exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: Optional[float] = None) -> bool:
        self.waits.append(timeout if timeout is not None else -1.0)
        return super().wait(timeout)


def test_failing_keystone_means_retries_with_backoff_then_recovery(
    keystone: FakeKeystone, caplog: pytest.LogCaptureFixture
) -> None:
    source = _source(0.1, Schedule(jitter=0, retry_first=0.05, retry_max=0.2, retry_share=2.0))
    first = source.token
    keystone.fail("auth", 503)
    keeper = Keeper(source)
    keeper._stopping = waits = _RecordingEvent()
    with caplog.at_level(logging.DEBUG, logger="allasrun"), keeper:
        _wait_for(lambda: keystone.logins >= 6)
        assert source.token == first
        assert source.renewals == 0
        keystone.heal()
        _wait_for(lambda: source.renewals == 1)
    # the first wait is for the renewal point; then retry_delay: 0.05, 0.1, 0.2, capped at 0.2,
    # each jittered down by up to half
    for wait, base in zip(waits.waits[1:6], [0.05, 0.1, 0.2, 0.2, 0.2]):
        assert base / 2 <= wait <= base
    assert waits.waits[1:6] != [0.05, 0.1, 0.2, 0.2, 0.2]
    assert source.token != first
    failed = keystone.logins - 1
    assert _logged(caplog, logging.DEBUG, "renewal attempt") == failed  # each attempt, in debug
    assert _logged(caplog, logging.WARNING, "cannot renew the token") == 1  # the outage, once
    assert _logged(caplog, logging.WARNING, f"renewed the token again after {failed} failed") == 1


def _logged(caplog: pytest.LogCaptureFixture, level: int, needle: str) -> int:
    return sum(1 for record in caplog.records if record.levelno == level and needle in record.getMessage())


def test_an_outage_that_outlasts_the_token_says_so_once(
    keystone: FakeKeystone, caplog: pytest.LogCaptureFixture
) -> None:
    source = _source(0.1)
    keystone.fail("auth", 503)
    with caplog.at_level(logging.DEBUG, logger="allasrun"), Keeper(source):
        _wait_for(lambda: keystone.logins >= 8)  # 0.05 s after the renewal point, then <= 0.05 s apart
    assert _logged(caplog, logging.ERROR, "the token expired at") == 1


@pytest.mark.parametrize("failure", [OSError(errno.EDQUOT, "Disk quota exceeded"), RuntimeError("bug")])
def test_a_listener_that_fails_does_not_throw_the_new_token_away(
    keystone: FakeKeystone, failure: Exception
) -> None:
    source = _source(0.1)
    calls: list[Token] = []

    def flaky(fresh: Token) -> None:
        calls.append(fresh)
        if len(calls) == 1:
            raise failure

    source.on_renew(flaky)
    with Keeper(source):
        _wait_for(lambda: source.renewals == 1)
        assert source.token == calls[0]  # installed although its files could not be written
    assert keystone.logins == source.renewals


@pytest.mark.parametrize("skew", [100.0, -100.0], ids=["ahead", "behind"])
def test_a_skewed_clock_still_renews_at_half_life(
    keystone: FakeKeystone, skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 s off, every 1 s token looks long expired, or not due for 100 s: neither shows."""
    source = _source(1.0)
    monkeypatch.setattr("allasrun.auth.source.time", SimpleNamespace(time=lambda: time.time() + skew))
    keeper = Keeper(source, clock=lambda: time.time() + skew)
    keeper._stopping = waits = _RecordingEvent()
    with keeper:
        _wait_for(lambda: source.renewals >= 3)
    assert all(0.4 <= wait <= 0.5 for wait in waits.waits[:3]), waits.waits  # half the 1 s life


@pytest.mark.parametrize(
    ("lifetime", "schedule", "logins"),
    [(90.0, QUICK, 0), (0.1, Schedule(jitter=0, retry_first=60.0), 1)],
    ids=["waiting-to-renew", "waiting-to-retry"],
)
def test_stop_returns_promptly(
    keystone: FakeKeystone, lifetime: float, schedule: Schedule, logins: int
) -> None:
    keystone.fail("auth", 503)
    keeper = Keeper(_source(lifetime, schedule))
    keeper.start()
    time.sleep(0.15)
    began = time.monotonic()
    keeper.stop()
    assert time.monotonic() - began < 1.0  # not the 45 s or 60 s the keeper was waiting for
    assert keystone.logins == logins


def test_a_renewal_made_by_another_thread_is_not_repeated(keystone: FakeKeystone) -> None:
    source = _source(0.3)
    keystone.lifetime = 90.0
    with Keeper(source):
        source.renew(source.token)  # a client got a 401: renewed at once, before the keeper's turn
        time.sleep(0.4)  # past the old token's renewal point (0.15 s)
    assert keystone.logins == 1
    assert source.renewals == 1


def test_a_cached_token_is_scheduled_by_the_offset_the_source_knows(keystone: FakeKeystone) -> None:
    """0.4 s behind, a 1 s token issued 0.45 s ago looks 0.05 s old: its age hides the skew.

    The source knows the offset (stored with the cache entry, or from Keystone's answer): the
    renewal is due at once, not 0.4 s late, a token's whole margin on a 90 s token 40 s behind.
    """
    skew = -0.4
    now = time.time()
    token = Token(unique("tok"), now - 0.45, now + 0.55, STORAGE_URL, "p", "u", clock_offset=skew)
    source = TokenSource(password_identity(), token, cache=None, schedule=QUICK)
    keeper = Keeper(source, clock=lambda: time.time() + skew)
    keeper._stopping = waits = _RecordingEvent()
    with keeper:
        _wait_for(lambda: source.renewals >= 1)
    assert waits.waits[0] <= 0.1, waits.waits  # due 0.05 s after the start, by Keystone's clock

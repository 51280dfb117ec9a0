"""The token cache shared by nodes whose clocks differ (issue 11, item 8).

The node here runs 10 minutes behind Keystone: Keystone's clock is `time.time() + SKEW`. A
token that Keystone holds expired still has ~10 minutes left by this node's clock.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Optional

import pytest

from allasrun.auth import Token, TokenSource
from allasrun.auth.cache import Entry, TokenCache
from tests.unit.keystone_fake import (
    AUTH_URL,
    REFUSED,
    STORAGE_URL,
    FakeKeystone,
    capture_log,
    env_for,
    running,
)

SKEW = 600.0  # Keystone's clock minus this node's
LIFE = 90.0


@pytest.fixture
def keystone() -> Iterator[FakeKeystone]:
    with running(lifetime=LIFE) as fake:
        yield fake


def _keystone_now() -> float:
    return time.time() + SKEW


def _token(left: float) -> Token:
    """A 90 s token with `left` seconds to go by Keystone's clock (`left` + 600 by ours)."""
    expires = _keystone_now() + left
    return Token("tok-cached", expires - LIFE, expires, STORAGE_URL, "p-2001234", "u-alice")


def _cache(tmp_path: Path, keystone: FakeKeystone) -> TokenCache:
    """The cache entry of the test's identity, made by one run (one login, forgotten here)."""
    cache = _open(tmp_path).cache
    assert cache is not None
    keystone.mocker.reset_mock()
    return cache


def _open(tmp_path: Path) -> TokenSource:
    return TokenSource.open(env_for(tmp_path, OS_PASSWORD="pw"))


def _write(cache: TokenCache, token: Token, host: Optional[str], offset: Optional[float]) -> None:
    cache.path.write_text(Entry(token, host, offset).to_json())


def _answer_with_date(keystone: FakeKeystone, date: Optional[float]) -> None:
    """Keystone accepts any token it is asked about, with its clock in `Date` (or none)."""
    headers = {"Date": formatdate(date, usegmt=True)} if date is not None else {}
    keystone.mocker.get(AUTH_URL + "/auth/tokens", status_code=200, headers=headers, json={})


def _validations(keystone: FakeKeystone) -> int:
    return len(keystone.requests("GET"))


def test_an_entry_names_its_host_and_offset_and_reads_back(tmp_path: Path, keystone: FakeKeystone) -> None:
    cache = _cache(tmp_path, keystone)
    cache.store(Token("tok-mine", 1.0, 91.0, STORAGE_URL, "p", "u", clock_offset=-600.0))
    entry = cache.load()
    assert entry is not None and entry.written_here
    assert (entry.host, entry.clock_offset, entry.token.value) == (socket.gethostname(), -600.0, "tok-mine")


def test_an_entry_of_an_older_allasrun_is_another_hosts_and_checked_with_keystone(
    tmp_path: Path, keystone: FakeKeystone
) -> None:
    """A bare token, as the cache held it before: Keystone is asked, and refuses the expired one."""
    cache = _cache(tmp_path, keystone)
    cache.path.write_text(_token(-10).to_json())
    entry = cache.load()
    assert entry is not None and (entry.host, entry.clock_offset) == (None, None)
    keystone.fail("validate", 404)
    assert _open(tmp_path).token.value != "tok-cached"
    assert (_validations(keystone), keystone.logins) == (1, 1)


@pytest.mark.parametrize("writer_offset", [-SKEW, None], ids=["stored-offset", "no-offset"])
def test_an_entry_of_this_host_is_judged_by_its_offset_without_asking_keystone(
    tmp_path: Path, keystone: FakeKeystone, writer_offset: Optional[float]
) -> None:
    """Expired by Keystone's clock, fresh by ours: the stored offset tells, and nothing is asked.

    Without a stored offset (the writer saw no skew), our clock decides, as before.
    """
    cache = _cache(tmp_path, keystone)
    _write(cache, _token(-10), socket.gethostname(), writer_offset)
    source = _open(tmp_path)
    assert _validations(keystone) == 0
    if writer_offset is None:
        assert (source.token.value, keystone.logins) == ("tok-cached", 0)
        return
    assert (source.token.value != "tok-cached", keystone.logins) == (True, 1)
    _write(cache, _token(80), socket.gethostname(), writer_offset)
    source = _open(tmp_path)
    assert (source.token.value, source.clock_offset, keystone.logins) == ("tok-cached", -SKEW, 1)


def test_a_stored_offset_never_makes_a_token_look_younger_than_our_clock_does(
    tmp_path: Path, keystone: FakeKeystone
) -> None:
    """Written while 10 minutes ahead, read after the clock was set right: a login, not a 401."""
    cache = _cache(tmp_path, keystone)
    expires = time.time() - 10  # expired by the clock now right
    _write(
        cache, Token("tok-cached", expires - LIFE, expires, STORAGE_URL, "p", "u"), socket.gethostname(), SKEW
    )
    assert _open(tmp_path).token.value != "tok-cached"
    assert keystone.logins == 1


def test_another_hosts_token_that_keystone_refuses_is_replaced(
    tmp_path: Path, keystone: FakeKeystone
) -> None:
    cache = _cache(tmp_path, keystone)
    _write(cache, _token(-10), "node-a", 0.0)
    keystone.fail("validate", 404)
    assert _open(tmp_path).token.value != "tok-cached"
    assert (_validations(keystone), keystone.logins) == (1, 1)


@pytest.mark.parametrize(("left", "used"), [(80.0, True), (30.0, False)], ids=["fresh", "too-old"])
def test_another_hosts_token_is_judged_by_keystones_clock_which_its_answer_tells(
    tmp_path: Path, keystone: FakeKeystone, left: float, used: bool
) -> None:
    """Keystone accepts both; its Date says whether the token has more than half its life left."""
    cache = _cache(tmp_path, keystone)
    _write(cache, _token(left), "node-a", 0.0)
    _answer_with_date(keystone, _keystone_now())
    source = _open(tmp_path)
    assert (source.token.value == "tok-cached", keystone.logins) == (used, 0 if used else 1)
    assert _validations(keystone) == 1
    assert source.clock_offset is not None
    if used:
        assert -SKEW - 2 <= source.clock_offset <= -SKEW + 1  # Date has whole seconds
    request = keystone.requests("GET")[0]
    assert request.headers["X-Auth-Token"] == request.headers["X-Subject-Token"] == "tok-cached"


def test_another_hosts_token_accepted_without_keystones_time_is_used_by_our_clock(
    tmp_path: Path, keystone: FakeKeystone
) -> None:
    """No Date header (Keystone under uwsgi alone): a login would not tell Keystone's time either.

    Logging in anyway cost every node of a multi-node step a login of its own (seen in CI).
    """
    cache = _cache(tmp_path, keystone)
    _write(cache, _token(80), "node-a", 0.0)
    _answer_with_date(keystone, None)
    assert _open(tmp_path).token.value == "tok-cached"
    assert (_validations(keystone), keystone.logins) == (1, 0)


def test_another_hosts_token_is_used_by_our_clock_when_keystone_cannot_be_asked(
    tmp_path: Path, keystone: FakeKeystone, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(tmp_path, keystone)
    _write(cache, _token(80), "node-a", 0.0)
    keystone.fail("validate", REFUSED)
    logged = capture_log(caplog, monkeypatch)
    logged.set_level(logging.DEBUG, logger="allasrun")
    source = _open(tmp_path)
    assert (source.token.value, source.clock_offset, keystone.logins) == ("tok-cached", None, 0)
    assert "cannot check the token cached by node-a with Keystone" in logged.text


def test_another_hosts_token_stale_by_our_own_clock_is_not_even_checked(
    tmp_path: Path, keystone: FakeKeystone
) -> None:
    cache = _cache(tmp_path, keystone)
    _write(cache, _token(-SKEW - 10), "node-a", 0.0)
    assert _open(tmp_path).token.value != "tok-cached"
    assert (_validations(keystone), keystone.logins) == (0, 1)


def test_a_damaged_entry_is_no_entry(tmp_path: Path, keystone: FakeKeystone) -> None:
    cache = _cache(tmp_path, keystone)
    for text in ("[]", json.dumps({"token": {}, "host": 1, "clock_offset": None}), "{"):
        cache.path.write_text(text)
        assert cache.load() is None

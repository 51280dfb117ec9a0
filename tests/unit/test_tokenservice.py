"""The token service on real loopback sockets: what it answers, whom it refuses, what it survives."""

from __future__ import annotations

import errno
import logging
import re
import socket
import time
from collections.abc import Iterator
from typing import Optional

import pytest
from swiftclient.client import ClientException, get_auth_1_0

from allasrun.auth.token import Token
from allasrun.job import tokenservice
from allasrun.job.tokenservice import TokenService
from tests.unit.keystone_fake import capture_log

NOW = time.time()
TOKEN = Token("tok-current", NOW, NOW + 3600, "http://swift/v1/AUTH_p", "p", "u")


class Holder:
    """Stands in for the TokenSource: the service reads `token` at every request."""

    def __init__(self, token: Token) -> None:
        self.token = token


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    return capture_log(caplog, monkeypatch)


@pytest.fixture
def holder() -> Holder:
    return Holder(TOKEN)


@pytest.fixture
def service(holder: Holder) -> Iterator[TokenService]:
    opened = TokenService.open(lambda: holder.token)
    assert opened is not None
    with opened:
        yield opened


def _raw(service: TokenService, request: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read the whole answer (the service closes after one)."""
    port = int(service.access.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _get(service: TokenService, user: Optional[str], key: Optional[str]) -> bytes:
    given = (("X-Auth-User", user), ("X-Auth-Key", key))
    headers = "".join(f"{name}: {value}\r\n" for name, value in given if value is not None)
    return _raw(service, f"GET /auth/v1.0 HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_swiftclients_v1_auth_gets_the_current_token_and_the_real_storage_url(
    service: TokenService, holder: Holder
) -> None:
    access = service.access
    assert access.url.startswith("http://127.0.0.1:")
    assert get_auth_1_0(access.url, access.user, access.key) == (TOKEN.storage_url, "tok-current")
    holder.token = Token("tok-renewed", NOW, NOW + 7200, TOKEN.storage_url, "p", "u")  # the keeper renewed
    assert get_auth_1_0(access.url, access.user, access.key)[1] == "tok-renewed"
    assert service.tally.answered == 2


@pytest.mark.parametrize(
    ("user", "key"),
    [
        (None, None),
        ("allasrun", None),
        (None, "KEY"),
        ("allasrun", "wrong"),
        ("someone", "KEY"),
        ("allasrun", ""),
    ],
)
def test_without_the_runs_user_and_key_a_request_gets_401_and_nothing_else(
    service: TokenService, user: Optional[str], key: Optional[str]
) -> None:
    answer = _get(service, user, service.access.key if key == "KEY" else key)
    assert _status(answer) == 401
    assert b"tok-current" not in answer and b"AUTH_p" not in answer
    with pytest.raises(ClientException) as raised:
        get_auth_1_0(service.access.url, "allasrun", "wrong")
    assert raised.value.http_status == 401


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v1/AUTH_p HTTP/1.1\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"POST /auth/v1.0 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"HELLO\r\n\r\n", 400),
        (b"GET /auth/v1.0 SPDY/3\r\n\r\n", 400),
        (b"GET /auth/v1.0 HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"\xff\xfe\r\n\r\n", 400),
        (b"GET /auth/v1.0 HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ],
)
def test_anything_but_a_v1_auth_get_is_answered_with_a_status_only(
    service: TokenService, request_bytes: bytes, status: int
) -> None:
    answer = _raw(service, request_bytes)
    assert _status(answer) == status
    assert b"tok-current" not in answer


def test_refusals_are_logged_once_per_kind_and_never_show_the_key(
    service: TokenService, logged: pytest.LogCaptureFixture
) -> None:
    for _ in range(50):
        _get(service, "allasrun", "wrong")
        _raw(service, b"junk\r\n\r\n")
    assert _status(_get(service, "allasrun", service.access.key)) == 200
    warnings = [record.getMessage() for record in logged.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert service.tally.refused == {401: 50, 400: 50}
    service.stop()
    text = "\n".join(record.getMessage() for record in logged.records)
    assert service.access.key not in logged.text and "tok-current" not in logged.text
    assert "1 answer(s), 100 refusal(s)" in text


def test_silent_clients_do_not_keep_others_out_and_are_dropped_at_their_deadline(
    holder: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenservice, "DEADLINE", 3.0)
    opened = TokenService.open(lambda: holder.token)
    assert opened is not None
    port = int(opened.access.url.split(":")[2].split("/")[0])
    with opened:
        # Every slot taken by a silent connection: the oldest makes room for a new client.
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(tokenservice.SLOTS)]
        try:
            started = time.monotonic()
            assert _status(_get(opened, "allasrun", opened.access.key)) == 200
            assert time.monotonic() - started < tokenservice.DEADLINE  # not served by a deadline
            silent[0].settimeout(10)
            assert silent[0].recv(10) == b""  # pushed out, without an answer
            silent[-1].settimeout(10)
            assert silent[-1].recv(10) == b""  # dropped at its deadline, without an answer
        finally:
            for sock in silent:
                sock.close()


def test_a_request_in_pieces_is_answered_once_it_is_whole(service: TokenService) -> None:
    port = int(service.access.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in (b"GET /auth/v1.0 HT", b"TP/1.1\r\nX-Auth-User: allasrun\r\n", b"X-Auth-Key: "):
            sock.sendall(piece)
            time.sleep(0.05)
        sock.sendall(service.access.key.encode() + b"\r\n\r\n")
        answer = sock.recv(65536)
    assert _status(answer) == 200 and b"X-Auth-Token: tok-current\r\n" in answer


def test_a_token_that_cannot_be_renewed_is_refused_with_why_once_it_expired(
    service: TokenService, holder: Holder
) -> None:
    holder.token = Token("tok-given", NOW - 100, NOW - 1, TOKEN.storage_url, "p", "u", renewable=False)
    answer = _get(service, "allasrun", service.access.key)
    assert _status(answer) == 503
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"OS_AUTH_TOKEN expired at ") and body.endswith(b", not renewable\n")
    assert len(body.rstrip()) <= 60 and b"tok-given" not in answer  # swift shows 60 characters


def test_a_service_that_cannot_listen_is_a_warning_and_no_service(
    monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture
) -> None:
    def no_port(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(socket, "create_server", no_port)
    assert TokenService.open(lambda: TOKEN) is None
    assert "cannot start the token service" in logged.text and "Address already in use" in logged.text


def test_a_defect_in_answering_costs_one_request_not_the_service(
    service: TokenService, monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture
) -> None:
    def broken(head: bytes) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patched:
        patched.setattr(tokenservice, "_parse", broken)
        assert _get(service, "allasrun", service.access.key) == b""  # dropped, not answered
    assert _status(_get(service, "allasrun", service.access.key)) == 200
    assert "token service: internal error RuntimeError: a bug; request dropped" in logged.text


@pytest.mark.parametrize("skew", [600.0, -600.0], ids=["ahead", "behind"])
def test_the_expiry_told_to_clients_is_counted_by_keystones_clock(
    service: TokenService, holder: Holder, skew: float
) -> None:
    """A node 10 minutes off: a token with 90 s left by Keystone's clock has 90 s left, not 90 -/+ 600."""
    now = time.time()
    keystone_now = now - skew
    holder.token = Token(
        "tok-skewed", keystone_now, keystone_now + 90, TOKEN.storage_url, "p", "u", clock_offset=skew
    )
    answer = _get(service, "allasrun", service.access.key)
    expires = re.search(rb"\r\nX-Auth-Token-Expires: (\d+)\r\n", answer)
    assert expires is not None, answer
    assert 85 <= int(expires.group(1)) <= 90

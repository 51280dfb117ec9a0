"""SwiftStore against both dialects of the Swift API, spoken by a mocked server.

What the stager relies on: a large object is known as one (real size, its ETag) whether the
server is OpenStack Swift or Ceph RGW; its segments are found on both; a 401 renews the
token once and retries with the new one; a server error is a StoreError (exit 69) naming
the URL. The real servers are exercised by tests/stack against both back ends.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import requests_mock
import urllib3

from allasrun.auth import Token
from allasrun.errors import EXIT_UNAVAILABLE, StoreError
from allasrun.staging.store import EMPTY_MD5, RemoteObject, Segment, slo_etag
from allasrun.staging.swift import SwiftStore

URL = "http://rgw.example:8080/swift/v1/AUTH_p"
PARTS = [
    Segment("b_segments/big/slo/1.0/3/2/00000000", 2, "a" * 32),
    Segment("b_segments/big/slo/1.0/3/2/00000001", 1, "b" * 32),
]
BIG = RemoteObject("big", 3, slo_etag(PARTS), slo=True)


class Credentials:
    """A token holder that counts renewals, as TokenSource would renew after a 401."""

    def __init__(self, url: str = URL) -> None:
        self.url = url
        self.token = Token("token-1", 0.0, 9e9, url, "p", "u")
        self.renewed: list[str] = []

    def renew(self, stale: Token) -> Token:
        self.renewed.append(stale.value)
        self.token = Token(f"token-{len(self.renewed) + 1}", 0.0, 9e9, self.url, "p", "u")
        return self.token


@pytest.fixture
def server() -> Iterator[requests_mock.Mocker]:
    with requests_mock.Mocker() as mocker:
        yield mocker


def _listing(mocker: requests_mock.Mocker, container: str, rows: list[dict[str, Any]]) -> None:
    """A container listing, paged as swiftclient pages it: the rows, then nothing after a marker."""

    def answer(request: Any, context: Any) -> str:
        return "[]" if "marker" in request.qs else json.dumps(rows)

    mocker.get(f"{URL}/{container}", text=answer, headers={"Content-Type": "application/json"})


def test_swift_lists_a_large_object_with_its_size_and_etag(server: requests_mock.Mocker) -> None:
    _listing(server, "b", [{"name": "big", "bytes": 3, "hash": "manifest-hash", "slo_etag": f'"{BIG.md5}"'}])
    assert SwiftStore(Credentials()).listing("b", "") == [BIG]


def test_rgw_lists_a_large_object_by_its_manifest_so_it_is_looked_up(server: requests_mock.Mocker) -> None:
    _listing(
        server,
        "b",
        [{"name": "big", "bytes": 453, "hash": EMPTY_MD5}, {"name": "empty", "bytes": 0, "hash": EMPTY_MD5}],
    )
    server.head(
        f"{URL}/b/big",
        headers={"Content-Length": "3", "Etag": f'"{BIG.md5}"', "X-Static-Large-Object": "True"},
    )
    server.head(f"{URL}/b/empty", headers={"Content-Length": "0", "Etag": EMPTY_MD5})  # it may be a DLO
    assert SwiftStore(Credentials()).listing("b", "") == [BIG, RemoteObject("empty", 0, EMPTY_MD5)]


@pytest.mark.parametrize("etag", [f'"{BIG.md5}"', BIG.md5], ids=["swift", "rgw"])
def test_a_dlo_listed_as_empty_is_looked_up_and_its_segments_listed(
    server: requests_mock.Mocker, etag: str
) -> None:
    """rclone's chunked file: both list its manifest as empty; HEAD names its segments' prefix."""
    manifest = "b_segments/big/1796.5/3/"
    _listing(
        server,
        "b",
        [
            {"name": "big", "bytes": 0, "hash": EMPTY_MD5},
            {"name": "folder/", "bytes": 0, "hash": EMPTY_MD5, "content_type": "application/directory"},
        ],
    )
    server.head(
        f"{URL}/b/big",
        headers={"Content-Length": "3", "Etag": etag, "X-Object-Manifest": "b_segments/big/1796.5/3/"},
    )
    store = SwiftStore(Credentials())
    dlo = RemoteObject("big", 3, BIG.md5, dlo=manifest)
    assert store.listing("b", "") == [dlo, RemoteObject("folder/", 0, EMPTY_MD5)]
    assert [r.url for r in server.request_history if r.method == "HEAD"] == [f"{URL}/b/big"]  # not the marker
    parts = [Segment(f"b_segments/big/1796.5/3/{n:08d}", s.size, s.md5) for n, s in enumerate(PARTS)]
    _listing(server, "b_segments", _segment_rows(parts))
    assert store.segments("b", dlo) == parts
    assert server.request_history[-2].qs["prefix"] == ["big/1796.5/3/"]


def test_swift_gives_the_manifest(server: requests_mock.Mocker) -> None:
    manifest = [{"name": f"/{s.path}", "bytes": s.size, "hash": s.md5} for s in PARTS]
    server.get(f"{URL}/b/big?multipart-manifest=get", text=json.dumps(manifest))
    assert SwiftStore(Credentials()).segments("b", BIG) == PARTS


def _segment_rows(parts: list[Segment]) -> list[dict[str, Any]]:
    return [{"name": s.path.split("/", 1)[1], "bytes": s.size, "hash": s.md5} for s in parts]


def test_rgw_gives_no_manifest_so_the_matching_segments_are_found(server: requests_mock.Mocker) -> None:
    older = [Segment("b_segments/big/slo/0.5/3/3/00000000", 3, "c" * 32)]  # a replaced upload's
    server.get(f"{URL}/b/big?multipart-manifest=get", text="")
    _listing(server, "b_segments", _segment_rows(older + PARTS))
    assert SwiftStore(Credentials()).segments("b", BIG) == PARTS


@pytest.mark.parametrize(
    "rows",
    [_segment_rows(PARTS[1:]), _segment_rows([PARTS[0], Segment(PARTS[1].path, 1, "d" * 32)])],
    ids=["a-gap", "other-content"],
)
def test_rgw_segments_that_do_not_make_the_object_are_not_used(
    server: requests_mock.Mocker, rows: list[dict[str, Any]]
) -> None:
    server.get(f"{URL}/b/big?multipart-manifest=get", text="")
    _listing(server, "b_segments", rows)
    assert SwiftStore(Credentials()).segments("b", BIG) == []


def test_a_401_renews_the_token_once_and_retries_with_the_new_one(server: requests_mock.Mocker) -> None:
    def answer(request: Any, context: Any) -> str:
        if request.headers["X-Auth-Token"] in ("token-1", b"token-1"):  # swiftclient sends bytes
            context.status_code = 401
            return ""
        return "[]" if "marker" in request.qs else json.dumps([{"name": "x", "bytes": 1, "hash": "h"}])

    server.get(f"{URL}/b", text=answer, headers={"Content-Type": "application/json"})
    credentials = Credentials()
    assert SwiftStore(credentials).listing("b", "") == [RemoteObject("x", 1, "h")]
    assert credentials.renewed == ["token-1"]


@pytest.mark.parametrize("failure", ["503", "refused"])
def test_a_failing_server_is_a_store_error_naming_the_url(server: requests_mock.Mocker, failure: str) -> None:
    if failure == "503":
        server.get(f"{URL}/b", status_code=503, text="NoSuchKey")
    else:
        server.get(f"{URL}/b", exc=requests.exceptions.ConnectionError("Connection refused"))
    with pytest.raises(StoreError) as raised:
        SwiftStore(Credentials(), retries=0).listing("b", "")
    assert raised.value.exit_code == EXIT_UNAVAILABLE
    assert f"{URL}/b" in str(raised.value)


def test_a_connection_broken_mid_body_is_a_store_error(server: requests_mock.Mocker) -> None:
    """urllib3's ProtocolError is not an OSError; it must not escape the stager's retry."""

    class Breaking(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(700 bytes read)")

    server.get(f"{URL}/b/x", body=Breaking(), headers={"Content-Length": "1400", "Etag": "h"})
    _, body = SwiftStore(Credentials(), retries=0).download("b", "x")
    with pytest.raises(StoreError, match=f"cannot download {URL}/b/x: .*Connection broken"):
        list(body)


def test_a_stalled_server_times_out() -> None:
    """A server that accepts and never answers fails the call; without a timeout it hangs forever."""
    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel accepts; nobody answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/AUTH_p"
        store = SwiftStore(Credentials(url), retries=0, timeout=(2.0, 0.5))
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"cannot list {url}/b: .*[Tt]imed out"):
            store.listing("b", "")
    assert time.monotonic() - started < 20


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays SwiftStore would have slept before its retries."""
    delays: list[float] = []
    monkeypatch.setattr("allasrun.staging.retry.time.sleep", delays.append)
    return delays


def _answers(mocker: requests_mock.Mocker, method: str, url: str, *answers: dict[str, Any]) -> None:
    """The first answers in order; the last one again for every request after them."""
    mocker.register_uri(method, url, list(answers))


THROTTLED = [503, 429, 498]  # overloaded, Too Many Requests, Swift's rate limit


@pytest.mark.parametrize("status", THROTTLED)
@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, [1.0, 2.0]), ("7", [7.0, 7.0]), ("3600", [60.0, 60.0])],
    ids=["no-retry-after", "retry-after", "an-hour-capped"],
)
def test_throttling_is_retried_honouring_retry_after(
    server: requests_mock.Mocker, waits: list[float], status: int, header: Any, expected: list[float]
) -> None:
    """Each wait is the backoff or the server's longer Retry-After, but never more than a minute."""
    headers = {"Retry-After": header} if header else {}
    throttled = {"status_code": status, "headers": headers, "text": "slow down"}
    ok = {"text": "[]", "headers": {"Content-Type": "application/json"}}
    _answers(server, "GET", f"{URL}/b", throttled, throttled, ok)
    assert SwiftStore(Credentials(), retries=3).listing("b", "") == []
    assert waits == expected


def test_retry_after_as_an_http_date_is_honoured(server: requests_mock.Mocker, waits: list[float]) -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    throttled = {"status_code": 429, "headers": {"Retry-After": when}}
    _answers(server, "HEAD", f"{URL}/b", throttled, {"status_code": 204})
    assert SwiftStore(Credentials()).bucket_exists("b")
    assert len(waits) == 1 and 17 <= waits[0] <= 20


@pytest.mark.parametrize("status", THROTTLED)
def test_throttling_past_the_retries_is_a_store_error_marked_retried(
    server: requests_mock.Mocker, waits: list[float], status: int
) -> None:
    _answers(server, "HEAD", f"{URL}/b", {"status_code": status, "headers": {"Retry-After": "5"}})
    with pytest.raises(StoreError, match=f"cannot look up {URL}/b: HTTP {status}") as raised:
        SwiftStore(Credentials(), retries=2).bucket_exists("b")
    assert raised.value.retried and raised.value.retry_after == 5.0
    assert waits == [5.0, 5.0] and server.call_count == 3


@pytest.mark.parametrize("status", [400, 403, 409])
def test_a_refusal_is_not_retried(server: requests_mock.Mocker, waits: list[float], status: int) -> None:
    _answers(server, "HEAD", f"{URL}/b", {"status_code": status})
    with pytest.raises(StoreError) as raised:
        SwiftStore(Credentials()).bucket_exists("b")
    assert not raised.value.retried and waits == [] and server.call_count == 1


def test_a_refused_connection_is_retried(server: requests_mock.Mocker, waits: list[float]) -> None:
    refused = {"exc": requests.exceptions.ConnectionError("Connection refused")}
    _answers(server, "HEAD", f"{URL}/b", refused, refused, {"status_code": 204})
    assert SwiftStore(Credentials()).bucket_exists("b")
    assert waits == [1.0, 2.0]


def test_a_throttled_upload_is_sent_again_from_its_start(
    server: requests_mock.Mocker, waits: list[float]
) -> None:
    data = b"0123456789" * 1000
    digest = hashlib.md5(data).hexdigest()
    bodies: list[bytes] = []

    def answer(request: Any, context: Any) -> str:
        bodies.append(request.body.read())  # swiftclient's LengthWrapper over the file
        if len(bodies) == 1:
            context.status_code, context.headers["Retry-After"] = 498, "2"
        else:
            context.status_code, context.headers["Etag"] = 201, digest
        return ""

    server.put(f"{URL}/b/x", text=answer)
    assert SwiftStore(Credentials()).upload("b", "x", io.BytesIO(data), len(data)) == (digest, digest)
    assert bodies == [data, data] and waits == [2.0]

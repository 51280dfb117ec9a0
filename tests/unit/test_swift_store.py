"""SwiftStore against both dialects of the Swift API, spoken by a `FakeServer` transport.

What the stager relies on: a large object is known as one (real size, its ETag) whether the
server is OpenStack Swift or Ceph RGW; its segments are found on both; a 401 renews the
token once and retries with the new one; a server error is a StoreError (exit 69) naming
the URL; an upload carries the MD5 the server checks. The real servers are exercised by
tests/stack against both back ends, and the connections by tests/unit/test_wire.py.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import socket
import time
from typing import Any

import pytest

from allasrun.auth import Token
from allasrun.errors import EXIT_UNAVAILABLE, BucketMissing, StoreError
from allasrun.staging.payload import IN_MEMORY
from allasrun.staging.store import EMPTY_MD5, RemoteObject, Segment, slo_etag
from allasrun.staging.swift import SwiftStore
from tests.unit.fakeserver import FakeServer

URL = "http://rgw.example:8080/swift/v1/AUTH_p"
PATH = "/swift/v1/AUTH_p"
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
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays SwiftStore would have slept before its retries."""
    delays: list[float] = []
    monkeypatch.setattr("allasrun.staging.retry.time.sleep", delays.append)
    return delays


def store(server: FakeServer, retries: int = 3, credentials: Any = None, page: int = 5) -> SwiftStore:
    return SwiftStore(credentials or Credentials(), retries, page=page, transport=server)


def rows(server: FakeServer, *listed: dict[str, Any]) -> None:
    """One listing page."""
    server.answer(200, json.dumps(list(listed)), content_type="application/json")


def test_a_listing_is_read_page_by_page_from_the_last_name(server: FakeServer) -> None:
    rows(server, {"name": "a", "bytes": 1, "hash": "h1"}, {"name": "b", "bytes": 2, "hash": "h2"})
    rows(server, {"name": "c", "bytes": 3, "hash": "h3"})  # short, but a server may cap its pages
    rows(server)  # empty: the last
    found = store(server, page=2).listing("b", "p/")
    assert [o.name for o in found] == ["a", "b", "c"]
    assert [s.query for s in server.sent] == [
        {"format": "json", "limit": "2", "prefix": "p/"},
        {"format": "json", "limit": "2", "prefix": "p/", "marker": "b"},
        {"format": "json", "limit": "2", "prefix": "p/", "marker": "c"},
    ]
    assert all(s.path == f"{PATH}/b" and s.headers["x-auth-token"] == "token-1" for s in server.sent)


def test_a_missing_container_is_bucket_missing(server: FakeServer) -> None:
    server.answer(404)
    with pytest.raises(BucketMissing, match=f"bucket 'b' does not exist \\({URL}/b\\)"):
        store(server).listing("b", "")


def test_swift_lists_a_large_object_with_its_size_and_etag(server: FakeServer) -> None:
    rows(server, {"name": "big", "bytes": 3, "hash": "manifest-hash", "slo_etag": f'"{BIG.md5}"'})
    rows(server)
    assert store(server).listing("b", "") == [BIG]


def test_rgw_lists_a_large_object_by_its_manifest_so_it_is_looked_up(server: FakeServer) -> None:
    rows(
        server,
        {"name": "big", "bytes": 453, "hash": EMPTY_MD5},
        {"name": "empty", "bytes": 0, "hash": EMPTY_MD5},
    )
    server.answer(200, content_length="3", etag=f'"{BIG.md5}"', x_static_large_object="True")
    server.answer(200, content_length="0", etag=EMPTY_MD5)  # it may be a DLO
    rows(server)
    assert store(server).listing("b", "") == [BIG, RemoteObject("empty", 0, EMPTY_MD5)]
    assert [(s.method, s.path) for s in server.sent[1:3]] == [
        ("HEAD", f"{PATH}/b/big"),
        ("HEAD", f"{PATH}/b/empty"),
    ]


@pytest.mark.parametrize("etag", [f'"{BIG.md5}"', BIG.md5], ids=["swift", "rgw"])
def test_a_dlo_listed_as_empty_is_looked_up_and_its_segments_listed(server: FakeServer, etag: str) -> None:
    """rclone's chunked file: both list its manifest as empty; HEAD names its segments' prefix."""
    manifest = "b_segments/big/1796.5/3/"
    folder = {"name": "folder/", "bytes": 0, "hash": EMPTY_MD5, "content_type": "application/directory"}
    rows(server, {"name": "big", "bytes": 0, "hash": EMPTY_MD5}, folder)
    server.answer(200, content_length="3", etag=etag, x_object_manifest=manifest)
    rows(server)
    swift = store(server)
    dlo = RemoteObject("big", 3, BIG.md5, dlo=manifest)
    assert swift.listing("b", "") == [dlo, RemoteObject("folder/", 0, EMPTY_MD5)]
    assert [s.method for s in server.sent] == ["GET", "HEAD", "GET"]  # not the folder marker
    parts = [Segment(f"b_segments/big/1796.5/3/{n:08d}", s.size, s.md5) for n, s in enumerate(PARTS)]
    rows(server, *_segment_rows(parts))
    rows(server)
    assert swift.segments("b", dlo) == parts
    assert server.sent[-1].path == f"{PATH}/b_segments" and server.sent[-1].query["prefix"] == "big/1796.5/3/"


def test_swift_gives_the_manifest(server: FakeServer) -> None:
    server.answer(200, json.dumps([{"name": f"/{s.path}", "bytes": s.size, "hash": s.md5} for s in PARTS]))
    assert store(server).segments("b", BIG) == PARTS
    assert server.sent[0].query == {"multipart-manifest": "get"}


def _segment_rows(parts: list[Segment]) -> list[dict[str, Any]]:
    return [{"name": s.path.split("/", 1)[1], "bytes": s.size, "hash": s.md5} for s in parts]


def test_rgw_gives_no_manifest_so_the_matching_segments_are_found(server: FakeServer) -> None:
    older = [Segment("b_segments/big/slo/0.5/3/3/00000000", 3, "c" * 32)]  # a replaced upload's
    server.answer(200, "")
    rows(server, *_segment_rows(older + PARTS))
    rows(server)
    assert store(server).segments("b", BIG) == PARTS


@pytest.mark.parametrize(
    "listed",
    [_segment_rows(PARTS[1:]), _segment_rows([PARTS[0], Segment(PARTS[1].path, 1, "d" * 32)])],
    ids=["a-gap", "other-content"],
)
def test_rgw_segments_that_do_not_make_the_object_are_not_used(
    server: FakeServer, listed: list[dict[str, Any]]
) -> None:
    server.answer(200, "")
    rows(server, *listed)
    rows(server)
    assert store(server).segments("b", BIG) == []


# A killed upload's whole set and its re-run's: the same bytes, so the same sizes and MD5s.
ALIKE = [Segment(s.path.replace("/1.0/", "/0.5-dead/"), s.size, s.md5) for s in PARTS]


def test_rgw_two_sets_alike_the_one_the_manifest_names_is_the_objects(server: FakeServer) -> None:
    server.answer(200, "", x_object_meta_allasrun_segments="1.0/3/2")
    rows(server, *_segment_rows(ALIKE + PARTS))
    rows(server)
    assert store(server).segments("b", BIG) == PARTS


@pytest.mark.parametrize("exact", [False, True])
def test_rgw_two_sets_alike_and_none_named_do_to_verify_by_but_not_to_sweep_by(
    server: FakeServer, exact: bool
) -> None:
    """A manifest from before the name, or from the swift CLI: either set holds the object's
    bytes, but a sweep that took the wrong one for the object's would delete the object's own."""
    server.answer(200, "")
    rows(server, *_segment_rows(ALIKE + PARTS))
    rows(server)
    assert store(server).segments("b", BIG, exact=exact) == ([] if exact else ALIKE)


def test_rgw_a_named_set_that_does_not_make_the_object_is_not_replaced_by_another(server: FakeServer) -> None:
    server.answer(200, "", x_object_meta_allasrun_segments="1.0/3/2")
    rows(server, *_segment_rows(ALIKE + PARTS[1:]))
    rows(server)
    assert store(server).segments("b", BIG) == []


def test_a_401_renews_the_token_once_and_retries_with_the_new_one(server: FakeServer) -> None:
    server.answer(401)
    rows(server, {"name": "x", "bytes": 1, "hash": "h"})
    rows(server)
    credentials = Credentials()
    assert store(server, credentials=credentials).listing("b", "") == [RemoteObject("x", 1, "h")]
    assert credentials.renewed == ["token-1"]
    assert [s.headers["x-auth-token"] for s in server.sent] == ["token-1", "token-2", "token-2"]


def test_an_upload_refused_with_401_is_sent_again_whole_with_the_new_token(server: FakeServer) -> None:
    data = b"x" * (IN_MEMORY + 5)  # streamed: rewound for the second try
    server.answer(401)
    server.answer(201, etag=hashlib.md5(data).hexdigest())
    md5, etag = store(server).upload("b", "x", io.BytesIO(data), len(data))
    assert md5 == etag == hashlib.md5(data).hexdigest()
    assert [s.body for s in server.sent] == [data, data]


@pytest.mark.parametrize("length", [10, IN_MEMORY], ids=["small", "in-memory"])
def test_an_upload_in_memory_carries_its_md5_for_the_server_to_check(server: FakeServer, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + b"z" * (length % 256)
    digest = hashlib.md5(data).hexdigest()
    server.answer(201, etag=digest)
    assert store(server).upload("b", "d/ä x.txt", io.BytesIO(data), len(data)) == (digest, digest)
    sent = server.sent[0]
    assert sent.headers["etag"] == digest and sent.headers["content-length"] == str(length)
    assert sent.path == f"{PATH}/b/d/%C3%A4%20x.txt" and sent.body == data


def test_a_large_upload_is_hashed_as_it_streams(server: FakeServer) -> None:
    data = b"0123456789" * (IN_MEMORY // 10 + 1)
    server.answer(201, etag="what-the-server-says")
    assert store(server).upload("b", "x", io.BytesIO(data), len(data)) == (
        hashlib.md5(data).hexdigest(),
        "what-the-server-says",  # put.py compares the two
    )
    assert "etag" not in server.sent[0].headers


def test_a_body_spoilt_on_the_way_is_sent_again(server: FakeServer, waits: list[float]) -> None:
    """422: the MD5 sent does not match the body the server got; the next try may go right."""
    server.answer(422)
    server.answer(201, etag=hashlib.md5(b"data").hexdigest())
    store(server).upload("b", "x", io.BytesIO(b"data"), 4)
    assert len(server.sent) == 2 and waits == [1.0]


def test_a_manifest_lists_each_segments_path_etag_and_size(server: FakeServer) -> None:
    server.answer(201)
    store(server).put_manifest("b", "big", PARTS)
    sent = server.sent[0]
    assert (sent.method, sent.path, sent.query) == ("PUT", f"{PATH}/b/big", {"multipart-manifest": "put"})
    assert json.loads(sent.body) == [
        {"path": f"/{s.path}", "etag": s.md5, "size_bytes": s.size} for s in PARTS
    ]
    assert sent.headers["x-object-meta-allasrun-segments"] == "1.0/3/2"  # its set, for radosgw


def test_a_manifest_of_segments_in_another_layout_names_no_set(server: FakeServer) -> None:
    server.answer(201)
    store(server).put_manifest("b", "big", [Segment("elsewhere/big/00000000", 3, "a" * 32)])
    assert "x-object-meta-allasrun-segments" not in server.sent[0].headers


def test_a_missing_object_deletes_fine_and_a_missing_container_is_made(server: FakeServer) -> None:
    server.answer(404)
    server.answer(404)
    server.answer(201)
    swift = store(server)
    swift.delete("b", "gone")
    swift.ensure_bucket("new")
    assert [(s.method, s.path) for s in server.sent] == [
        ("DELETE", f"{PATH}/b/gone"),
        ("HEAD", f"{PATH}/new"),
        ("PUT", f"{PATH}/new"),
    ]


def test_a_download_streams_the_body_and_gives_its_connection_back(server: FakeServer) -> None:
    server.answer(200, b"abc" * 1000, etag="e")
    headers, body = store(server).download("b", "x")
    assert headers["etag"] == "e" and b"".join(body) == b"abc" * 1000 and server.released == 1


def test_a_failing_server_is_a_store_error_naming_the_url(server: FakeServer) -> None:
    server.answer(503, "overloaded")
    with pytest.raises(StoreError) as raised:
        store(server, retries=0).listing("b", "")
    assert raised.value.exit_code == EXIT_UNAVAILABLE
    assert str(raised.value) == f"cannot list {URL}/b: HTTP 503 Service Unavailable"


def test_a_listing_that_is_not_json_is_retried(server: FakeServer, waits: list[float]) -> None:
    server.answer(200, "<html>proxy error</html>")
    rows(server)
    assert store(server).listing("b", "") == [] and waits == [1.0]


def test_a_refused_connection_is_a_store_error_naming_the_url() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/AUTH_p"  # closed again: nobody listens
    with pytest.raises(StoreError, match=f"cannot list {url}/b: no answer") as raised:
        SwiftStore(Credentials(url), retries=0).listing("b", "")
    assert raised.value.transient


def test_a_stalled_server_times_out() -> None:
    """A server that accepts and never answers fails the call; without a timeout it hangs forever."""
    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel accepts; nobody answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/AUTH_p"
        swift = SwiftStore(Credentials(url), retries=0, timeout=(2.0, 0.5))
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"cannot list {url}/b: .*[Tt]imed out"):
            swift.listing("b", "")
    assert time.monotonic() - started < 20


THROTTLED = [503, 429, 498]  # overloaded, Too Many Requests, Swift's rate limit


@pytest.mark.parametrize("status", THROTTLED)
@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, [1.0, 2.0]), ("7", [7.0, 7.0]), ("3600", [60.0, 60.0])],
    ids=["no-retry-after", "retry-after", "an-hour-capped"],
)
def test_throttling_is_retried_honouring_retry_after(
    server: FakeServer, waits: list[float], status: int, header: Any, expected: list[float]
) -> None:
    """Each wait is the backoff or the server's longer Retry-After, but never more than a minute."""
    headers = {"retry_after": header} if header else {}
    server.answer(status, "slow down", **headers)
    server.answer(status, "slow down", **headers)
    rows(server)
    assert store(server).listing("b", "") == []
    assert waits == expected


def test_retry_after_as_an_http_date_is_honoured(server: FakeServer, waits: list[float]) -> None:
    server.answer(429, retry_after=email.utils.formatdate(time.time() + 20, usegmt=True))
    server.answer(204)
    assert store(server).bucket_exists("b")
    assert len(waits) == 1 and 17 <= waits[0] <= 20


@pytest.mark.parametrize("status", THROTTLED)
def test_throttling_past_the_retries_is_a_store_error_marked_retried(
    server: FakeServer, waits: list[float], status: int
) -> None:
    for _ in range(3):
        server.answer(status, retry_after="5")
    with pytest.raises(StoreError, match=f"cannot look up {URL}/b: HTTP {status}") as raised:
        store(server, retries=2).bucket_exists("b")
    assert raised.value.retried and raised.value.retry_after == 5.0
    assert waits == [5.0, 5.0] and len(server.sent) == 3


@pytest.mark.parametrize("status", [400, 403, 409])
def test_a_refusal_is_not_retried(server: FakeServer, waits: list[float], status: int) -> None:
    server.answer(status)
    with pytest.raises(StoreError) as raised:
        store(server).bucket_exists("b")
    assert not raised.value.retried and waits == [] and len(server.sent) == 1


def test_a_throttled_upload_is_sent_again_from_its_start(server: FakeServer, waits: list[float]) -> None:
    data = b"0123456789" * (IN_MEMORY // 10 + 1)
    digest = hashlib.md5(data).hexdigest()
    server.answer(498, retry_after="2")
    server.answer(201, etag=digest)
    assert store(server).upload("b", "x", io.BytesIO(data), len(data)) == (digest, digest)
    assert [s.body for s in server.sent] == [data, data] and waits == [2.0]


def test_a_bundle_goes_to_the_container_below_its_folder_and_its_errors_are_read(server: FakeServer) -> None:
    answer = {
        "Number Files Created": 1,
        "Response Status": "400 Bad Request",
        "Errors": [["/b/run%201/x%C3%A4.txt", "400 Bad Request"], ["/v1/AUTH_p/b/run 1/y", "413 Too Large"]],
    }
    server.answer(200, "   \n" + json.dumps(answer))  # Swift's bulk sends spaces while it works
    extracted = store(server).extract("b", "run 1/", b"TAR")
    sent = server.sent[0]
    assert (sent.method, sent.path, sent.query, sent.body) == (
        "PUT",
        f"{PATH}/b/run%201",
        {"extract-archive": "tar"},
        b"TAR",
    )
    assert sent.headers["accept"] == "application/json" and sent.headers["content-length"] == "3"
    assert extracted.unpacked and extracted.status == "400 Bad Request"
    assert extracted.failed == {"run 1/xä.txt": "400 Bad Request", "run 1/y": "413 Too Large"}


def test_a_bundle_answered_without_bulks_json_was_not_unpacked(server: FakeServer) -> None:
    server.answer(202, "<html><h1>Accepted</h1></html>")
    extracted = store(server).extract("b", "", bytes(1024))
    assert server.sent[0].path == f"{PATH}/b" and not extracted.unpacked
    assert extracted.status == "202 Accepted" and extracted.failed == {}


def test_a_bundles_listing_starts_before_its_first_name_and_stops_past_its_last(server: FakeServer) -> None:
    rows(server, *({"name": f"run/f{n}", "bytes": 1, "hash": "a" * 32} for n in (2, 3, 4)))
    rows(
        server,
        {"name": "run/f5", "bytes": 1, "hash": "a" * 32},
        {"name": "run/g", "bytes": 1, "hash": "a" * 32},
    )
    found = store(server, page=3).listing_between("b", "run/f3", "run/f5")
    assert [obj.name for obj in found] == ["run/f3", "run/f4", "run/f5"]
    first, second = server.sent
    assert (first.query["prefix"], first.query["marker"]) == ("run/f", "run/f")
    assert second.query["marker"] == "run/f4"

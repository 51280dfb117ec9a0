"""S3Store without a server: its error mapping, ETag math, part sizing and request shapes.

A `FakeServer` transport answers in place of the server, so what is checked is what S3Store
asks (Content-MD5 where promised, signed path-style requests, pages) and how it reads the
answers. The real servers (Swift's s3api and radosgw) are exercised by
tests/stack/test_s3_store.py, and the keep-alive connections by tests/unit/test_wire.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from allasrun.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, BadCABundle, BucketMissing, StoreError
from allasrun.staging import s3
from allasrun.staging.payload import IN_MEMORY
from allasrun.staging.s3 import (
    LARGEST_PART,
    MAX_PARTS,
    SMALLEST_PART,
    S3Store,
    _refusal,
    part_size,
)
from allasrun.staging.store import CHUNK, Part, RemoteObject, multipart_etag
from allasrun.staging.wire import store_error
from tests.unit.fakeserver import FakeServer

ENDPOINT = "http://s3.example:8080"
SECRET = "very-secret-key"
URL = f"{ENDPOINT}/b/dir/k.txt"


def _error(code: str) -> str:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>"


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def store(server: FakeServer) -> S3Store:
    return S3Store(ENDPOINT, "access", SECRET, retries=2, page=2, transport=server)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry layer's sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("allasrun.staging.retry.time.sleep", slept.append)
    return slept


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refused_keys_are_named_as_such_and_never_retried(code: str) -> None:
    error = _refusal(403, code, {}, f"upload {URL}")
    assert type(error) is StoreError and not error.transient
    assert str(error) == f"cannot upload {URL}: the S3 keys were refused (HTTP 403 {code})"
    assert error.exit_code == EXIT_UNAVAILABLE


def test_a_missing_bucket_and_a_missing_object() -> None:
    bucket = _refusal(404, "NoSuchBucket", {}, f"list {ENDPOINT}/b")
    assert isinstance(bucket, BucketMissing) and f"{ENDPOINT}/b" in str(bucket)
    missing = _refusal(404, "NoSuchKey", {}, f"download {URL}")
    assert type(missing) is StoreError and missing.http_status == 404 and not missing.transient
    assert str(missing) == f"cannot download {URL}: no such object (HTTP 404 NoSuchKey)"


@pytest.mark.parametrize(
    ("code", "status", "headers", "delay"),
    [
        ("SlowDown", 503, {"retry-after": "7"}, 7.0),
        ("503", 503, {}, None),
        ("429", 429, {"retry-after": "3"}, 3.0),
        ("InternalError", 500, {}, None),
        ("RequestTimeout", 400, {}, None),
    ],
)
def test_busy_servers_are_transient_with_their_retry_after(
    code: str, status: int, headers: dict[str, str], delay: float | None
) -> None:
    error = _refusal(status, code, headers, f"upload {URL}")
    assert error.transient and error.retry_after == delay and URL in str(error)


def test_other_refusals_are_final() -> None:
    error = _refusal(400, "InvalidBucketName", {}, f"create {ENDPOINT}/B_")
    assert not error.transient and str(error) == f"cannot create {ENDPOINT}/B_: HTTP 400 InvalidBucketName"


@pytest.mark.parametrize(
    "cause",
    [ConnectionRefusedError(111, "Connection refused"), TimeoutError("timed out"), ConnectionResetError()],
)
def test_no_answer_is_transient(cause: Exception) -> None:
    error = store_error(cause, f"download {URL}")
    assert error.transient and str(error).startswith(f"cannot download {URL}: no answer")


def test_a_bug_is_not_passed_off_as_a_store_failure() -> None:
    with pytest.raises(KeyError):
        store_error(KeyError("x"), f"download {URL}")


def test_part_sizes_keep_to_s3_limits() -> None:
    assert part_size(1, 1) == SMALLEST_PART
    assert part_size(100 * 2**20, 8 * 2**20) == 8 * 2**20
    assert part_size(MAX_PARTS * 64 * 2**20, 8 * 2**20) == 64 * 2**20
    with pytest.raises(StoreError, match="more than an S3 object can hold"):
        part_size(MAX_PARTS * LARGEST_PART + 1, SMALLEST_PART)


def _page(rows: list[tuple[str, int, str]], token: str = "") -> str:
    contents = "".join(
        f"<Contents><Key>{key}</Key><Size>{size}</Size><ETag>&quot;{etag}&quot;</ETag></Contents>"
        for key, size, etag in rows
    )
    more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
    return (
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"{more if token else '<IsTruncated>false</IsTruncated>'}{contents}</ListBucketResult>"
    )


def test_listing_follows_every_page_decodes_names_and_keeps_multipart_etags(
    store: S3Store, server: FakeServer
) -> None:
    server.answer(body=_page([("d/a%20b%2Bc", 1, "a" * 32), ("d/b%1B", 0, "")], token="t/1+"))
    server.answer(body=_page([("d/c", 15, "c" * 32 + "-3")]))
    listed = store.listing("b", "d/")
    assert [(o.name, o.size, o.md5) for o in listed] == [
        ("d/a b+c", 1, "a" * 32),
        ("d/b\x1b", 0, ""),
        ("d/c", 15, "c" * 32 + "-3"),
    ]
    first, second = server.sent
    assert (first.method, first.path) == ("GET", "/b")
    assert first.query == {"list-type": "2", "encoding-type": "url", "max-keys": "2", "prefix": "d/"}
    assert second.query == {**first.query, "continuation-token": "t/1+"}


def test_a_requests_signature_covers_the_quoted_name_and_the_host(store: S3Store, server: FakeServer) -> None:
    server.answer(204)
    store.delete("b", "dir/ä b?.txt")
    sent = server.sent[0]
    assert sent.path == "/b/dir/%C3%A4%20b%3F.txt" and sent.headers["host"] == "s3.example:8080"
    assert sent.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    authorization = sent.headers["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=access/") and SECRET not in authorization
    assert "host" in authorization.split("SignedHeaders=")[1].split(",")[0].split(";")


@pytest.mark.parametrize("length", [10, IN_MEMORY], ids=["small", "in-memory"])
def test_a_small_upload_is_read_once_and_sends_the_md5_of_exactly_its_bytes(
    store: S3Store, server: FakeServer, length: int
) -> None:
    data = bytes(range(256)) * (length // 256) + b"x" * (length % 256)
    source = io.BytesIO(b"head" + data + b"tail")
    source.seek(4)
    md5 = hashlib.md5(data).hexdigest()
    server.answer(etag=f'"{md5}"')
    assert store.upload("b", "k", source, len(data)) == (md5, md5)
    sent = server.sent[0]
    assert sent.body == data and sent.headers["content-length"] == str(length)
    assert sent.headers["content-md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert source.tell() == 4 + length


def test_a_large_upload_is_hashed_as_it_streams_without_content_md5(
    store: S3Store, server: FakeServer
) -> None:
    data = b"0123456789" * (IN_MEMORY // 10 + 1)
    server.answer(etag='"not-checked-here"')  # put.py compares the ETag with the MD5
    md5, etag = store.upload("b", "k", io.BytesIO(data), len(data))
    assert md5 == hashlib.md5(data).hexdigest() and etag == "not-checked-here"
    assert server.sent[0].body == data and "content-md5" not in server.sent[0].headers


def test_a_large_part_carries_its_content_md5(store: S3Store, server: FakeServer) -> None:
    data = b"p" * (IN_MEMORY + 3)
    md5 = hashlib.md5(data).hexdigest()
    server.answer(etag=f'"{md5}"')
    assert store.upload_part("b", "k", "u1", 3, io.BytesIO(data), len(data)) == Part(3, len(data), md5, md5)
    sent = server.sent[0]
    assert sent.query == {"partNumber": "3", "uploadId": "u1"} and sent.body == data
    assert sent.headers["content-md5"] == base64.b64encode(hashlib.md5(data).digest()).decode()


def test_a_transient_failure_is_retried_after_the_servers_retry_after_with_the_whole_body(
    store: S3Store, server: FakeServer, waits: list[float]
) -> None:
    data = b"s" * (IN_MEMORY + 1)  # streamed: rewound and hashed anew for each attempt
    for _ in range(2):
        server.answer(503, _error("SlowDown"), retry_after="5")
    server.answer(etag=f'"{hashlib.md5(data).hexdigest()}"')
    md5, etag = store.upload("b", "k", io.BytesIO(data), len(data))
    assert md5 == etag == hashlib.md5(data).hexdigest() and waits == [5.0, 5.0]
    assert [len(s.body) for s in server.sent] == [len(data)] * 3


def test_retries_end_in_a_store_error_marked_retried(
    store: S3Store, server: FakeServer, waits: list[float]
) -> None:
    for _ in range(3):
        server.answer(503)
    with pytest.raises(StoreError) as raised:
        store.bucket_exists("b")
    assert raised.value.retried and waits == [1.0, 2.0]
    assert raised.value.__context__ is None  # nothing to print after it


def test_a_refusal_is_not_retried_and_never_names_the_secret(
    store: S3Store, server: FakeServer, waits: list[float]
) -> None:
    server.answer(403, _error("SignatureDoesNotMatch"))
    with pytest.raises(StoreError, match="the S3 keys were refused") as raised:
        store.download("b", "dir/k.txt")
    assert waits == [] and URL in str(raised.value) and SECRET not in str(raised.value)


def test_an_answer_that_is_not_xml_is_a_transient_failure(
    store: S3Store, server: FakeServer, waits: list[float]
) -> None:
    server.answer(200, "<html>proxy error")
    server.answer(200, _page([]))
    assert store.listing("b", "") == [] and waits == [1.0]


def test_a_download_streams_chunks_with_lower_case_headers(store: S3Store, server: FakeServer) -> None:
    data = b"x" * (CHUNK + 1)
    server.answer(200, data, etag='"abc"', content_length=str(len(data)))
    got, chunks = store.download("b", "k")
    assert got["etag"] == "abc" and got["content-length"] == str(len(data))
    assert [len(c) for c in chunks] == [CHUNK, 1]


def test_a_missing_bucket_is_told_by_head_and_by_listing(store: S3Store, server: FakeServer) -> None:
    server.answer(404)
    server.answer(404, _error("NoSuchBucket"))
    assert not store.bucket_exists("b")
    with pytest.raises(BucketMissing, match=f"{ENDPOINT}/b"):
        store.listing("b", "")


def test_every_reply_is_released_so_its_connection_serves_the_next_request(
    store: S3Store, server: FakeServer
) -> None:
    server.answer(200)  # HEAD bucket
    server.answer(204)  # DELETE
    server.answer(200, etag=f'"{hashlib.md5(b"abc").hexdigest()}"')  # PUT
    server.answer(200, _page([("k", 3, hashlib.md5(b"abc").hexdigest())]))
    server.answer(
        200, "<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>"
    )
    server.answer(204)  # abort
    assert store.bucket_exists("b")
    store.delete("b", "k")
    store.upload("b", "k", io.BytesIO(b"abc"), 3)
    store.listing("b", "")
    store.abort("b", "k", store.begin("b", "k"))
    assert server.released == len(server.sent) == 6


def test_an_existing_bucket_of_ones_own_is_fine_to_create(store: S3Store, server: FakeServer) -> None:
    server.answer(404)
    server.answer(409, _error("BucketAlreadyOwnedByYou"))
    store.ensure_bucket("b")
    assert [(s.method, s.path) for s in server.sent] == [("HEAD", "/b"), ("PUT", "/b")]


def test_completion_checks_the_etag_and_asks_rgw_with_a_head(store: S3Store, server: FakeServer) -> None:
    parts = [Part(2, 1, "b" * 32, "b" * 32), Part(1, 5, "a" * 32, "a" * 32)]
    expected = multipart_etag(["a" * 32, "b" * 32])
    server.answer(200, "<CompleteMultipartUploadResult><ETag></ETag></CompleteMultipartUploadResult>")
    server.answer(200, etag=f'"{expected}"')  # radosgw's empty <ETag>: a HEAD
    assert store.complete("b", "k", "u", parts) == expected
    listed = server.sent[0].body.decode()
    assert listed.index("<PartNumber>1</PartNumber>") < listed.index("<PartNumber>2</PartNumber>")
    assert f'<ETag>"{"a" * 32}"</ETag>' in listed and server.sent[0].query == {"uploadId": "u"}
    server.answer(
        200,
        f"<CompleteMultipartUploadResult><ETag>{'0' * 32}-2</ETag></CompleteMultipartUploadResult>",
    )
    with pytest.raises(StoreError, match=f"{ENDPOINT}/b/k: the store reports ETag"):
        store.complete("b", "k", "u", parts)


def test_a_completion_answered_200_with_an_error_is_a_failure(store: S3Store, server: FakeServer) -> None:
    server.answer(200, _error("InternalError"))
    with pytest.raises(StoreError, match="HTTP 200 InternalError") as raised:
        store.complete("b", "k", "u", [Part(1, 1, "a" * 32, "a" * 32)])
    assert raised.value.transient


def test_a_multipart_upload_begins_with_its_id(store: S3Store, server: FakeServer) -> None:
    server.answer(
        200, "<InitiateMultipartUploadResult><UploadId>2~xyz</UploadId></InitiateMultipartUploadResult>"
    )
    assert store.begin("b", "k") == "2~xyz"
    assert (server.sent[0].method, server.sent[0].query) == ("POST", {"uploads": ""})


def test_an_s3_store_cannot_write_a_manifest(store: S3Store) -> None:
    assert store.segments("b", RemoteObject("k", 1, "x")) == []
    with pytest.raises(StoreError, match="multipart"):
        store.put_manifest("b", "k", [])


@pytest.mark.parametrize("length", [3, IN_MEMORY + 3], ids=["in-memory", "streamed"])
def test_a_short_file_fails_before_it_can_land(store: S3Store, server: FakeServer, length: int) -> None:
    server.answer(200, etag='"x"')
    with pytest.raises(StoreError, match="ended 2 bytes early"):
        store.upload("b", "k", io.BytesIO(b"a" * (length - 2)), length)


def test_the_ca_bundle_is_read_for_https_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """AWS_CA_BUNDLE (the sandbox sets it) is where a site names its CA; http has no TLS to check."""
    from allasrun.staging.wire import ca_bundle

    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    assert ca_bundle("https://a3s.fi", "AWS_CA_BUNDLE") == str(tmp_path / "ca.pem")
    assert ca_bundle(ENDPOINT, "AWS_CA_BUNDLE") is None


def test_a_ca_bundle_that_cannot_be_read_is_named_before_any_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "not-pem").write_text("hello\n")
    for path in (tmp_path / "missing.pem", tmp_path / "not-pem"):
        monkeypatch.setenv("AWS_CA_BUNDLE", str(path))
        with pytest.raises(BadCABundle, match=f"AWS_CA_BUNDLE={path}: cannot read it") as raised:
            S3Store("https://a3s.fi", "a", "s")
        assert raised.value.exit_code == EXIT_CONFIG
    S3Store("https://a3s.fi", "a", "s", transport=FakeServer())  # a transport of its own reads none


def test_botocore_is_imported_only_when_an_s3_store_is_made(tmp_path: Path) -> None:
    probe = (
        "import json, sys\n"
        "import allasrun.staging.s3, allasrun.staging.stager\n"
        "before = 'botocore' in sys.modules\n"
        "allasrun.staging.s3.S3Store('http://127.0.0.1:9', 'a', 's')\n"
        "print(json.dumps([before, 'botocore' in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(Path(s3.__file__).resolve().parents[2])},
    )
    assert json.loads(result.stdout) == [False, True]

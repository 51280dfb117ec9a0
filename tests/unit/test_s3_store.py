"""S3Store without a server: its error mapping, ETag math, part sizing and request shapes.

botocore's Stubber answers in place of the server, so what is checked is what S3Store asks
(Content-MD5 on every PUT, path-style pages) and how it reads the answers. The real servers
(Swift's s3api and radosgw) are exercised by tests/stack/test_s3_store.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError  # type: ignore[import-untyped]
from botocore.response import StreamingBody  # type: ignore[import-untyped]
from botocore.stub import ANY, Stubber  # type: ignore[import-untyped]

from allasrun.errors import EXIT_UNAVAILABLE, BucketMissing, StoreError
from allasrun.staging import s3
from allasrun.staging.s3 import LARGEST_PART, MAX_PARTS, SMALLEST_PART, S3Store, part_size, store_error
from allasrun.staging.store import CHUNK, Part, RemoteObject, multipart_etag

ENDPOINT = "http://s3.example:8080"
SECRET = "very-secret-key"
URL = f"{ENDPOINT}/b/dir/k.txt"


@pytest.fixture
def store() -> S3Store:
    return S3Store(ENDPOINT, "access", SECRET, retries=2, page=2)


@pytest.fixture
def stub(store: S3Store) -> Iterator[Stubber]:
    with Stubber(store._client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry layer's sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("allasrun.staging.retry.time.sleep", slept.append)
    return slept


def _refused(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    meta = {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}
    return ClientError({"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": meta}, "PutObject")


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refused_keys_are_named_as_such_and_never_retried(code: str) -> None:
    error = store_error(_refused(code, 403), f"upload {URL}")
    assert type(error) is StoreError and not error.transient
    assert str(error) == f"cannot upload {URL}: the S3 keys were refused (HTTP 403 {code})"
    assert error.exit_code == EXIT_UNAVAILABLE


def test_a_missing_bucket_and_a_missing_object() -> None:
    bucket = store_error(_refused("NoSuchBucket", 404), f"list {ENDPOINT}/b")
    assert isinstance(bucket, BucketMissing) and f"{ENDPOINT}/b" in str(bucket)
    missing = store_error(_refused("NoSuchKey", 404), f"download {URL}")
    assert type(missing) is StoreError and missing.http_status == 404 and not missing.transient
    assert str(missing) == f"cannot download {URL}: no such object (HTTP 404 NoSuchKey)"


@pytest.mark.parametrize(
    ("code", "status", "headers", "delay"),
    [
        ("SlowDown", 503, {"retry-after": "7"}, 7.0),
        ("503", 503, {}, None),
        ("429", 429, {"Retry-After": "3"}, 3.0),
        ("InternalError", 500, {}, None),
        ("RequestTimeout", 400, {}, None),
    ],
)
def test_busy_servers_are_transient_with_their_retry_after(
    code: str, status: int, headers: dict[str, str], delay: float | None
) -> None:
    error = store_error(_refused(code, status, headers), f"upload {URL}")
    assert error.transient and error.retry_after == delay and URL in str(error)


def test_other_refusals_are_final() -> None:
    error = store_error(_refused("InvalidBucketName", 400), f"create {ENDPOINT}/B_")
    assert not error.transient and str(error) == f"cannot create {ENDPOINT}/B_: HTTP 400 InvalidBucketName"


@pytest.mark.parametrize(
    "cause",
    [
        EndpointConnectionError(endpoint_url=ENDPOINT),
        ReadTimeoutError(endpoint_url=ENDPOINT),
        ConnectionResetError(),
    ],
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


def test_listing_follows_every_page_and_keeps_multipart_etags(store: S3Store, stub: Stubber) -> None:
    first = {"Bucket": "b", "Prefix": "d/", "MaxKeys": 2}
    stub.add_response(
        "list_objects_v2",
        {
            "IsTruncated": True,
            "NextContinuationToken": "t1",
            "Contents": [
                {"Key": "d/a", "Size": 1, "ETag": '"' + "a" * 32 + '"'},
                {"Key": "d/b", "Size": 0, "ETag": '""'},
            ],
        },
        first,
    )
    stub.add_response(
        "list_objects_v2",
        {"IsTruncated": False, "Contents": [{"Key": "d/c", "Size": 15, "ETag": '"' + "c" * 32 + '-3"'}]},
        {**first, "ContinuationToken": "t1"},
    )
    listed = store.listing("b", "d/")
    assert [(o.name, o.size, o.md5) for o in listed] == [
        ("d/a", 1, "a" * 32),
        ("d/b", 0, ""),
        ("d/c", 15, "c" * 32 + "-3"),
    ]


def test_an_upload_sends_the_md5_of_exactly_its_bytes(store: S3Store, stub: Stubber) -> None:
    data = b"0123456789" * CHUNK
    source = io.BytesIO(b"head" + data + b"tail")
    source.seek(4)
    md5 = hashlib.md5(data).hexdigest()
    content_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    stub.add_response(
        "put_object",
        {"ETag": f'"{md5}"'},
        {"Bucket": "b", "Key": "k", "Body": ANY, "ContentLength": len(data), "ContentMD5": content_md5},
    )
    assert store.upload("b", "k", source, len(data)) == (md5, md5)


def test_a_transient_failure_is_retried_after_the_servers_retry_after(
    store: S3Store, stub: Stubber, waits: list[float]
) -> None:
    source = io.BytesIO(b"abc")
    for _ in range(2):
        stub.add_client_error(
            "put_object",
            "SlowDown",
            http_status_code=503,
            response_meta={"HTTPHeaders": {"retry-after": "5"}},
        )
    stub.add_response("put_object", {"ETag": f'"{hashlib.md5(b"abc").hexdigest()}"'})
    md5, etag = store.upload("b", "k", source, 3)
    assert md5 == etag and waits == [5.0, 5.0]


def test_retries_end_in_a_store_error_marked_retried(
    store: S3Store, stub: Stubber, waits: list[float]
) -> None:
    for _ in range(3):
        stub.add_client_error("head_bucket", "503", http_status_code=503)
    with pytest.raises(StoreError) as raised:
        store.bucket_exists("b")
    assert raised.value.retried and waits == [1.0, 2.0]
    assert raised.value.__context__ is None  # nothing of botocore's to print after it


def test_a_refusal_is_not_retried_and_never_names_the_secret(
    store: S3Store, stub: Stubber, waits: list[float]
) -> None:
    stub.add_client_error("get_object", "SignatureDoesNotMatch", http_status_code=403)
    with pytest.raises(StoreError, match="the S3 keys were refused") as raised:
        store.download("b", "dir/k.txt")
    assert waits == [] and URL in str(raised.value) and SECRET not in str(raised.value)


def test_a_download_streams_chunks_with_lower_case_headers(store: S3Store, stub: Stubber) -> None:
    data = b"x" * (CHUNK + 1)
    body = StreamingBody(io.BytesIO(data), len(data))
    headers = {"etag": '"abc"', "content-length": str(len(data))}
    stub.add_response(
        "get_object", {"Body": body, "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": headers}}
    )
    got, chunks = store.download("b", "k")
    assert got["etag"] == "abc" and got["content-length"] == str(len(data))
    assert [len(c) for c in chunks] == [CHUNK, 1]


def test_a_missing_bucket_is_told_by_head_and_by_listing(store: S3Store, stub: Stubber) -> None:
    stub.add_client_error("head_bucket", "404", http_status_code=404)
    stub.add_client_error("list_objects_v2", "NoSuchBucket", http_status_code=404)
    assert not store.bucket_exists("b")
    with pytest.raises(BucketMissing, match=f"{ENDPOINT}/b"):
        store.listing("b", "")


def test_completion_checks_the_etag_and_asks_rgw_with_a_head(store: S3Store, stub: Stubber) -> None:
    parts = [Part(2, 1, "b" * 32, "b" * 32), Part(1, 5, "a" * 32, "a" * 32)]
    expected = multipart_etag(["a" * 32, "b" * 32])
    listed = [
        {"PartNumber": 1, "ETag": '"' + "a" * 32 + '"'},
        {"PartNumber": 2, "ETag": '"' + "b" * 32 + '"'},
    ]
    shape = {"Bucket": "b", "Key": "k", "UploadId": "u", "MultipartUpload": {"Parts": listed}}
    stub.add_response("complete_multipart_upload", {"ETag": ""}, shape)  # radosgw's empty <ETag>
    stub.add_response("head_object", {"ETag": f'"{expected}"'}, {"Bucket": "b", "Key": "k"})
    assert store.complete("b", "k", "u", parts) == expected
    stub.add_response("complete_multipart_upload", {"ETag": f'"{"0" * 32}-2"'}, shape)
    with pytest.raises(StoreError, match=f"{ENDPOINT}/b/k: the store reports ETag"):
        store.complete("b", "k", "u", parts)


def test_an_s3_store_cannot_write_a_manifest(store: S3Store) -> None:
    assert store.segments("b", RemoteObject("k", 1, "x")) == []
    with pytest.raises(StoreError, match="multipart"):
        store.put_manifest("b", "k", [])


def test_a_short_file_fails_before_any_request(store: S3Store) -> None:
    with pytest.raises(StoreError, match="ended 2 bytes early"):
        store.upload("b", "k", io.BytesIO(b"a"), 3)


def test_the_ca_bundle_is_read_for_https_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """AWS_CA_BUNDLE (the sandbox sets it) is where a site names its CA; http has no TLS to check."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # the user's AWS configuration is not read
    assert S3Store("https://a3s.fi", "a", "s")._client._endpoint.http_session._verify == str(
        tmp_path / "ca.pem"
    )
    assert S3Store(ENDPOINT, "a", "s")._client._endpoint.http_session._verify is False


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

"""S3Store against the stack's real S3: Swift's s3api or radosgw, with Keystone EC2 keys.

What the stager will rely on, on both servers: a bucket made and found, a listing that follows
every page, an upload whose MD5 the server checks and echoes, a multipart upload from several
threads whose ETag is the parts' (radosgw answers the completion with an empty one), and
failures that are `StoreError`s naming the object: refused keys, a missing bucket, and a
server asking to wait (a relay answering 503 with Retry-After, the store behind it untouched).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from allasrun.errors import BucketMissing, StoreError
from allasrun.staging.payload import IN_MEMORY
from allasrun.staging.s3 import SMALLEST_PART, S3Store
from allasrun.staging.store import Part, multipart_etag
from tests.stack.stackutil import Stack, s3_endpoint
from tests.stack.test_faults_swift import FaultRelay

BUCKET = "fault-s3-store"


def _store(stack: Stack, endpoint: str = "", secret: str = "", retries: int = 0, page: int = 1000) -> S3Store:
    return S3Store(
        endpoint or s3_endpoint(stack),
        stack.env["MINI_ALLAS_EC2_ACCESS"],
        secret or stack.env["MINI_ALLAS_EC2_SECRET"],
        retries=retries,
        page=page,
    )


def _botocore(stack: Stack) -> Any:
    """botocore's own client: an independent view of the server, for what S3Store does not do."""
    import botocore.session  # type: ignore[import-untyped]

    return botocore.session.Session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=s3_endpoint(stack),
        aws_access_key_id=stack.env["MINI_ALLAS_EC2_ACCESS"],
        aws_secret_access_key=stack.env["MINI_ALLAS_EC2_SECRET"],
    )


@pytest.fixture
def store(stack: Stack) -> S3Store:
    made = _store(stack)
    made.ensure_bucket(BUCKET)
    return made


@pytest.fixture
def key(store: S3Store) -> Iterator[str]:
    """This test's own prefix in the shared bucket, emptied after."""
    prefix = f"run-{uuid.uuid4().hex[:12]}/"
    yield prefix
    for obj in store.listing(BUCKET, prefix):
        store.delete(BUCKET, obj.name)


def test_a_bucket_is_made_once_and_found(stack: Stack) -> None:
    store = _store(stack)
    bucket = f"fault-s3-{uuid.uuid4().hex[:12]}"
    assert not store.bucket_exists(bucket)
    try:
        store.ensure_bucket(bucket)
        store.ensure_bucket(bucket)  # already there: fine
        assert store.bucket_exists(bucket) and store.listing(bucket, "") == []
    finally:  # radosgw lets a user have 1,000 buckets: a run must not use one up
        _botocore(stack).delete_bucket(Bucket=bucket)


def test_a_listing_follows_every_page(stack: Stack, store: S3Store, key: str) -> None:
    """Two keys a page: a listing that stopped at the first page would see 2 of 5.

    The names have what URL-encoded listings and continuation tokens must carry intact.
    """
    names = [f"{key}{index} ä+%2F&x=1?#.txt" for index in range(5)]
    for index, name in enumerate(names):
        store.upload(BUCKET, name, io.BytesIO(b"x" * index), index)
    listed = _store(stack, page=2).listing(BUCKET, key)
    assert [(o.name, o.size, o.md5) for o in listed] == [
        (name, i, hashlib.md5(b"x" * i).hexdigest()) for i, name in enumerate(names)
    ]


def test_an_upload_comes_back_byte_for_byte(store: S3Store, key: str) -> None:
    data = os.urandom(3 * 2**20 + 7)
    source = io.BytesIO(b"skip" + data)
    source.seek(4)
    md5, etag = store.upload(BUCKET, f"{key}a.bin", source, len(data))
    assert md5 == etag == hashlib.md5(data).hexdigest()
    headers, body = store.download(BUCKET, f"{key}a.bin")
    assert headers["etag"] == md5 and headers["content-length"] == str(len(data))
    assert hashlib.md5(b"".join(body)).hexdigest() == md5


@pytest.mark.parametrize("length", [IN_MEMORY, IN_MEMORY + 1], ids=["in-memory", "streamed"])
def test_uploads_read_in_memory_and_streamed_both_land_with_their_md5(
    stack: Stack, store: S3Store, key: str, tmp_path: Path, length: int
) -> None:
    """Up to IN_MEMORY bytes go with Content-MD5; above, hashed as sent, the ETag is the check."""
    data = os.urandom(length)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with path.open("rb") as source:
        md5, etag = store.upload(BUCKET, f"{key}f.bin", source, length)
    assert md5 == etag == hashlib.md5(data).hexdigest()
    assert _botocore(stack).head_object(Bucket=BUCKET, Key=f"{key}f.bin")["ContentLength"] == length


def test_names_with_spaces_plus_percent_unicode_and_controls_round_trip(store: S3Store, key: str) -> None:
    """Keys are quoted in the path and listed URL-encoded (`encoding-type=url`): nothing mangled."""
    names = [
        f"{key}{n}" for n in ("a b", "a+b", "50%", "~tilde", "dir/ä ö/€", "tab\tin", "esc\x1b", "q?x=1&y#z")
    ]
    names = [n.encode().decode("unicode_escape").encode("latin-1").decode() for n in names]
    for name in names:
        store.upload(BUCKET, name, io.BytesIO(name.encode()), len(name.encode()))
    assert sorted(o.name for o in store.listing(BUCKET, key)) == sorted(names)
    for name in names:
        assert b"".join(store.download(BUCKET, name)[1]) == name.encode()


def test_a_multipart_upload_from_three_threads_has_the_parts_etag(
    store: S3Store, key: str, tmp_path: Path
) -> None:
    """Parts of 5 MiB (S3's least) and a short last one, each with its Content-MD5, sent at once."""
    data = os.urandom(2 * SMALLEST_PART + 12345)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    name = f"{key}big.bin"
    upload = store.begin(BUCKET, name)

    def part(number: int) -> Part:
        offset = (number - 1) * SMALLEST_PART
        with path.open("rb") as source:
            source.seek(offset)
            return store.upload_part(
                BUCKET, name, upload, number, source, min(SMALLEST_PART, len(data) - offset)
            )

    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(part, [3, 1, 2]))
    assert all(p.md5 == p.etag for p in parts)
    etag = store.complete(BUCKET, name, upload, parts)
    chunks = [data[i : i + SMALLEST_PART] for i in range(0, len(data), SMALLEST_PART)]
    assert etag == multipart_etag([hashlib.md5(c).hexdigest() for c in chunks])
    [listed] = store.listing(BUCKET, name)
    assert (listed.size, listed.md5) == (len(data), etag)
    _, body = store.download(BUCKET, name)
    assert hashlib.md5(b"".join(body)).digest() == hashlib.md5(data).digest()


def test_an_aborted_upload_leaves_nothing(store: S3Store, key: str) -> None:
    name = f"{key}aborted.bin"
    upload = store.begin(BUCKET, name)
    store.upload_part(BUCKET, name, upload, 1, io.BytesIO(b"x" * SMALLEST_PART), SMALLEST_PART)
    store.abort(BUCKET, name, upload)
    store.abort(BUCKET, name, upload)  # gone already: fine
    assert store.listing(BUCKET, name) == []


def test_refused_keys_name_the_object_not_the_secret(stack: Stack, store: S3Store, key: str) -> None:
    wrong = "0" * len(stack.env["MINI_ALLAS_EC2_SECRET"])
    with pytest.raises(StoreError) as raised:
        _store(stack, secret=wrong, retries=3).upload(BUCKET, f"{key}a.txt", io.BytesIO(b"abc"), 3)
    message = str(raised.value)
    assert message.startswith(
        f"cannot upload {s3_endpoint(stack)}/{BUCKET}/{key}a.txt: the S3 keys were refused"
    )
    assert stack.env["MINI_ALLAS_EC2_SECRET"] not in message and wrong not in message
    assert not raised.value.retried and raised.value.__context__ is None


def test_a_missing_bucket_is_bucket_missing(stack: Stack) -> None:
    store, bucket = _store(stack), f"fault-s3-none-{uuid.uuid4().hex[:12]}"
    with pytest.raises(BucketMissing, match=f"{s3_endpoint(stack)}/{bucket}"):
        store.listing(bucket, "")
    with pytest.raises(BucketMissing, match=f"{s3_endpoint(stack)}/{bucket}/a.txt"):
        store.download(bucket, "a.txt")


def test_a_503_with_retry_after_is_waited_out(stack: Stack, store: S3Store, key: str) -> None:
    """The relay answers the first PUT of the object with 503 and Retry-After: 3.

    3 s is longer than the first backoff (1 s) plus botocore's wait for `100 Continue` (1 s,
    which the relay never sends), so a retry that ignored Retry-After would come too soon.
    """
    upstream = urlparse(s3_endpoint(stack)).port
    assert upstream is not None
    name = f"{key}throttled.txt"
    marker = f"/{BUCKET}/{name}".encode()
    with FaultRelay(upstream, method=b"PUT", marker=marker, status=503, count=1, retry_after="3") as fault:
        relayed = _store(stack, endpoint=f"http://127.0.0.1:{fault.port}", retries=3)
        md5, etag = relayed.upload(BUCKET, name, io.BytesIO(b"abc"), 3)
        landed = time.monotonic()
    assert md5 == etag == hashlib.md5(b"abc").hexdigest()
    assert len(fault.answered) == 1 and landed - fault.answered[0] >= 3.0
    assert [o.name for o in store.listing(BUCKET, name)] == [name]

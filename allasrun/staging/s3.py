"""`S3Store`: the `Store` protocol over S3 (Allas's `a3s.fi`, LUMI-O, RGW, Swift's s3api), on botocore.

botocore, not boto3/s3transfer: allasrun needs the requests, not a transfer manager. Each part
must carry its own Content-MD5 and give back the MD5 it read, which s3transfer's uploads do not
offer, and the stager already runs transfers in parallel. botocore also imports faster (120 ms
against 140 ms for boto3 and s3transfer, measured with `-X importtime`) and moved 256 MiB over the
lab's S3 as fast or faster. It is imported only when an `S3Store` is made, so a run that stages
over Swift alone never loads it.

One retry layer, as in `SwiftStore`: botocore's own retries are off (one attempt), and `_call`
sends a request again after no answer, a server error or throttling (SlowDown, 503, 429),
waiting as long as `Retry-After` asks (`retry.call`), capped. Every
failure becomes a `StoreError` in one place, `store_error`, naming `endpoint/bucket/key`; the
keys themselves never appear in a message.

The client reads no AWS configuration of the user (`~/.aws/config`, `AWS_PROFILE`,
`AWS_MAX_ATTEMPTS` ...): what allasrun does must not depend on a file it did not write. The one
exception is `AWS_CA_BUNDLE` for an https endpoint, which is how a site names its CA; an http
endpoint has no TLS, so the bundle (this sandbox sets one) is not read at all.

Addressing is path style (`endpoint/bucket/key`), which every S3 server allasrun meets
accepts, and which needs no DNS name per bucket. Payloads are not SHA-256-signed: every PUT
carries Content-MD5, which the server checks, so a second hash pass over each part would add
CPU and no safety. The CRC32 checksums that botocore 1.36+ adds by default are off for the
same reason: Content-MD5 is the check every S3 server makes, and the one the ETags vouch for.

Large objects are S3 multipart uploads, not segments and a manifest: `S3Store` is a
`store.PartStore` too (`begin`, `upload_part`, `complete`, `abort`), which `put.py` drives;
`segments` answers [] (an upload's parts cannot be listed once it is complete).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, Callable, Optional

from allasrun.errors import BucketMissing, StoreError
from allasrun.staging import retry
from allasrun.staging.retry import RATE_LIMITED, TIMEOUT, retry_after
from allasrun.staging.store import CHUNK, EMPTY_MD5, OVER_S3, Part, RemoteObject, Segment, multipart_etag

REGION = "us-east-1"  # Allas, LUMI-O and the lab ignore it, but SigV4 signs one
PAGE = 1000  # keys per listing page: S3's most
SMALLEST_PART = 5 * 1024 * 1024  # S3 refuses a smaller part but the last (EntityTooSmall)
LARGEST_PART = 5 * 1024**3
MAX_PARTS = 10_000
REFUSED_KEYS = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"})
MISSING_OBJECT = frozenset({"NoSuchKey", "404"})
BUSY = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"})


def part_size(size: int, wanted: int) -> int:
    """The part size for a `size`-byte object: `wanted`, raised to S3's bounds.

    At least 5 MiB (S3's smallest part), and large enough that the object needs at most
    10,000 parts; an object that 10,000 of the largest parts cannot hold is refused here,
    before any byte is sent.
    """
    needed = max(-(-size // MAX_PARTS), SMALLEST_PART, wanted)
    if needed > LARGEST_PART:
        raise StoreError(
            f"{size} bytes is more than an S3 object can hold ({MAX_PARTS} parts of {LARGEST_PART})"
        )
    return needed


class S3Store:
    """Object storage operations for the stager over S3; safe to use from many threads."""

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        retries: int = 3,
        *,
        timeout: tuple[float, float] = TIMEOUT,
        page: int = PAGE,
    ) -> None:
        self.endpoint = endpoint_url.rstrip("/")
        self._retries = retries
        self._page = page
        self._client = _client(self.endpoint, access_key, secret_key, timeout)

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object whose name starts with `prefix`, page after page."""
        found: list[RemoteObject] = []
        token: dict[str, Any] = {}
        while True:
            page = self._call(
                f"list {self.url(bucket)}{f' (prefix {prefix!r})' if prefix else ''}",
                self._client.list_objects_v2,
                Bucket=bucket,
                Prefix=prefix,
                MaxKeys=self._page,
                **token,
            )
            found += [self._listed(bucket, row) for row in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _listed(self, bucket: str, row: dict[str, Any]) -> RemoteObject:
        """One listed object; a large object written over Swift, as radosgw lists it, looked up.

        radosgw lists a Swift static large object over S3 by its manifest: the manifest's size
        with the MD5 of nothing, while a GET sends the whole object. A HEAD tells its real size;
        its ETag, the MD5 of the segments' MD5s, is kept in the form Swift's s3api lists such an
        object (`ETAG-N`): S3 cannot name the segments, so neither server vouches for more than
        the size (see `verify`).
        """
        name, size, etag = row["Key"], int(row["Size"]), _etag(row["ETag"])
        if not (etag == EMPTY_MD5 and size > 0):
            return RemoteObject(name, size, etag)
        head = self._call(
            f"look up {self.url(bucket, name)}", self._client.head_object, Bucket=bucket, Key=name
        )
        return RemoteObject(name, int(head["ContentLength"]), _etag(head.get("ETag", "")) + OVER_S3)

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket exists."""
        try:
            self._call(f"look up {self.url(bucket)}", self._client.head_bucket, Bucket=bucket)
        except StoreError as error:
            if error.http_status == 404:  # a HEAD's answer has no body, so no NoSuchBucket code
                return False
            raise
        return True

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it is missing; one made meanwhile by another thread is fine."""
        if self.bucket_exists(bucket):
            return
        try:
            self._call(f"create {self.url(bucket)}", self._client.create_bucket, Bucket=bucket)
        except StoreError as error:
            if "BucketAlreadyOwnedByYou" not in str(error):
                raise

    def segments(self, bucket: str, obj: RemoteObject) -> list[Segment]:
        """[]: S3 cannot list a multipart object's parts once the upload is complete."""
        return []

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """Response headers (lower-case names, as botocore gives them) and the body in chunks."""
        action = f"download {self.url(bucket, name)}"
        answer = self._call(action, self._client.get_object, Bucket=bucket, Key=name)
        headers = dict(answer["ResponseMetadata"]["HTTPHeaders"])
        headers["etag"] = _etag(headers.get("etag", ""))
        return headers, self._stream(answer["Body"], action)

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        """One PUT of `size` bytes from `source` (from its position), with Content-MD5.

        The file is read twice, to hash and to send; the server compares what it got with the
        MD5, so a file that changed between the reads is refused (BadDigest), never stored.
        """
        return self._send(
            f"upload {self.url(bucket, name)}", self._client.put_object, source, size, Key=name, Bucket=bucket
        )

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        """Not for S3: a large object is a multipart upload (`begin` ... `complete`)."""
        raise StoreError(f"cannot write a manifest for {self.url(bucket, name)}: S3 uses multipart uploads")

    def delete(self, bucket: str, name: str) -> None:
        """Delete one object; a missing one is fine (S3 says so itself, with 204)."""
        try:
            self._call(
                f"delete {self.url(bucket, name)}", self._client.delete_object, Bucket=bucket, Key=name
            )
        except StoreError as error:
            if error.http_status != 404:
                raise

    def part_size(self, size: int, wanted: int) -> int:
        """The part size for a `size`-byte object (`part_size`)."""
        return part_size(size, wanted)

    def begin(self, bucket: str, name: str) -> str:
        """Start a multipart upload; its upload id."""
        answer = self._call(
            f"start a multipart upload of {self.url(bucket, name)}",
            self._client.create_multipart_upload,
            Bucket=bucket,
            Key=name,
        )
        return str(answer["UploadId"])

    def upload_part(
        self, bucket: str, name: str, upload_id: str, number: int, source: BinaryIO, length: int
    ) -> Part:
        """Part `number` (from 1): `length` bytes from `source`'s position, with Content-MD5."""
        action = f"upload part {number} of {self.url(bucket, name)}"
        sent = self._send(
            action,
            self._client.upload_part,
            source,
            length,
            Bucket=bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
        )
        return Part(number, length, *sent)

    def complete(self, bucket: str, name: str, upload_id: str, parts: Sequence[Part]) -> str:
        """Join the parts into the object and check its ETag; the ETag.

        The parts' MD5s give the ETag S3 must report. RGW's answer carries an empty one, so
        the object is then asked about with a HEAD.
        """
        url = self.url(bucket, name)
        ordered = sorted(parts, key=lambda part: part.number)
        expected = multipart_etag([part.md5 for part in ordered])
        answer = self._call(
            f"complete the multipart upload of {url}",
            self._client.complete_multipart_upload,
            Bucket=bucket,
            Key=name,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'} for p in ordered]},
        )
        etag = _etag(answer.get("ETag", ""))
        if not etag:
            head = self._call(f"look up {url}", self._client.head_object, Bucket=bucket, Key=name)
            etag = _etag(head.get("ETag", ""))
        if etag != expected:
            raise StoreError(f"{url}: the store reports ETag {etag!r}, the parts read as {expected}")
        return etag

    def abort(self, bucket: str, name: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and its parts; one already gone is fine."""
        try:
            self._call(
                f"abort the multipart upload of {self.url(bucket, name)}",
                self._client.abort_multipart_upload,
                Bucket=bucket,
                Key=name,
                UploadId=upload_id,
            )
        except StoreError as error:
            if error.http_status != 404:
                raise

    def url(self, bucket: str, name: str = "") -> str:
        """Where a request goes, for messages: `endpoint/bucket/key`."""
        return f"{self.endpoint}/{bucket}" + (f"/{name}" if name else "")

    def _stream(self, body: Any, action: str) -> Iterator[bytes]:
        """The body in CHUNK pieces; an error while it streams is mapped like the request's."""
        try:
            yield from body.iter_chunks(CHUNK)
        except Exception as error:  # mapped, or re-raised, in one place
            raise store_error(error, action) from None
        finally:
            body.close()

    def _send(
        self, action: str, function: Callable[..., Any], source: BinaryIO, length: int, **kwargs: Any
    ) -> tuple[str, str]:
        """`length` bytes from `source` with their Content-MD5: the MD5 read and the ETag stored."""
        body = _Body(source, length)
        answer = self._call(
            action,
            function,
            again=body.rewind,
            Body=body,
            ContentLength=length,
            ContentMD5=body.content_md5,
            **kwargs,
        )
        return body.md5, _etag(answer.get("ETag", ""))

    def _call(
        self,
        action: str,
        function: Callable[..., Any],
        again: Optional[Callable[[], None]] = None,
        **kwargs: Any,
    ) -> Any:
        """One request, retried while the failure is transient; `again` rewinds an upload's body."""
        return retry.call(action, lambda: function(**kwargs), store_error, self._retries, again)


def store_error(error: Exception, action: str) -> StoreError:
    """Botocore's and urllib3's exceptions as one `StoreError` that says `cannot <action URL>: why`.

    Anything else (a bug) is re-raised as it is: it must not pass for a
    store failure that a retry could cure.
    """
    import urllib3
    from botocore import exceptions as boto  # type: ignore[import-untyped]  # loaded already

    if isinstance(error, StoreError):
        return error
    if isinstance(error, boto.ClientError):
        return _refusal(error.response, action)
    if isinstance(error, (boto.HTTPClientError, boto.ConnectionError, urllib3.exceptions.HTTPError, OSError)):
        return StoreError(f"cannot {action}: no answer ({error})", transient=True)
    if isinstance(error, boto.BotoCoreError):
        return StoreError(f"cannot {action}: {error}")
    raise error


def _refusal(response: dict[str, Any], action: str) -> StoreError:
    """An S3 error answer by its code: the bucket gone, the keys refused, or a busy server."""
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0) or None
    code = str(response.get("Error", {}).get("Code") or status)
    why = f"HTTP {status} {code}" if code != str(status) else f"HTTP {status}"
    if code == "NoSuchBucket":
        return BucketMissing(f"cannot {action}: the bucket does not exist ({why})", status)
    if code in REFUSED_KEYS:
        return StoreError(f"cannot {action}: the S3 keys were refused ({why})", status)
    if code in MISSING_OBJECT:
        return StoreError(f"cannot {action}: no such object ({why})", status)
    transient = code in BUSY or status is None or status >= 500 or status in RATE_LIMITED
    delay = retry_after(meta.get("HTTPHeaders"))
    return StoreError(f"cannot {action}: {why}", status, transient=transient, retry_after=delay)


def _etag(value: str) -> str:
    """An ETag without its quotes; a multipart one (`md5-N`) as it is."""
    return value.strip().strip('"')


class _Body:
    """`length` bytes of a file from its position, hashed once up front, sent in big reads.

    Content-MD5 goes in the request's head, so the MD5 is read before the body is sent;
    http.client asks for 8-16 KiB per read, and a read of at least CHUNK saves the trips.
    """

    def __init__(self, source: BinaryIO, length: int) -> None:
        self._source, self._start, self._length = source, source.tell(), length
        digest = hashlib.md5()
        for chunk in self._chunks():
            digest.update(chunk)
        if self._sent != length:
            raise StoreError(f"{getattr(source, 'name', 'the file')} ended {length - self._sent} bytes early")
        self.md5 = digest.hexdigest()
        self.content_md5 = base64.b64encode(digest.digest()).decode()
        self.rewind()

    def _chunks(self) -> Iterator[bytes]:
        self.rewind()
        while chunk := self.read(CHUNK):
            yield chunk

    def rewind(self) -> None:
        self._source.seek(self._start)
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._sent
        data = self._source.read(left if size < 0 else min(max(size, CHUNK), left))
        self._sent += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """What botocore calls to rewind a body; only to the start or where it already is."""
        if whence == os.SEEK_SET and offset == 0:
            self.rewind()
        return self.tell()

    def tell(self) -> int:
        return self._sent


_client_lock = threading.Lock()  # botocore's session loading is not thread-safe; clients are


def _client(endpoint: str, access_key: str, secret_key: str, timeout: tuple[float, float]) -> Any:
    """A botocore S3 client: path style, one attempt per call, no configuration of the user's."""
    import botocore.session  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    blank = (None, None, None, None)
    session = botocore.session.Session(
        session_vars={
            "profile": blank,
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
        }
    )
    config = Config(
        region_name=REGION,
        signature_version="s3v4",
        connect_timeout=timeout[0],
        read_timeout=timeout[1],
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=64,
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    https = endpoint.lower().startswith("https://")
    with _client_lock:
        return session.create_client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
            verify=(os.environ.get("AWS_CA_BUNDLE") or True) if https else False,
        )

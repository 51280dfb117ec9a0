"""`S3Store`: the `Store` protocol over S3 (Allas's `a3s.fi`, LUMI-O, RGW, Swift's s3api).

Requests are signed by botocore's SigV4 signer (the part of S3 that is easy to get subtly
wrong) and sent by `wire.Connections` (one keep-alive connection per worker thread), not by
botocore's client: on 2,000 small files the client's own CPU per request (1.54 ms against
0.45 ms, `wire`) was what the transfers waited for. botocore is imported only when an
`S3Store` is made, so a run that stages over Swift alone never loads it. Answers are S3's
XML, read here with ElementTree.

What every upload is checked by, reading the file once:
- an object or part up to `IN_MEMORY` bytes is read into memory and sent with its Content-MD5,
  which the server checks before it stores anything;
- a larger single PUT is hashed while it streams and carries no Content-MD5 (it would need a
  second read of the whole file first); the ETag the server answers, the MD5 of what it got,
  is compared by `put.py`, which deletes the object and tries again on a mismatch;
- a larger part of a multipart upload is hashed before it is sent (a second read, of one part)
  so that it can carry its Content-MD5: a part's corruption must not be found only at the
  completion, after every other part.
Payloads are not SHA-256-signed (`UNSIGNED-PAYLOAD`): an MD5 the server checks is the safety,
and a second hash of every byte would only cost CPU.

One retry layer, as in `SwiftStore`: `_call` sends a request again after no answer, a server
error or throttling (SlowDown, 503, 429), waiting as long as `Retry-After` asks (`retry.call`),
capped. Every failure becomes a `StoreError` in one place, `store_error` and `_refusal`,
naming `endpoint/bucket/key`; the keys themselves never appear in a message.

The store reads no AWS configuration of the user (`~/.aws/config`, `AWS_PROFILE` ...): what
allasrun does must not depend on a file it did not write. The one exception is `AWS_CA_BUNDLE`
for an https endpoint (`wire.ca_bundle`), which is how a site names its CA.

Addressing is path style (`endpoint/bucket/key`), which every S3 server allasrun meets
accepts, and which needs no DNS name per bucket. Large objects are S3 multipart uploads, not
segments and a manifest: `S3Store` is a `store.PartStore` too (`begin`, `upload_part`,
`complete`, `abort`), which `put.py` drives; `segments` answers [] (an upload's parts cannot be
listed once it is complete).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Optional
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

from allasrun.errors import BucketMissing, StoreError
from allasrun.staging import retry
from allasrun.staging.payload import IN_MEMORY, Hashed, whole
from allasrun.staging.retry import RATE_LIMITED, TIMEOUT, retry_after
from allasrun.staging.store import EMPTY_MD5, OVER_S3, Part, RemoteObject, Segment, multipart_etag
from allasrun.staging.wire import Body, Connections, Reply, Transport, ca_bundle, store_error, stream

REGION = "us-east-1"  # Allas, LUMI-O and the lab ignore it, but SigV4 signs one
PAGE = 1000  # keys per listing page: S3's most
SMALLEST_PART = 5 * 1024 * 1024  # S3 refuses a smaller part but the last (EntityTooSmall)
LARGEST_PART = 5 * 1024**3
MAX_PARTS = 10_000
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
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


class S3Store(retry.Requests):
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
        transport: Optional[Transport] = None,
    ) -> None:
        self.endpoint = endpoint_url.rstrip("/")
        parts = urlsplit(self.endpoint)
        self._scheme, self._host = parts.scheme, parts.netloc.lower()  # SigV4 signs the Host sent
        self._path = parts.path  # an endpoint below a path: every request goes under it
        self._retries = retries
        self._page = page
        self._sign = _signer(access_key, secret_key)
        self._transport = transport or Connections(
            self.endpoint, timeout, ca_bundle(self.endpoint, "AWS_CA_BUNDLE")
        )

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object whose name starts with `prefix`, page after page.

        Keys come URL-encoded (`encoding-type=url`): a name with a control character cannot be
        written in XML 1.0 otherwise.
        """
        found: list[RemoteObject] = []
        query = {"list-type": "2", "encoding-type": "url", "max-keys": str(self._page), "prefix": prefix}
        action = f"list {self.url(bucket)}{f' (prefix {prefix!r})' if prefix else ''}"
        while True:
            page = self._ask(action, "GET", bucket, query=query)
            found += [self._listed(bucket, row) for row in page if row.tag in (f"{NS}Contents", "Contents")]
            if _text(page, "IsTruncated") != "true":
                return found
            query = {**query, "continuation-token": _text(page, "NextContinuationToken")}

    def _listed(self, bucket: str, row: ElementTree.Element) -> RemoteObject:
        """One listed object; a large object written over Swift, as radosgw lists it, looked up.

        radosgw lists a Swift static large object over S3 by its manifest: the manifest's size
        with the MD5 of nothing, while a GET sends the whole object. A HEAD tells its real size;
        its ETag, the MD5 of the segments' MD5s, is kept in the form Swift's s3api lists such an
        object (`ETAG-N`): S3 cannot name the segments, so neither server vouches for more than
        the size (see `verify`).
        """
        name, size, etag = unquote_plus(_text(row, "Key")), int(_text(row, "Size")), _etag(_text(row, "ETag"))
        if not (etag == EMPTY_MD5 and size > 0):
            return RemoteObject(name, size, etag)
        head = self._headers(f"look up {self.url(bucket, name)}", "HEAD", bucket, name)
        try:
            return RemoteObject(name, int(head["content-length"]), _etag(head.get("etag", "")) + OVER_S3)
        except (KeyError, ValueError):
            raise StoreError(f"cannot look up {self.url(bucket, name)}: the answer has no size") from None

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket exists."""
        try:
            self._headers(f"look up {self.url(bucket)}", "HEAD", bucket)
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
            self._headers(f"create {self.url(bucket)}", "PUT", bucket, body=b"")
        except StoreError as error:
            if "BucketAlreadyOwnedByYou" not in str(error):
                raise

    def segments(self, bucket: str, obj: RemoteObject, *, exact: bool = False) -> list[Segment]:
        """[]: S3 cannot list a multipart object's parts once the upload is complete."""
        return []

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """Response headers (lower-case names) and the body in chunks of up to CHUNK bytes."""
        action = f"download {self.url(bucket, name)}"
        reply = self._call(action, "GET", bucket, name)
        reply.headers["etag"] = _etag(reply.headers.get("etag", ""))
        return reply.headers, stream(reply, action)

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        """One PUT of `size` bytes from `source` (from its position): the MD5 read and the ETag stored."""
        return self._send(f"upload {self.url(bucket, name)}", bucket, name, {}, source, size, checked=False)

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        """Not for S3: a large object is a multipart upload (`begin` ... `complete`)."""
        raise StoreError(f"cannot write a manifest for {self.url(bucket, name)}: S3 uses multipart uploads")

    def delete(self, bucket: str, name: str) -> None:
        """Delete one object; a missing one is fine (S3 says so itself, with 204)."""
        try:
            self._headers(f"delete {self.url(bucket, name)}", "DELETE", bucket, name)
        except StoreError as error:
            if error.http_status != 404:
                raise

    def part_size(self, size: int, wanted: int) -> int:
        """The part size for a `size`-byte object (`part_size`)."""
        return part_size(size, wanted)

    def begin(self, bucket: str, name: str) -> str:
        """Start a multipart upload; its upload id."""
        action = f"start a multipart upload of {self.url(bucket, name)}"
        return _text(self._ask(action, "POST", bucket, name, query={"uploads": ""}, body=b""), "UploadId")

    def upload_part(
        self, bucket: str, name: str, upload_id: str, number: int, source: BinaryIO, length: int
    ) -> Part:
        """Part `number` (from 1): `length` bytes from `source`'s position, with Content-MD5."""
        action = f"upload part {number} of {self.url(bucket, name)}"
        query = {"partNumber": str(number), "uploadId": upload_id}
        return Part(number, length, *self._send(action, bucket, name, query, source, length, checked=True))

    def complete(self, bucket: str, name: str, upload_id: str, parts: Sequence[Part]) -> str:
        """Join the parts into the object and check its ETag; the ETag.

        The parts' MD5s give the ETag S3 must report. RGW's answer carries an empty one, so
        the object is then asked about with a HEAD. S3 may answer 200 and still fail, with an
        `<Error>` for a body.
        """
        url = self.url(bucket, name)
        ordered = sorted(parts, key=lambda part: part.number)
        expected = multipart_etag([part.md5 for part in ordered])
        listed = "".join(
            f'<Part><PartNumber>{p.number}</PartNumber><ETag>"{p.etag}"</ETag></Part>' for p in ordered
        )
        body = f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()
        action = f"complete the multipart upload of {url}"
        answer = self._ask(action, "POST", bucket, name, query={"uploadId": upload_id}, body=body)
        if answer.tag in ("Error", f"{NS}Error"):
            raise _refusal(200, _text(answer, "Code"), {}, action)
        etag = _etag(_text(answer, "ETag"))
        if not etag:
            etag = _etag(self._headers(f"look up {url}", "HEAD", bucket, name).get("etag", ""))
        if etag != expected:
            raise StoreError(f"{url}: the store reports ETag {etag!r}, the parts read as {expected}")
        return etag

    def abort(self, bucket: str, name: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and its parts; one already gone is fine."""
        try:
            self._headers(
                f"abort the multipart upload of {self.url(bucket, name)}",
                "DELETE",
                bucket,
                name,
                query={"uploadId": upload_id},
            )
        except StoreError as error:
            if error.http_status != 404:
                raise

    def url(self, bucket: str, name: str = "") -> str:
        """Where a request goes, for messages: `endpoint/bucket/key`."""
        return f"{self.endpoint}/{bucket}" + (f"/{name}" if name else "")

    def _send(
        self,
        action: str,
        bucket: str,
        name: str,
        query: Mapping[str, str],
        source: BinaryIO,
        length: int,
        *,
        checked: bool,
    ) -> tuple[str, str]:
        """`length` bytes from `source`: the MD5 of what was sent, and the ETag the server answered.

        `checked`: the request must carry Content-MD5 even when that takes a second read.
        """
        headers = {"content-length": str(length)}
        if length <= IN_MEMORY:
            data, md5 = whole(source, length)
            headers["content-md5"] = base64.b64encode(bytes.fromhex(md5)).decode()
            reply = self._call(action, "PUT", bucket, name, query=query, headers=headers, body=data)
            reply.content()
            return md5, _etag(reply.headers.get("etag", ""))
        with contextlib.closing(Hashed(source, length)) as stream:
            if checked:
                stream.digest_ahead()
                headers["content-md5"] = base64.b64encode(stream.digest.digest()).decode()
            reply = self._call(
                action, "PUT", bucket, name, query=query, headers=headers, body=stream, again=stream.rewind
            )
            reply.content()
            return stream.md5(), _etag(reply.headers.get("etag", ""))

    def _ask(
        self,
        action: str,
        method: str,
        bucket: str,
        name: str = "",
        *,
        query: Mapping[str, str],
        body: Body = None,
    ) -> ElementTree.Element:
        """A request whose answer is S3's XML, parsed: an answer that does not parse is retried too."""

        def attempt() -> ElementTree.Element:
            return _xml(self._request(action, method, bucket, name, query, None, body).content(), action)

        return retry.call(action, attempt, store_error, self._retries)

    def _request(
        self,
        action: str,
        method: str,
        bucket: str,
        name: str,
        query: Optional[Mapping[str, str]],
        headers: Optional[Mapping[str, str]],
        body: Body,
    ) -> Reply:
        """One signed request; an answer of 300 or more is a refusal, by its XML `Code` if it has one."""
        target = f"{self._path}/{quote(bucket, safe='')}" + (f"/{quote(name, safe='/~')}" if name else "")
        if query:
            target += "?" + "&".join(
                f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
            )
        url = f"{self._scheme}://{self._host}{target}"
        signed = self._sign(method, url, {"host": self._host, **(headers or {})})
        reply = self._transport.send(method, target, signed, body)
        if reply.status >= 300:
            content = reply.content()
            code = _text(_xml(content, action), "Code") if content.strip().startswith(b"<") else ""
            raise _refusal(reply.status, code or str(reply.status), reply.headers, action)
        return reply


def _refusal(status: int, code: str, headers: Mapping[str, str], action: str) -> StoreError:
    """An S3 error answer by its code: the bucket gone, the keys refused, or a busy server."""
    why = f"HTTP {status} {code}" if code != str(status) else f"HTTP {status}"
    if code == "NoSuchBucket":
        return BucketMissing(f"cannot {action}: the bucket does not exist ({why})", status)
    if code in REFUSED_KEYS:
        return StoreError(f"cannot {action}: the S3 keys were refused ({why})", status)
    if code in MISSING_OBJECT:
        return StoreError(f"cannot {action}: no such object ({why})", status)
    transient = code in BUSY or status >= 500 or status in RATE_LIMITED
    return StoreError(
        f"cannot {action}: {why}", status, transient=transient, retry_after=retry_after(headers)
    )


def _xml(content: bytes, action: str) -> ElementTree.Element:
    """An answer's XML; one that does not parse is the server's failure, worth a retry."""
    try:
        return ElementTree.fromstring(content)
    except ElementTree.ParseError as error:
        raise StoreError(f"cannot {action}: the answer is not S3's XML ({error})", transient=True) from None


def _text(element: ElementTree.Element, tag: str) -> str:
    """The text of `tag` under `element`, with or without S3's namespace; "" if it is absent."""
    found = element.find(f"{NS}{tag}")
    if found is None:
        found = element.find(tag)
    return (found.text or "") if found is not None else ""


def _etag(value: str) -> str:
    """An ETag without its quotes; a multipart one (`md5-N`) as it is."""
    return value.strip().strip('"')


def _signer(access_key: str, secret_key: str) -> Any:
    """A function signing a request (method, url, headers) with SigV4: the headers to send.

    botocore's own signer, told not to hash payloads: `payload_signing_enabled` off, as in a
    botocore client's S3 configuration.
    """
    from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]
    from botocore.credentials import Credentials  # type: ignore[import-untyped]

    auth = S3SigV4Auth(Credentials(access_key, secret_key), "s3", REGION)
    config = Config(s3={"payload_signing_enabled": False})

    def sign(method: str, url: str, headers: Mapping[str, str]) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        request.context["client_config"] = config
        auth.add_auth(request)
        return dict(request.headers.items())

    return sign

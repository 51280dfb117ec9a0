"""`SwiftStore`: the `Store` protocol over python-swiftclient, authenticated by a TokenSource.

It speaks both dialects of the Swift API that Allas users meet: OpenStack Swift, and Ceph's
RADOS Gateway, which Allas runs. RGW lists a static large object by its manifest (the
manifest's size, the MD5 of nothing, no `slo_etag`) and answers `?multipart-manifest=get`
with an empty body; the object is then asked about with a HEAD, and its segments are found
by listing `<bucket>_segments` (the layout allasrun and the swift CLI upload) and kept only
if they add up to the object's size and ETag. Both list a dynamic large object (rclone's chunked
files: a zero-byte manifest with `X-Object-Manifest`) as an empty object, so every empty
object that is not a folder marker is asked about with a HEAD too; a DLO's segments are the
objects under its manifest's prefix.

Every request has a timeout (`retry.TIMEOUT`: connect, and each read of the socket), so a server
that stops answering fails the call instead of hanging the job.

Retries are made by `retry.call`, not by swiftclient (which ignores `Retry-After`).

The only module that imports swiftclient. A keystoneauth plugin hands swiftclient the
source's current token; on a 401 swiftclient calls `invalidate`, which asks the source for a
renewal, so a transfer that outlives a token carries on instead of failing. Every call goes
through `_call`, and `store_error` is the one place swiftclient's and requests' exceptions
become `StoreError`s that name the URL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Optional
from urllib.parse import unquote

import urllib3
from keystoneauth1 import plugin as ks_plugin
from keystoneauth1 import session as ks_session
from swiftclient import client as swift
from swiftclient.exceptions import ClientException
from swiftclient.utils import LengthWrapper

from allasrun.errors import BucketMissing, StoreError
from allasrun.staging import retry
from allasrun.staging.store import CHUNK, EMPTY_MD5, Credentials, RemoteObject, Segment, slo_etag


class _SourceAuth(ks_plugin.BaseAuthPlugin):
    """Serves the source's token to swiftclient and renews it when Swift says 401."""

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def get_token(self, session: ks_session.Session) -> str:
        return self._credentials.token.value

    def get_endpoint(self, session: ks_session.Session, **kwargs: Any) -> str:
        return self._credentials.token.storage_url

    def invalidate(self) -> bool:
        self._credentials.renew(self._credentials.token)
        return True


class SwiftStore:
    """Object storage operations for the stager; safe to use from many threads."""

    def __init__(
        self, credentials: Credentials, retries: int = 3, timeout: tuple[float, float] = retry.TIMEOUT
    ) -> None:
        self._credentials = credentials
        self._session = ks_session.Session(auth=_SourceAuth(credentials))
        self._retries = retries
        self._timeout = timeout
        self._local = threading.local()

    def _conn(self) -> swift.Connection:
        """One connection per thread: swiftclient's are not thread-safe."""
        conn: Optional[swift.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = swift.Connection(session=self._session, retries=0, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object whose name starts with `prefix` (the full listing, paged)."""
        try:
            _, rows = self._call(
                f"list {self._url(bucket)}{f' (prefix {prefix!r})' if prefix else ''}",
                self._conn().get_container,
                bucket,
                prefix=prefix or None,
                full_listing=True,
            )
        except StoreError as error:
            if error.http_status == 404:
                raise BucketMissing(f"bucket {bucket!r} does not exist ({self._url(bucket)})") from None
            raise
        return [self._listed(bucket, row) for row in rows if "subdir" not in row]

    def _listed(self, bucket: str, row: dict[str, Any]) -> RemoteObject:
        """One listing row as an object; what may be a manifest is looked up."""
        name, size = row["name"], int(row["bytes"])
        if "slo_etag" in row:  # Swift: the object's ETag beside the manifest's hash
            return RemoteObject(name, size, row["slo_etag"].strip('"'), slo=True)
        listed = RemoteObject(name, size, row["hash"])
        if row["hash"] != EMPTY_MD5 or listed.folder:
            return listed
        # RGW lists an SLO by its manifest (a size, the MD5 of nothing); both list a DLO as empty
        headers = self._call(f"look up {self._url(bucket, name)}", self._conn().head_object, bucket, name)
        real = int(headers["content-length"])
        etag = headers["etag"].strip('"')
        if headers.get("x-static-large-object", "").lower() == "true":
            return RemoteObject(name, real, etag, slo=True)
        manifest = unquote(headers.get("x-object-manifest", ""))
        return (
            RemoteObject(name, real, etag, dlo=manifest)
            if manifest and real
            else RemoteObject(name, real, etag)
        )

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket (container) exists."""
        try:
            self._call(f"look up {self._url(bucket)}", self._conn().head_container, bucket)
        except StoreError as error:
            if error.http_status == 404:
                return False
            raise
        return True

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it is missing."""
        if not self.bucket_exists(bucket):
            self._call(f"create {self._url(bucket)}", self._conn().put_container, bucket)

    def segments(self, bucket: str, obj: RemoteObject) -> list[Segment]:
        """The segments of a large object in order; [] if they cannot be known."""
        if obj.dlo:
            return self._dlo_segments(obj.dlo)
        _, body = self._call(
            f"read the manifest of {self._url(bucket, obj.name)}",
            self._conn().get_object,
            bucket,
            obj.name,
            query_string="multipart-manifest=get",
        )
        if body.strip():  # Swift: the manifest itself
            return [
                Segment(row["name"].lstrip("/"), int(row["bytes"]), row["hash"]) for row in json.loads(body)
            ]
        return self._segments_by_name(f"{bucket}_segments", obj)  # RGW: an empty body

    def _dlo_segments(self, manifest: str) -> list[Segment]:
        """A DLO's segments: every object under its manifest's `container/prefix`.

        In name order, the order in which Swift and RGW join them.
        """
        container, _, prefix = manifest.partition("/")
        try:
            listed = self.listing(container, prefix)
        except BucketMissing:
            return []
        return [Segment(f"{container}/{part.name}", part.size, part.md5) for part in listed]

    def _segments_by_name(self, container: str, obj: RemoteObject) -> list[Segment]:
        """The segments under `<name>/slo/<stamp>/<size>/<segment size>/<index>` that make `obj`.

        Several uploads of one name leave several such groups until they are cleaned up; the
        one whose sizes and MD5s give the object's size and ETag is the object's.
        """
        try:
            listed = self.listing(container, f"{obj.name}/slo/")
        except BucketMissing:
            return []
        groups: dict[str, dict[int, RemoteObject]] = {}
        for part in listed:
            group, _, index = part.name.rpartition("/")
            if index.isdigit():
                groups.setdefault(group, {})[int(index)] = part
        for members in groups.values():
            if sorted(members) != list(range(len(members))):
                continue  # a gap: not a whole upload
            found = [
                Segment(f"{container}/{members[i].name}", members[i].size, members[i].md5)
                for i in sorted(members)
            ]
            if sum(s.size for s in found) == obj.size and slo_etag(found) == obj.md5:
                return found
        return []

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """Response headers and the body in 1 MiB chunks."""
        action = f"download {self._url(bucket, name)}"
        headers, body = self._call(action, self._conn().get_object, bucket, name, resp_chunk_size=CHUNK)
        return headers, _stream(body, action)

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        """PUT `size` bytes from `source` (from its position); the MD5 read and Swift's ETag."""
        wrapper = _BigReads(source, size, md5=True)
        etag = self._call(
            f"upload {self._url(bucket, name)}",
            self._conn().put_object,
            bucket,
            name,
            wrapper,
            content_length=size,
            again=wrapper.reset,
        )
        return wrapper.get_md5sum(), str(etag)

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        """Create a static large object from uploaded segments (Swift checks each ETag)."""
        manifest = json.dumps([{"path": f"/{s.path}", "etag": s.md5, "size_bytes": s.size} for s in segments])
        self._call(
            f"write the manifest of {self._url(bucket, name)}",
            self._conn().put_object,
            bucket,
            name,
            manifest,
            query_string="multipart-manifest=put",
        )

    def delete(self, bucket: str, name: str) -> None:
        """Delete one object; a missing one is fine."""
        try:
            self._call(f"delete {self._url(bucket, name)}", self._conn().delete_object, bucket, name)
        except StoreError as error:
            if error.http_status != 404:
                raise

    def _url(self, bucket: str, name: str = "") -> str:
        """Where a request goes, for messages: the storage URL, bucket and object."""
        return f"{self._credentials.token.storage_url.rstrip('/')}/{bucket}" + (f"/{name}" if name else "")

    def _call(
        self,
        action: str,
        function: Callable[..., Any],
        *args: Any,
        again: Optional[Callable[[], None]] = None,
        **kwargs: Any,
    ) -> Any:
        """One request, retried while the failure is transient; `again` rewinds an upload's source."""
        return retry.call(action, lambda: function(*args, **kwargs), store_error, self._retries, again)


def _stream(body: Iterator[bytes], action: str) -> Iterator[bytes]:
    """The body, with errors while it streams (a reset, a timeout) mapped like the request's."""
    try:
        yield from body
    except Exception as error:  # mapped, or re-raised as it is
        raise store_error(error, action) from None


def store_error(error: Exception, action: str) -> StoreError:
    """swiftclient's, requests' and urllib3's exceptions as a StoreError; anything else re-raised."""
    if isinstance(error, StoreError):
        return error
    if isinstance(error, ClientException):
        code = error.http_status
        status = f"HTTP {code}" if code else "no response"
        message = f"cannot {action}: {status} {error.http_reason or ''}".rstrip()
        transient = not code or code >= 500 or code in retry.RATE_LIMITED
        delay = retry.retry_after(error.http_response_headers)
        return StoreError(message, code, transient=transient, retry_after=delay)
    if isinstance(error, (OSError, urllib3.exceptions.HTTPError)):  # requests' errors are OSErrors
        return StoreError(f"cannot {action}: {error}", transient=True)
    if isinstance(error, ValueError):  # a listing or manifest that is not JSON/UTF-8
        return StoreError(f"cannot {action}: malformed response ({error})")
    raise error


class _BigReads(LengthWrapper):  # type: ignore[misc]  # swiftclient has no type hints
    """Reads at least 1 MiB at a time.

    http.client would ask for 8 KiB per read, each one a trip through Python for the length
    bookkeeping and the MD5 update.
    """

    def read(self, size: int = -1) -> bytes:
        data: bytes = super().read(max(size, CHUNK) if size >= 0 else size)
        return data

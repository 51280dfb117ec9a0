"""Swift through python-swiftclient, authenticated by the keeper's current token.

The only module that imports swiftclient. A keystoneauth plugin hands swiftclient the token
the keeper holds; on a 401 swiftclient calls `invalidate`, which asks the keeper for a
renewal, so a transfer that outlives a token carries on instead of failing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional

from keystoneauth1 import plugin as ks_plugin
from keystoneauth1 import session as ks_session
from swiftclient import client as swift
from swiftclient.exceptions import ClientException
from swiftclient.utils import LengthWrapper

from allasrun.auth.token import Token
from allasrun.errors import AllasrunError

CHUNK = 1024 * 1024


class StoreError(AllasrunError):
    """Swift refused or failed a request (after swiftclient's own retries)."""

    def __init__(self, message: str, http_status: Optional[int] = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class BucketMissing(StoreError):
    """The bucket (container) does not exist."""


@dataclass(frozen=True)
class RemoteObject:
    """One listed object. `md5` is the content's MD5, except for SLO manifests (slo=True)."""

    name: str
    size: int
    md5: str
    slo: bool = False


@dataclass(frozen=True)
class Segment:
    """One segment of a static large object, as its manifest lists it."""

    path: str
    size: int
    md5: str


class _KeeperAuth(ks_plugin.BaseAuthPlugin):
    """Serves the keeper's token to swiftclient and renews it when Swift says 401."""

    def __init__(self, current: Callable[[], Token], refresh: Callable[[Token], Token]) -> None:
        super().__init__()
        self._current = current
        self._refresh = refresh

    def get_token(self, session: ks_session.Session) -> str:
        return self._current().value

    def get_endpoint(self, session: ks_session.Session, **kwargs: Any) -> str:
        return self._current().storage_url

    def invalidate(self) -> bool:
        self._refresh(self._current())
        return True


class Store:
    """Object storage operations for the stager; safe to use from many threads."""

    def __init__(
        self,
        current: Callable[[], Token],
        refresh: Callable[[Token], Token],
        retries: int = 3,
    ) -> None:
        self._session = ks_session.Session(auth=_KeeperAuth(current, refresh))
        self._retries = retries
        self._local = threading.local()

    def _conn(self) -> swift.Connection:
        """One connection per thread: swiftclient's are not thread-safe."""
        conn: Optional[swift.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            conn = swift.Connection(session=self._session, retries=self._retries, starting_backoff=1)
            self._local.conn = conn
        return conn

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object whose name starts with `prefix` (the full listing, paged)."""
        try:
            _, rows = self._call(
                f"list {bucket}/{prefix}",
                self._conn().get_container,
                bucket,
                prefix=prefix or None,
                full_listing=True,
            )
        except StoreError as error:
            if error.http_status == 404:
                raise BucketMissing(f"bucket {bucket!r} does not exist") from None
            raise
        return [
            RemoteObject(row["name"], int(row["bytes"]), row["hash"], "slo_etag" in row)
            for row in rows
            if "subdir" not in row
        ]

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket (container) exists."""
        try:
            self._conn().head_container(bucket)
        except ClientException as error:
            if error.http_status == 404:
                return False
            raise _error(error, f"check bucket {bucket}") from None
        return True

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it is missing."""
        if not self.bucket_exists(bucket):
            self._call(f"create bucket {bucket}", self._conn().put_container, bucket)

    def segments(self, bucket: str, name: str) -> list[Segment]:
        """The manifest of a static large object: its segments in order."""
        _, body = self._call(
            f"read the manifest of {bucket}/{name}",
            self._conn().get_object,
            bucket,
            name,
            query_string="multipart-manifest=get",
        )
        return [Segment(row["name"].lstrip("/"), int(row["bytes"]), row["hash"]) for row in json.loads(body)]

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """Response headers and the body in 1 MiB chunks."""
        headers, body = self._call(
            f"download {bucket}/{name}", self._conn().get_object, bucket, name, resp_chunk_size=CHUNK
        )
        return headers, body

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        """PUT `size` bytes from `source` (from its position); the MD5 read and Swift's ETag."""
        wrapper = _BigReads(source, size, md5=True)
        etag = self._call(
            f"upload {bucket}/{name}", self._conn().put_object, bucket, name, wrapper, content_length=size
        )
        return wrapper.get_md5sum(), str(etag)

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        """Create a static large object from uploaded segments (Swift checks each ETag)."""
        manifest = json.dumps([{"path": f"/{s.path}", "etag": s.md5, "size_bytes": s.size} for s in segments])
        self._call(
            f"write the manifest of {bucket}/{name}",
            self._conn().put_object,
            bucket,
            name,
            manifest,
            query_string="multipart-manifest=put",
        )

    def delete(self, bucket: str, name: str) -> None:
        """Delete one object; a missing one is fine."""
        try:
            self._conn().delete_object(bucket, name)
        except ClientException as error:
            if error.http_status != 404:
                raise _error(error, f"delete {bucket}/{name}") from None

    def _call(self, action: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ClientException as error:
            raise _error(error, action) from None
        except OSError as error:  # requests' connection errors are OSErrors
            raise StoreError(f"cannot {action}: {error}") from None
        except ValueError as error:  # a listing or manifest that is not JSON/UTF-8
            raise StoreError(f"cannot {action}: malformed response ({error})") from None


class _BigReads(LengthWrapper):  # type: ignore[misc]  # swiftclient has no type hints
    """Reads at least 1 MiB at a time.

    http.client would ask for 8 KiB per read, each one a trip through Python for the length
    bookkeeping and the MD5 update.
    """

    def read(self, size: int = -1) -> bytes:
        data: bytes = super().read(max(size, CHUNK) if size >= 0 else size)
        return data


def _error(error: ClientException, action: str) -> StoreError:
    status = f"HTTP {error.http_status}" if error.http_status else "no response"
    return StoreError(f"cannot {action}: {status} {error.http_reason or ''}".rstrip(), error.http_status)

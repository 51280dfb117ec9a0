"""The seam between the stager and an object store: what it asks, and what comes back.

The stager speaks only this protocol. `swift.SwiftStore` implements it over swiftclient; the
tests' `FakeStore` implements it in memory; an S3 store can plug in here too. Every failure
a store reports is a `StoreError` (exit 69 if it ever reaches the CLI) that names the URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from allasrun.auth import Token

CHUNK = 1024 * 1024  # bytes per read and per streamed chunk, both ways
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@dataclass(frozen=True)
class RemoteObject:
    """One listed object: its real size and its ETag.

    The ETag (`md5`) is the content's MD5 for an object uploaded in one piece. A static large
    object's (slo=True) and a dynamic large object's (`dlo`, its `X-Object-Manifest`
    `container/prefix`, as rclone's chunked files are) is the MD5 of its segments' MD5s
    (`slo_etag`); an S3 multipart upload's is `md5-N` (`multipart_etag`).
    """

    name: str
    size: int
    md5: str
    slo: bool = False
    dlo: str = ""

    @property
    def large(self) -> bool:
        """Whether the object is made of segments that the store can list."""
        return self.slo or bool(self.dlo)

    @property
    def folder(self) -> bool:
        """A folder marker: the zero-byte `name/` that web consoles make for "create folder"."""
        return self.name.endswith("/") and self.size == 0


@dataclass(frozen=True)
class Segment:
    """One segment of a static large object, as its manifest lists it: `bucket/name`."""

    path: str
    size: int
    md5: str


def slo_etag(segments: Sequence[Segment]) -> str:
    """A large object's ETag (SLO or DLO), as Swift and RGW compute it from its segments."""
    return hashlib.md5("".join(s.md5 for s in segments).encode()).hexdigest()


def multipart_etag(part_md5s: Sequence[str]) -> str:
    """An S3 multipart upload's ETag: the MD5 of its parts' binary MD5s, `-` the part count."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"


class Credentials(Protocol):
    """What a store needs of authentication: the token now, and a newer one after a 401.

    `auth.TokenSource` is one; staging does not need to know more of it.
    """

    @property
    def token(self) -> Token:
        """The token to send."""
        ...

    def renew(self, stale: Token) -> Token:
        """A token newer than `stale`, which the store was refused with."""
        ...


class Store(Protocol):
    """Object storage operations the stager uses; implementations are safe across threads."""

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object whose name starts with `prefix`; `BucketMissing` if there is no bucket."""
        ...

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket exists."""
        ...

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it is missing."""
        ...

    def segments(self, bucket: str, obj: RemoteObject) -> list[Segment]:
        """A large object's segments in order (SLO or DLO); [] when the store cannot tell them."""
        ...

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        """Response headers (lower-case names) and the body in chunks."""
        ...

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        """PUT `size` bytes from `source` (from its position): the MD5 read and the ETag stored."""
        ...

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        """Create a static large object from uploaded segments."""
        ...

    def delete(self, bucket: str, name: str) -> None:
        """Delete one object; a missing one is fine."""
        ...

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

    The ETag is the content's MD5, except for a static large object (slo=True), whose ETag
    is the MD5 of its segments' MD5s (`slo_etag`).
    """

    name: str
    size: int
    md5: str
    slo: bool = False


@dataclass(frozen=True)
class Segment:
    """One segment of a static large object, as its manifest lists it: `bucket/name`."""

    path: str
    size: int
    md5: str


def slo_etag(segments: Sequence[Segment]) -> str:
    """A static large object's ETag, as Swift and RGW compute it from its segments."""
    return hashlib.md5("".join(s.md5 for s in segments).encode()).hexdigest()


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
        """A static large object's segments in order; [] when the store cannot tell them."""
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

"""The seam between the stager and an object store: what it asks, and what comes back.

The stager speaks only this protocol. `swift.SwiftStore` implements it over `wire` (Swift's API),
`s3.S3Store` over `wire` with botocore's signer (and `PartStore` too: large objects as multipart
uploads), the tests' `FakeStore` in memory. Every failure a store reports is a `StoreError`
(exit 69 if it ever reaches the CLI) that names the URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from allasrun.auth import Token

# Bytes per read and per streamed chunk, both ways. 256 KiB, not 1 MiB: a 1 GiB download from
# radosgw took 3.35-4.1 s against 4.2-4.6 s (64 KiB: 3.5-4.0 s), for the same kernel and MD5 work.
CHUNK = 256 * 1024
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
# How Swift's s3api lists a Swift large object, `ETAG-N` (N as such): its segments' hash, with
# segments S3 cannot name. S3Store lists radosgw's alike; a GET may send the ETag without it.
OVER_S3 = "-N"


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of a static large object, as its manifest lists it: `bucket/name`."""

    path: str
    size: int
    md5: str


@dataclass(frozen=True)
class Extracted:
    """A server's answer to a tar bundle (`BulkStore.extract`).

    `unpacked`: the server unpacked it at all (a server without the bulk middleware takes the
    request for a container update and stores nothing). `status`: the bundle's own status line
    (`201 Created`, `400 Bad Request` when some members failed); `failed`: those members, by
    object name, with the server's status for each.
    """

    unpacked: bool
    status: str
    failed: dict[str, str]


@dataclass(frozen=True)
class Part:
    """One uploaded part of an S3 multipart upload: its number (from 1), size, MD5 read, ETag stored."""

    number: int
    size: int
    md5: str
    etag: str


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

    def segments(self, bucket: str, obj: RemoteObject, *, exact: bool = False) -> list[Segment]:
        """A large object's segments in order (SLO or DLO); [] when the store cannot tell them.

        Without `exact`, segments whose content is the object's are enough (to verify or read
        it by); with it, only those the object is known to list: a sweep deletes by them.
        """
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


@runtime_checkable
class PartStore(Protocol):
    """A store whose large objects are multipart uploads (S3), not segments and a manifest (Swift).

    Stage-out asks a store whether it is one: the two forms differ in more than their calls
    (S3 keeps an unfinished upload's parts out of sight, Swift's segments are objects to sweep).
    """

    def part_size(self, size: int, wanted: int) -> int:
        """The part size for a `size`-byte object: `wanted`, raised to the store's limits."""
        ...

    def begin(self, bucket: str, name: str) -> str:
        """Start a multipart upload; its id."""
        ...

    def upload_part(
        self, bucket: str, name: str, upload_id: str, number: int, source: BinaryIO, length: int
    ) -> Part:
        """Part `number`: `length` bytes from `source`'s position."""
        ...

    def complete(self, bucket: str, name: str, upload_id: str, parts: Sequence[Part]) -> str:
        """Join the parts into the object, checked against their MD5s; its ETag (`md5-N`)."""
        ...

    def abort(self, bucket: str, name: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts."""
        ...


@runtime_checkable
class BulkStore(Protocol):
    """A store that unpacks a tar into objects in one request (Swift's bulk middleware, radosgw)."""

    def extract(self, bucket: str, base: str, archive: bytes) -> Extracted:
        """Store each member of the tar as `base` + its name in `bucket` (container level only)."""
        ...

    def listing_between(self, bucket: str, first: str, last: str) -> list[RemoteObject]:
        """The objects named from `first` to `last` (inclusive, in name order): a bundle's, to verify."""
        ...

"""`FakeStore`: the `Store` protocol in memory, with Swift's semantics and injectable faults.

The stager's rules (verify, retry, skip identical, clean up segments) are tested without a
server. That only proves something if the fake answers as Swift does where the stager relies
on it: a missing bucket is `BucketMissing` when listed; a static large object (SLO) is listed
with its total size and the MD5 of its segments' MD5 hex strings (not the content's MD5), its
manifest names segments `bucket/name`, and downloading it streams the segments' bytes; a
dynamic large object (DLO, rclone's chunked files) is listed as `SwiftStore` resolves it (its
real size, the same kind of ETag, its `X-Object-Manifest` prefix) and streams whatever lies
under that prefix when downloaded; an S3 multipart upload has an `md5-N` ETag; an upload
reads exactly `size` bytes from the file's position. Faults are deterministic: errors queued
for the next calls of a method, a byte flipped in a download, a download that breaks after its
first chunk, a wrong ETag stored on upload, and a hook run before every call. Every call is
logged as (method, bucket, name).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Optional

from allasrun.errors import BucketMissing, StoreError
from allasrun.staging.store import Extracted, Part, RemoteObject, Segment, multipart_etag, slo_etag


def md5(data: bytes) -> str:
    """The hex MD5 of `data`."""
    return hashlib.md5(data).hexdigest()


def unavailable(what: str = "request") -> StoreError:
    """The error a store reports for an HTTP 503 (a cut stream is one too): worth another try."""
    return StoreError(f"cannot {what}: HTTP 503 Service Unavailable", 503, transient=True)


@dataclass
class Stored:
    """One object: its bytes and ETag, or, for an SLO, its manifest."""

    data: bytes
    etag: str
    manifest: Optional[list[Segment]] = None
    dlo: str = ""  # a DLO's `container/prefix`


class FakeStore:
    """In-memory buckets of objects; safe across the stager's threads."""

    def __init__(self, chunk: int = 700) -> None:
        self.buckets: dict[str, dict[str, Stored]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.chunk = chunk  # bytes per downloaded chunk: not a divisor of segment sizes on purpose
        self.corrupt: set[str] = set()  # object names whose download has one byte flipped
        self.broken: set[str] = set()  # object names whose download breaks after its first chunk
        self.bad_etag: set[str] = set()  # an upload of a name starting with one gets a wrong ETag
        self.before: Optional[Callable[[str, str, str], None]] = None  # runs before every call
        self._faults: dict[str, list[Optional[BaseException]]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------ for tests

    def fail(self, method: str, *errors: Optional[BaseException]) -> None:
        """Raise these errors, one per call, on the next calls of `method` (None: let one pass)."""
        with self._lock:
            self._faults.setdefault(method, []).extend(errors)

    def count(self, method: str) -> int:
        """How many times `method` was called."""
        return sum(1 for call in self.calls if call[0] == method)

    def put_object(self, bucket: str, name: str, data: bytes) -> None:
        """Store an object directly, as another client would (not logged)."""
        with self._lock:
            self.buckets.setdefault(bucket, {})[name] = Stored(data, md5(data))

    def put_slo(self, bucket: str, name: str, data: bytes, segment_size: int) -> list[Segment]:
        """Store `data` as an SLO with segments in `<bucket>_segments` (not logged)."""
        segments = []
        for index, offset in enumerate(range(0, len(data), segment_size)):
            part = data[offset : offset + segment_size]
            self.put_object(f"{bucket}_segments", f"{name}/{index:08d}", part)
            segments.append(Segment(f"{bucket}_segments/{name}/{index:08d}", len(part), md5(part)))
        with self._lock:
            self.buckets.setdefault(bucket, {})[name] = Stored(b"", slo_etag(segments), segments)
        return segments

    def put_dlo(self, bucket: str, name: str, data: bytes, segment_size: int) -> None:
        """Store `data` as rclone does with `--swift-chunk-size`: segments, then a DLO manifest."""
        prefix = f"{name}/1796000000.5/{len(data)}/"
        for index, offset in enumerate(range(0, len(data), segment_size)):
            self.put_object(
                f"{bucket}_segments", f"{prefix}{index:08d}", data[offset : offset + segment_size]
            )
        with self._lock:
            self.buckets.setdefault(bucket, {})[name] = Stored(b"", "", dlo=f"{bucket}_segments/{prefix}")

    def put_multipart(self, bucket: str, name: str, data: bytes, part_size: int) -> str:
        """Store `data` as an S3 multipart upload in parts of `part_size`: its ETag is `md5-N`."""
        parts = [md5(data[offset : offset + part_size]) for offset in range(0, len(data), part_size)]
        etag = multipart_etag(parts)
        with self._lock:
            self.buckets.setdefault(bucket, {})[name] = Stored(data, etag)
        return etag

    def content(self, bucket: str, name: str) -> bytes:
        """An object's content as a download would stream it (segments joined for an SLO, a DLO)."""
        stored = self.buckets[bucket][name]
        if stored.dlo:
            return b"".join(self._stored(*s.path.split("/", 1)).data for s in self._dlo_segments(stored.dlo))
        if stored.manifest is None:
            return stored.data
        parts = []
        for segment in stored.manifest:
            segment_bucket, _, segment_name = segment.path.partition("/")
            parts.append(self._stored(segment_bucket, segment_name).data)  # Swift: 409
        return b"".join(parts)

    def names(self, bucket: str) -> list[str]:
        """The object names in a bucket, sorted ([] if there is no bucket)."""
        return sorted(self.buckets.get(bucket, {}))

    # ------------------------------------------------------------ the Store protocol

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        self._enter("listing", bucket, prefix)
        return self._rows(bucket, lambda name: name.startswith(prefix))

    def _rows(self, bucket: str, wanted: Callable[[str], bool]) -> list[RemoteObject]:
        """The listing of the objects whose names are wanted, in name order."""
        with self._lock:
            if bucket not in self.buckets:
                raise BucketMissing(f"bucket {bucket!r} does not exist")
            return [
                self._listed(name, stored)
                for name, stored in sorted(self.buckets[bucket].items())
                if wanted(name)
            ]

    def bucket_exists(self, bucket: str) -> bool:
        self._enter("bucket_exists", bucket, "")
        return bucket in self.buckets

    def ensure_bucket(self, bucket: str) -> None:
        self._enter("ensure_bucket", bucket, "")
        with self._lock:
            self.buckets.setdefault(bucket, {})

    def segments(self, bucket: str, obj: RemoteObject, *, exact: bool = False) -> list[Segment]:
        if obj.dlo:
            self._enter("segments", bucket, obj.name)
            with self._lock:
                return self._dlo_segments(obj.dlo)
        return self.manifest(bucket, obj.name)

    def manifest(self, bucket: str, name: str) -> list[Segment]:
        """The segments of a stored large object, as a Swift manifest lists them."""
        self._enter("segments", bucket, name)
        manifest = self._stored(bucket, name).manifest
        if manifest is None:
            raise StoreError(f"cannot read the manifest of {bucket}/{name}: not a large object")
        return list(manifest)

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        self._enter("download", bucket, name)
        with self._lock:
            data = bytearray(self.content(bucket, name))
            etag = self._listed(name, self._stored(bucket, name)).md5
        if name in self.corrupt and data:
            data[len(data) // 2] ^= 0x01
        chunks = [bytes(data[i : i + self.chunk]) for i in range(0, len(data), self.chunk)]
        body = _breaking(chunks, f"download {bucket}/{name}") if name in self.broken else iter(chunks)
        return {"etag": f'"{etag}"', "content-length": str(len(data))}, body

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        self._enter("upload", bucket, name)
        data = source.read(size)
        if len(data) != size:
            raise StoreError(f"cannot upload {bucket}/{name}: sent {len(data)} of {size} bytes")
        return md5(data), self._keep(bucket, name, data)

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        self._enter("put_manifest", bucket, name)
        with self._lock:
            for segment in segments:  # Swift checks each segment's size and ETag
                segment_bucket, _, segment_name = segment.path.partition("/")
                stored = self._stored(segment_bucket, segment_name)
                if (len(stored.data), stored.etag) != (segment.size, segment.md5):
                    raise StoreError(f"cannot write the manifest of {bucket}/{name}: HTTP 400", 400)
            self.buckets[bucket][name] = Stored(b"", slo_etag(segments), list(segments))

    def delete(self, bucket: str, name: str) -> None:
        self._enter("delete", bucket, name)
        with self._lock:
            self.buckets.get(bucket, {}).pop(name, None)

    # ------------------------------------------------------------ internals

    def _enter(self, method: str, bucket: str, name: str) -> None:
        with self._lock:
            self.calls.append((method, bucket, name))
        if self.before is not None:
            self.before(method, bucket, name)
        with self._lock:
            queued = self._faults.get(method)
            error = queued.pop(0) if queued else None
        if error is not None:
            raise error

    def _keep(self, bucket: str, name: str, data: bytes) -> str:
        """Store an uploaded object (a wrong ETag for a name in `bad_etag`); its ETag."""
        with self._lock:
            if bucket not in self.buckets:
                raise StoreError(f"cannot upload {bucket}/{name}: HTTP 404 Not Found", 404)
            wrong = any(name.startswith(start) for start in self.bad_etag)
            etag = md5(b"stored wrong") if wrong else md5(data)
            self.buckets[bucket][name] = Stored(data, etag)
        return etag

    def _stored(self, bucket: str, name: str) -> Stored:
        stored = self.buckets.get(bucket, {}).get(name)
        if stored is None:
            raise StoreError(f"cannot get {bucket}/{name}: HTTP 404 Not Found", 404)
        return stored

    def _dlo_segments(self, manifest: str) -> list[Segment]:
        container, _, prefix = manifest.partition("/")
        return [
            Segment(f"{container}/{part}", len(stored.data), stored.etag)
            for part, stored in sorted(self.buckets.get(container, {}).items())
            if part.startswith(prefix)
        ]

    def _listed(self, name: str, stored: Stored) -> RemoteObject:
        if stored.dlo:
            segments = self._dlo_segments(stored.dlo)
            return RemoteObject(name, sum(s.size for s in segments), slo_etag(segments), dlo=stored.dlo)
        if stored.manifest is None:
            return RemoteObject(name, len(stored.data), stored.etag)
        return RemoteObject(name, sum(s.size for s in stored.manifest), stored.etag, slo=True)


def _breaking(chunks: list[bytes], action: str) -> Iterator[bytes]:
    """The first chunk, then the error SwiftStore raises for a connection reset mid-body."""
    yield from chunks[:1]
    broken = "('Connection broken: IncompleteRead(700 bytes read)')"
    raise StoreError(f"cannot {action}: {broken}", transient=True)


class FakePartStore(FakeStore):
    """A FakeStore whose large objects are multipart uploads, as S3's are (a `PartStore`)."""

    def __init__(self, chunk: int = 700) -> None:
        super().__init__(chunk)
        self.uploads: dict[str, dict[int, bytes]] = {}  # unfinished uploads' parts, by upload id

    def part_size(self, size: int, wanted: int) -> int:
        return wanted

    def begin(self, bucket: str, name: str) -> str:
        self._enter("begin", bucket, name)
        with self._lock:
            upload_id = f"upload-{len(self.uploads)}"
            self.uploads[upload_id] = {}
        return upload_id

    def upload_part(
        self, bucket: str, name: str, upload_id: str, number: int, source: BinaryIO, length: int
    ) -> Part:
        self._enter("upload_part", bucket, name)
        data = source.read(length)
        with self._lock:
            self.uploads[upload_id][number] = data
        return Part(number, length, md5(data), md5(data))

    def complete(self, bucket: str, name: str, upload_id: str, parts: Sequence[Part]) -> str:
        self._enter("complete", bucket, name)
        with self._lock:
            stored = self.uploads.pop(upload_id)
            data = b"".join(stored[part.number] for part in parts)
            etag = multipart_etag([part.md5 for part in parts])
            self.buckets[bucket][name] = Stored(data, etag)
        return etag

    def abort(self, bucket: str, name: str, upload_id: str) -> None:
        self._enter("abort", bucket, name)
        with self._lock:
            self.uploads.pop(upload_id, None)


class FakeBulkStore(FakeStore):
    """A FakeStore that unpacks tar bundles as Swift's bulk middleware and radosgw do (a `BulkStore`).

    Faults, by object name: members it refuses (`refuse`), drops without a word (`drop`), or
    stores with their last byte cut (`mangle`); and a server without the middleware (`unpacks`
    False: the body ignored).
    """

    def __init__(self, chunk: int = 700) -> None:
        super().__init__(chunk)
        self.refuse: set[str] = set()
        self.drop: set[str] = set()
        self.mangle: set[str] = set()
        self.unpacks = True
        self.members: list[list[str]] = []  # each bundle's object names, as the server read them

    def extract(self, bucket: str, base: str, archive: bytes) -> Extracted:
        self._enter("extract", bucket, base)
        if not self.unpacks:
            return Extracted(False, "202 Accepted", {})
        failed: dict[str, str] = {}
        names: list[str] = []
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for info in tar:
                name = base + info.name
                names.append(name)
                reader = tar.extractfile(info)
                data = reader.read() if reader is not None else b""
                if name in self.refuse:
                    failed[name] = "400 Bad Request"
                elif name not in self.drop:
                    self._keep(bucket, name, data[:-1] if name in self.mangle else data)
        with self._lock:
            self.members.append(names)
        status = "400 Bad Request" if failed else "201 Created"
        return Extracted(True, status, failed)

    def listing_between(self, bucket: str, first: str, last: str) -> list[RemoteObject]:
        self._enter("listing_between", bucket, first)
        return self._rows(bucket, lambda name: first <= name <= last)

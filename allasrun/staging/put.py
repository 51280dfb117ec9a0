"""The stage-out side of the stager: how one file is uploaded, segmented, checked for change.

Stage-out uploads new and changed files, verifies the stored ETag, and never touches the local
files. A file larger than `segment-size` goes as segments and a manifest (an SLO) over Swift, as a
multipart upload over S3 (a `PartStore`). An identical
object already stored is skipped, which makes a re-run resume.

Segments are `<bucket>_segments/<name>/slo/<stamp>/<size>/<segment size>/<index>`, the stamp
`TIME-RANDOM.allasrun-HOST-PID` (`segment_stamp`). A segment there that the object `<name>` does
not list is an orphan: left by an upload that was killed, or whose manifest's fate was unknown
(its answer lost: it may have landed, so its segments were kept rather than risk a manifest
pointing at nothing). Each upload or skip of a file under a name that has segments removes the
orphans under it, small files too: a file that shrank below the segment size must not leave the
segments of its killed large upload behind. But another job may be uploading the same name at
the same time, from this host or another: a sweep removes only the sets whose upload is over
(`abandoned`), and never one the object lists when the sweep deletes.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from allasrun.errors import BucketMissing, Corrupt, LocalFileError, StoreError
from allasrun.log import log
from allasrun.process import HOST, alive
from allasrun.staging.plan import DEFAULT_SEGMENT, Settings, StageOut, is_pattern
from allasrun.staging.select import LocalFile, Unfollowed, common_prefix, local_files, local_path, open_inside
from allasrun.staging.store import Part, PartStore, RemoteObject, Segment, Store, slo_etag
from allasrun.staging.transfer import DONE, FAILED, MISSING, REFUSED, SKIPPED, Retry, Transfer, not_moved
from allasrun.staging.verify import MD5, PER_PART, PER_SEGMENT, identical_by

MAX_SEGMENTS = 1000  # segments one large object's manifest may list (Swift's and radosgw's default)
LARGEST_SEGMENT = DEFAULT_SEGMENT  # each segment is one object: 5 GiB at most
_SEGMENT = re.compile(r"(?P<stamp>[^/]+)/[0-9]+/[0-9]+/[0-9]+")  # <stamp>/<size>/<segment size>/<index>
_OWNED = re.compile(r"[0-9]+\.[0-9]+-[0-9a-f]{8}\.allasrun-(?P<host>.+)-(?P<pid>[0-9]+)", re.DOTALL)
_STARTED = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # every stamp's start: when its upload began
# Longer than any one upload can last (see `abandoned`): a set of another host's, or of an
# earlier allasrun that did not name its owner, is an orphan only once this old.
ABANDONED_AFTER = 14 * 24 * 3600
_UPLOADING: set[str] = set()  # this process's large uploads in flight, by stamp
_UPLOADING_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Put:
    """One local file to upload under one object name."""

    spec: StageOut
    file: LocalFile
    name: str
    remote: Optional[RemoteObject]
    segmented: bool = False  # segments in allasrun's layout lay under the name when it was listed


class Uploader:
    """Stage-out of single files from `workdir`, for the stager that runs them.

    `retry` runs an attempt again after a store's error. `swift` gives the same buckets over
    Swift (Allas serves one namespace both ways): an S3 stage-out then writes a large file as
    Swift segments and a manifest when the directive asks (`--large=segments`) or, unless it
    asks for multipart, when the bucket's large objects are segments already (`<bucket>_segments`
    exists). Each form checks out only under its own protocol (an S3 multipart object read over
    Swift with md5-N, a Swift one over S3 by its size alone), so a bucket is kept to one.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        workdir: Path,
        retry: Retry,
        swift: Optional[Callable[[], Store]] = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.workdir = workdir
        self._retry = retry
        self._segment_buckets: set[str] = set()
        self._swift = swift
        self._in_swift: Optional[Uploader] = None
        self._forms: dict[str, bool] = {}  # bucket -> its large objects are Swift segments
        self._lock = threading.Lock()

    def resolve(self, spec: StageOut) -> tuple[list[Put], list[Transfer]]:
        """The local files a stage-out directive names, each with its object name.

        A link leading out of the tree is a REFUSED record; one not followed inside it, a warning.
        """
        target = spec.address()
        found, links = local_files(local_path(spec.source, self.workdir), spec.source)
        prefix = spec.key if spec.key.endswith("/") or not spec.key else spec.key + "/"
        refused = [_link_record(spec, prefix, link) for link in links if link.refused]
        for link in links:
            if not link.refused:
                log.warning("stage-out %s: %s: %s", spec.where, link.path, link.reason)
        if not found:
            reason = f"nothing matches {spec.source}"
            return [], refused or [not_moved("stage-out", spec.where, spec.source, target, MISSING, reason)]
        single = len(found) == 1 and not is_pattern(spec.source) and found[0].relative == ""
        names = [
            spec.key
            if single and spec.key and not spec.key.endswith("/")
            else prefix + (f.relative or f.path.name)
            for f in found
        ]
        try:
            listing = self.store.listing(spec.bucket, common_prefix(names))
        except BucketMissing:
            listing = []
        remote = {obj.name: obj for obj in listing}
        parts = isinstance(self.store, PartStore)  # S3 has no segments to sweep
        segmented = set() if parts else self._segmented(spec.bucket, common_prefix(names))
        puts = [
            Put(spec, file, name, remote.get(name), name in segmented) for file, name in zip(found, names)
        ]
        return puts, refused

    def _segmented(self, bucket: str, prefix: str) -> set[str]:
        """The names under `prefix` that have segments: one listing per directive, not one per file.

        Only these are swept after a small file's upload or skip; a failure costs the sweep,
        not the stage-out.
        """
        try:
            listed = self.store.listing(f"{bucket}_segments", prefix)
        except BucketMissing:
            return set()
        except StoreError as error:
            log.warning("%s: segments of earlier uploads not looked for: %s", prefix or bucket, error)
            return set()
        names = (obj.name.rpartition("/slo/") for obj in listed)
        return {name for name, slo, rest in names if slo and _SEGMENT.fullmatch(rest)}

    def put(self, put: Put, record: Transfer) -> None:
        """Upload from one open file, checked to lie in its tree; gone by now: MISSING."""
        try:
            source = open_inside(put.file)
        except FileNotFoundError:
            record.status, record.error = MISSING, f"{put.file.path} vanished after it was listed"
            return
        except OSError as error:
            raise LocalFileError.of(error, "read") from None
        with source:
            self._put_open(put, source, record)

    def _put_open(self, put: Put, source: BinaryIO, record: Transfer) -> None:
        """Skip, refuse or upload; what changed while it went is removed again and reported."""
        before = os.fstat(source.fileno())
        size, remote = before.st_size, put.remote
        swift = self._in_segments(put) if size > self.settings.segment_size else None
        if swift is not None:
            self._over_swift(swift, put, source, record)
            return
        old = self.store.segments(put.spec.bucket, remote) if remote and remote.large else None
        if self.settled(put, source, record, old):
            return
        segments: list[Segment] = []
        store, verified = self.store, MD5
        if size > self.settings.segment_size and isinstance(store, PartStore):
            md5, verified = self._retry(lambda: self._upload_parts(store, put, source, size)), PER_PART
        elif size > self.settings.segment_size:
            step = _segment_step(put.file, size, self.settings.segment_size)
            md5 = self._retry(lambda: self._upload_large(put, source, size, step, segments))
            verified = PER_SEGMENT
        else:
            md5 = self._retry(lambda: self._upload(put, source, size))
        if remote and remote.slo:  # the replaced SLO's segments, whatever replaced it; a DLO's
            self._delete_segments(old)  # prefix is not known to hold its segments alone
        moved = changed(put.file, before, source)
        if moved:  # what landed may be a torn read: it goes, and the file is reported
            self.store.delete(put.spec.bucket, put.name)
            self._delete_segments(segments)
            record.status, record.error = moved
            return
        record.status, record.bytes, record.md5, record.verified = DONE, size, md5, verified
        if segments or put.segmented:
            self._sweep(put, segments)

    def settled(
        self, put: Put, source: BinaryIO, record: Transfer, old: Optional[list[Segment]] = None
    ) -> bool:
        """Whether the file needs no upload, its record filled in: SKIPPED or REFUSED.

        Identical to its object (and its orphaned segments swept: `old` are the object's), or
        protected by `--no-overwrite`.
        """
        remote = put.remote
        if remote is None:
            return False
        identical = identical_by(source, remote, old, self.settings.segment_size)
        if identical:
            record.status, record.md5, record.verified = SKIPPED, remote.md5, identical
            if remote.slo or put.segmented:
                self._sweep(put, old or [])
            return True
        if not put.spec.overwrite:
            record.status = REFUSED
            record.error = f"{record.destination} exists and differs; not replaced (--no-overwrite)"
            return True
        return False

    def _in_segments(self, put: Put) -> Optional[Uploader]:
        """The Swift uploader if this large file goes to its S3 bucket as segments (see the class)."""
        if not isinstance(self.store, PartStore) or put.spec.large == "multipart":
            return None
        if self._swift is None:
            if put.spec.large == "segments":
                raise StoreError(
                    f"{put.spec.where}: --large=segments needs Swift; this run has S3 keys alone"
                )
            return None
        if put.spec.large != "segments" and not self._bucket_in_segments(put.spec, self._swift):
            return None
        with self._lock:
            if self._in_swift is None:
                self._in_swift = Uploader(self._swift(), self.settings, self.workdir, self._retry)
            return self._in_swift

    def _bucket_in_segments(self, spec: StageOut, swift: Callable[[], Store]) -> bool:
        """Whether the bucket's large objects are Swift segments: `<bucket>_segments` exists."""
        bucket = spec.bucket
        with self._lock:
            if bucket not in self._forms:
                self._forms[bucket] = swift().bucket_exists(f"{bucket}_segments")
                if self._forms[bucket]:
                    log.info(
                        "%s: large files go as Swift segments, the form of the bucket's large objects "
                        "(%s_segments); --large=multipart to choose S3's",
                        spec.address(""),
                        bucket,
                    )
            return self._forms[bucket]

    @staticmethod
    def _over_swift(swift: Uploader, put: Put, source: BinaryIO, record: Transfer) -> None:
        """The file uploaded as Swift does it, the object looked up over Swift (S3 sees an SLO badly)."""
        bucket = put.spec.bucket
        try:
            listed = {obj.name: obj for obj in swift.store.listing(bucket, put.name)}
        except BucketMissing:
            listed = {}
        segmented = put.name in swift._segmented(bucket, put.name)
        swift._put_open(Put(put.spec, put.file, put.name, listed.get(put.name), segmented), source, record)

    def _upload(self, put: Put, source: BinaryIO, size: int) -> str:
        return checked_upload(self.store, put.spec.bucket, put.name, source, size, f"{put.file.path}")

    def _upload_large(self, put: Put, source: BinaryIO, size: int, step: int, landed: list[Segment]) -> str:
        """Segments into `<bucket>_segments`, then a manifest; a failure cleans its segments.

        The manifest's segments go into `landed`. Their names are new for every upload
        (`segment_stamp`): a rewrite of the same size and mtime must not reuse, and then delete
        as the replaced object's, the segments of its own manifest. A manifest that got no answer
        may have landed: the object is looked up, and its segments stay unless it was refused.
        """
        bucket = f"{put.spec.bucket}_segments"
        if bucket not in self._segment_buckets:
            self.store.ensure_bucket(bucket)
            self._segment_buckets.add(bucket)
        with uploading(segment_stamp()) as stamp:
            return self._upload_segments(put, source, size, step, landed, bucket, stamp)

    def _upload_segments(
        self, put: Put, source: BinaryIO, size: int, step: int, landed: list[Segment], bucket: str, stamp: str
    ) -> str:
        uploaded: list[Segment] = []
        try:
            for index, offset in enumerate(range(0, size, step)):
                length = min(step, size - offset)
                name = f"{put.name}/slo/{stamp}/{size}/{step}/{index:08d}"
                source.seek(offset)
                md5, etag = self.store.upload(bucket, name, source, length)
                uploaded.append(Segment(f"{bucket}/{name}", length, md5))
                if etag != md5:
                    raise Corrupt(f"{put.file.path}: segment {index} stored as {etag}, read as {md5}")
        except BaseException:
            self._discard(uploaded)
            raise
        try:
            self.store.put_manifest(put.spec.bucket, put.name, uploaded)
        except StoreError as error:
            if error.http_status and 400 <= error.http_status < 500:  # refused: nothing points at them
                self._discard(uploaded)
                raise
            if not self._landed(put, size, uploaded):
                raise  # unknown: the segments stay (orphans at worst, removed by the next upload)
        landed[:] = uploaded
        return slo_etag(uploaded)

    def _upload_parts(self, store: PartStore, put: Put, source: BinaryIO, size: int) -> str:
        """A multipart upload: each part with its Content-MD5, the whole checked by its `md5-N` ETag.

        Any failure aborts it, so the server keeps none of its parts (an unfinished upload's
        parts are out of sight, but they take space). A completion whose answer was lost is
        aborted too (an abort of a completed upload changes nothing) and sent again.
        """
        bucket, step = put.spec.bucket, store.part_size(size, self.settings.segment_size)
        upload_id = store.begin(bucket, put.name)
        parts: list[Part] = []
        try:
            for number, offset in enumerate(range(0, size, step), start=1):
                source.seek(offset)
                part = store.upload_part(
                    bucket, put.name, upload_id, number, source, min(step, size - offset)
                )
                if part.etag != part.md5:
                    raise Corrupt(f"{put.file.path}: part {number} stored as {part.etag}, read as {part.md5}")
                parts.append(part)
            return store.complete(bucket, put.name, upload_id, parts)
        except BaseException:
            with contextlib.suppress(StoreError):
                store.abort(bucket, put.name, upload_id)
            raise

    def _landed(self, put: Put, size: int, segments: list[Segment]) -> bool:
        """Whether the object now stored under the name is the manifest of these segments."""
        try:
            listed = self.store.listing(put.spec.bucket, put.name)
        except StoreError:
            return False
        etag = slo_etag(segments)
        return any(o.name == put.name and (o.size, o.md5) == (size, etag) for o in listed)

    def _sweep(self, put: Put, kept: list[Segment]) -> None:
        """Remove the orphans under the name: segments in allasrun's layout the object does not list.

        Only after the object is in place (uploaded or found identical), and only the sets whose
        upload is over. Those are chosen first and the object is read after: an upload that is
        over can no longer put its manifest, so one that did is seen, and its segments stay.
        A failure costs a warning: the object itself is whole, and the next upload of the name
        tries again.
        """
        bucket, prefix = f"{put.spec.bucket}_segments", f"{put.name}/slo/"
        keep = {segment.path for segment in kept}
        now = time.time()
        try:
            orphans = {
                f"{bucket}/{obj.name}"
                for obj in self.store.listing(bucket, prefix)
                if (found := _SEGMENT.fullmatch(obj.name[len(prefix) :])) and abandoned(found["stamp"], now)
            } - keep
            listed_now = self._listed_segments(put) if orphans else set()
            if listed_now is None:
                return
            for path in sorted(orphans - listed_now):
                self.store.delete(bucket, path.partition("/")[2])
        except BucketMissing:
            return
        except StoreError as error:
            log.warning("%s: segments of earlier uploads were not all removed: %s", put.name, error)

    def _listed_segments(self, put: Put) -> Optional[set[str]]:
        """The segments the object now stored under the name lists; None if they cannot be told.

        Another job's upload may have replaced the object since this one's: its segments are
        the object's now.
        """
        try:
            listed = self.store.listing(put.spec.bucket, put.name)
        except BucketMissing:
            return set()
        now = next((obj for obj in listed if obj.name == put.name), None)
        if now is None or not now.large:
            return set()
        segments = self.store.segments(put.spec.bucket, now, exact=True)
        return {segment.path for segment in segments} if segments else None

    def _discard(self, segments: list[Segment]) -> None:
        """Best effort after a failed upload: what cannot be deleted now, the next upload sweeps."""
        for segment in segments:
            bucket, _, name = segment.path.partition("/")
            with contextlib.suppress(StoreError):
                self.store.delete(bucket, name)

    def _delete_segments(self, segments: Optional[Iterable[Segment]]) -> None:
        for segment in segments or ():
            bucket, _, name = segment.path.partition("/")
            self.store.delete(bucket, name)


def checked_upload(store: Store, bucket: str, name: str, source: BinaryIO, size: int, what: str) -> str:
    """One PUT of `size` bytes from the start of `source`, kept only if the store's ETag is the MD5 read.

    Its MD5. A mismatch deletes the object (a later read must not find it) and raises Corrupt,
    which the stager retries; `what` names the data in the message.
    """
    source.seek(0)
    md5, etag = store.upload(bucket, name, source, size)
    if etag != md5:
        store.delete(bucket, name)
        raise Corrupt(f"{what}: the store kept ETag {etag}, the file read as MD5 {md5}")
    return md5


def segment_stamp(pid: Optional[int] = None, started: Optional[float] = None) -> str:
    """A large upload's own part of its segments' names: `TIME-RANDOM.allasrun-HOST-PID`.

    The time and random part make it new for every upload; the host and process id tell a
    sweep whether the upload may still be running.
    """
    when = time.time() if started is None else started
    return f"{when:.6f}-{uuid.uuid4().hex[:8]}.allasrun-{HOST}-{pid or os.getpid()}"


def abandoned(stamp: str, now: float) -> bool:
    """Whether the upload that made the segment set `stamp` is over: its set may be removed.

    This process's own: when it is not uploading it now. Another process's on this host: when
    that process is gone (like stage-in's temporary files). Any other, or one whose process id
    was taken by another process: when the stamp's time is ABANDONED_AFTER ago. That is longer
    than one upload can last: inside a batch job an upload cannot outlive the job, and the
    longest job CSC's clusters run is 14 days (Puhti's longrun partition); outside one, 14 days
    is the largest object (1000 segments of 5 GiB) at 4.3 MiB/s, slower than any link to Allas
    that works. Clock skew between nodes is minutes. Stamps of older allasruns
    (`TIME-RANDOM`) and of the swift CLI (the file's mtime) name no owner: only their age
    counts. A stamp that starts with no time is not allasrun's and stays.
    """
    owned = _OWNED.fullmatch(stamp)
    if owned and owned["host"] == HOST:
        pid = int(owned["pid"])
        if pid == os.getpid():
            with _UPLOADING_LOCK:
                return stamp not in _UPLOADING
        if not alive(pid):
            return True
    started = _STARTED.match(stamp)
    return started is not None and now - float(started[0]) > ABANDONED_AFTER


@contextlib.contextmanager
def uploading(stamp: str) -> Iterator[str]:
    """Marks a large upload as in flight in this process while its segments and manifest go."""
    with _UPLOADING_LOCK:
        _UPLOADING.add(stamp)
    try:
        yield stamp
    finally:
        with _UPLOADING_LOCK:
            _UPLOADING.discard(stamp)


def put_record(put: Put) -> Transfer:
    """The record an upload starts with, for its job to fill in."""
    return Transfer("stage-out", put.spec.where, str(put.file.path), put.spec.address(put.name))


def _link_record(spec: StageOut, prefix: str, link: Unfollowed) -> Transfer:
    destination = spec.address(f"{prefix}{link.relative}")
    return not_moved("stage-out", spec.where, str(link.path), destination, REFUSED, link.reason)


def listed_size(file: LocalFile) -> int:
    """A file's size for the progress total; one gone by now counts 0 (its upload reports it)."""
    try:
        return file.real.stat().st_size
    except OSError:
        return 0


def _segment_step(file: LocalFile, size: int, wanted: int) -> int:
    """The segment size for one file: the one asked for, raised so the manifest stays within bounds.

    A manifest lists at most MAX_SEGMENTS segments and Swift refuses a longer one only after
    every segment is uploaded, so a small `segment-size` is raised here (and said); a file
    that not even the largest segments can hold fails before any byte is sent.
    """
    needed = -(-size // MAX_SEGMENTS)
    if needed > LARGEST_SEGMENT:
        raise StoreError(
            f"{file.path} is {size} bytes, more than a large object can hold "
            f"({MAX_SEGMENTS} segments of {LARGEST_SEGMENT} bytes)"
        )
    if needed <= wanted:
        return wanted
    log.info(
        "%s: %d-byte segments would be %d, over the %d a large object may have: %d-byte segments instead",
        file.path,
        wanted,
        -(-size // wanted),
        MAX_SEGMENTS,
        needed,
    )
    return needed


def changed(file: LocalFile, before: os.stat_result, source: BinaryIO) -> Optional[tuple[str, str]]:
    """Status and reason if the bytes sent may not be the file's: it changed, was replaced or vanished.

    Whether its name still leads to the open file (an unlink or a rename over it changes its
    ctime too, so this is asked first), then its size and times before and after: the MD5 check
    proves only that the store kept what was read, not that it is the file.
    """
    after = os.fstat(source.fileno())
    try:
        now = os.stat(file.real, follow_symlinks=False)
    except FileNotFoundError:
        return MISSING, f"{file.path} vanished while it was uploaded; the object was removed"
    if (now.st_dev, now.st_ino) != (after.st_dev, after.st_ino):
        return FAILED, f"{file.path} was replaced while it was uploaded; the object was removed"
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ):
        sizes = f"{before.st_size} -> {after.st_size} bytes"
        return FAILED, f"{file.path} changed while it was uploaded ({sizes}); the object was removed"
    return None

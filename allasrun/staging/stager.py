"""The stager: moves bytes between a `Store` and the job's directory, in parallel, verified.

Stage-in writes each object to a temporary name (never through a link), checks its size and
whatever checksum the store vouches for (`verify`) and only then renames it, so a final name
never holds a partial or corrupt file; folder markers are not files and are skipped. A stop
signal ends a stage-in at once, even one whose transfers are stuck in a stalled connection:
the work runs on daemon threads (`workers`) that a stopped run walks away from, after
removing their temporary files. Stage-out uploads new and changed files, verifies the stored
ETag, and never touches the local files. Identical files are skipped both ways, which makes a
re-run resume.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional, TypeVar

from allasrun.errors import AllasrunError, BucketMissing, Corrupt, LocalFileError, StoreError
from allasrun.log import log
from allasrun.staging.plan import DEFAULT_SEGMENT, Settings, StageIn, StageOut, is_pattern
from allasrun.staging.progress import Progress
from allasrun.staging.select import (
    LocalFile,
    Unfollowed,
    common_prefix,
    dir_like,
    inside,
    local_files,
    local_path,
    open_inside,
    select_objects,
)
from allasrun.staging.store import RemoteObject, Segment, Store, slo_etag
from allasrun.staging.transfer import CANCELLED, DONE, FAILED, MISSING, REFUSED, SKIPPED, Transfer
from allasrun.staging.verify import MD5, PER_SEGMENT, SIZE, Verifier, identical_by
from allasrun.staging.workers import POLL, Workers

T = TypeVar("T")
GRACE = 2.0  # seconds a stopped stage-in waits for running transfers before it walks away
INTERRUPTED = "interrupted by a signal"


MAX_SEGMENTS = 1000  # segments one large object's manifest may list (Swift's and radosgw's default)
LARGEST_SEGMENT = DEFAULT_SEGMENT  # each segment is one object: 5 GiB at most


@dataclass(frozen=True)
class Fetch:
    """One object to download to one local path."""

    spec: StageIn
    obj: RemoteObject
    path: Path


@dataclass(frozen=True)
class Put:
    """One local file to upload under one object name."""

    spec: StageOut
    file: LocalFile
    name: str
    remote: Optional[RemoteObject]


class Interrupted(Exception):
    """A stop signal ended this transfer: it is CANCELLED, not FAILED."""


class Stager:
    """Stage-in and stage-out for one run, against one Store.

    Once a stop signal is seen (`cancelled`), the stager starts nothing more: it is stopped for good.
    """

    def __init__(self, store: Store, settings: Settings, workdir: Path) -> None:
        self.store = store
        self.settings = settings
        self.workdir = workdir
        self._segment_buckets: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._temporaries: set[Path] = set()  # downloads' files not yet renamed or removed

    # ---------------------------------------------------------------- stage-in

    def resolve_in(self, spec: StageIn) -> tuple[list[Fetch], list[Transfer]]:
        """List what a stage-in directive matches; what is missing or unsafe becomes a record.

        A store that fails (not a missing bucket) raises StoreError: that says nothing about
        whether the input exists.
        """
        source = f"allas:{spec.bucket}/{spec.key}"
        try:
            listed = self.store.listing(spec.bucket, spec.listing_prefix)
        except BucketMissing as error:
            return [], [_record("stage-in", spec.where, source, spec.destination, MISSING, str(error))]
        chosen, base, single = select_objects(spec, [o for o in listed if not o.folder])
        if not chosen and select_objects(spec, [o for o in listed if o.folder])[0]:
            return [], []  # only folder markers: an empty folder, made when staged in
        if not chosen:
            reason = f"no object matches {source}"
            return [], [_record("stage-in", spec.where, source, spec.destination, MISSING, reason)]
        destination = local_path(spec.destination, self.workdir)
        into_dir = dir_like(spec.destination, destination) or not single
        fetches, refused = [], []
        for obj in chosen:
            relative = obj.name[len(base) :] if not single else PurePosixPath(obj.name).name
            path = inside(destination, relative) if into_dir else destination
            if path is None:
                reason = f"object name {obj.name!r} would escape {destination}"
                refused.append(
                    _record("stage-in", spec.where, f"allas:{spec.bucket}/{obj.name}", "", REFUSED, reason)
                )
            else:
                fetches.append(Fetch(spec, obj, path))
        return fetches, refused

    def stage_in(self, specs: Sequence[StageIn], cancelled: Callable[[], bool]) -> list[Transfer]:
        """Fetch everything the directives name; stop at once when `cancelled` says so.

        The listings run on the worker threads too: a stalled one must not keep a signal waiting.
        """
        resolved: list[tuple[int, list[Fetch], list[Transfer]]] = []
        self._gather(
            (partial(self._resolve_numbered, n, spec) for n, spec in enumerate(specs)),
            cancelled,
            resolved.append,
        )
        if self._stop.is_set():
            return [_spec_record(spec, CANCELLED, INTERRUPTED) for spec in specs]
        resolved.sort(key=lambda found: found[0])
        fetches = [fetch for _, found, _ in resolved for fetch in found]
        records = [record for _, _, problems in resolved for record in problems]
        if records:  # something is missing or unsafe: fetch nothing, the command will not run
            return records
        records = self._make_folders([specs[n] for n, found, _ in resolved if not found])
        if records:
            return records
        total = sum(f.obj.size for f in fetches)
        jobs = [(_fetch_record(f), partial(self._fetch, f)) for f in fetches]
        return self._run("stage-in", jobs, total, cancelled)

    def _resolve_numbered(self, number: int, spec: StageIn) -> tuple[int, list[Fetch], list[Transfer]]:
        """`resolve_in`, numbered to keep the directives' order, with a store's failure a record."""
        try:
            return number, *self.resolve_in(spec)
        except StoreError as error:
            return number, [], [_spec_record(spec, FAILED, str(error))]

    def _make_folders(self, specs: Sequence[StageIn]) -> list[Transfer]:
        """Destinations of directives that matched only folder markers: empty directories."""
        problems = []
        for spec in specs:
            try:
                local_path(spec.destination, self.workdir).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                problems.append(_spec_record(spec, FAILED, str(LocalFileError.of(error, "make the folder"))))
        return problems

    def _fetch(self, fetch: Fetch, record: Transfer) -> None:
        obj, path = fetch.obj, fetch.path
        segments = self._retry(lambda: self._segments(fetch.spec.bucket, obj)) if obj.large else None
        identical = identical_by(path, obj, segments) if path.is_file() else ""
        if identical:
            record.status, record.md5, record.verified = SKIPPED, obj.md5, identical
            return
        record.md5, record.verified = self._retry(lambda: self._download(fetch, segments))
        record.status, record.bytes = DONE, obj.size
        if record.verified == SIZE:
            log.warning(
                "%s: the store's ETag %s is not a checksum allasrun can check: verified by its size only",
                record.source,
                obj.md5,
            )

    def _download(self, fetch: Fetch, segments: Optional[list[Segment]]) -> tuple[str, str]:
        """The object into a temporary file, verified, renamed into place: its MD5 and how it was verified."""
        obj, path = fetch.obj, fetch.path
        path.parent.mkdir(parents=True, exist_ok=True)
        headers, body = self.store.download(fetch.spec.bucket, obj.name)
        etag = headers.get("etag", "").strip('"')
        if etag != obj.md5:
            raise Corrupt(f"{obj.name}: changed since it was listed (ETag {etag}, listed {obj.md5})")
        check = Verifier(obj, segments)
        temporary, descriptor = self._temporary(path)
        try:
            # No fsync: it cost 1.8 s per GiB here, and buys nothing the checks don't. A file is
            # renamed only once complete and verified; after a crash, a re-run re-verifies any
            # existing file's size and MD5 before skipping it.
            with os.fdopen(descriptor, "wb") as out:
                for chunk in body:
                    if self._stop.is_set():
                        raise Interrupted
                    out.write(chunk)
                    check.update(chunk)
            digest = check.finish()
            os.replace(temporary, path)
        finally:
            self._discard(temporary)
        return digest, check.how

    def _temporary(self, path: Path) -> tuple[Path, int]:
        """A new file beside `path` to download into, and its descriptor.

        O_EXCL and O_NOFOLLOW: its name is predictable, so a file or link someone put there
        first is an error, never followed or truncated. It is registered, so that a stop
        signal can remove it even while its thread is stuck.
        """
        temporary = path.with_name(f".{path.name}.allasrun-{os.getpid()}.part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._lock:
            if self._stop.is_set():
                raise Interrupted
            try:
                descriptor = os.open(temporary, flags, 0o666)
            except OSError as error:
                raise LocalFileError.of(error, "create the download's temporary file") from None
            self._temporaries.add(temporary)
        return temporary, descriptor

    def _discard(self, temporary: Path) -> None:
        with self._lock:
            if temporary in self._temporaries:
                temporary.unlink(missing_ok=True)
                self._temporaries.discard(temporary)

    # ---------------------------------------------------------------- stage-out

    def resolve_out(self, spec: StageOut) -> tuple[list[Put], list[Transfer]]:
        """The local files a stage-out directive names, each with its object name.

        A link leading out of the tree is a REFUSED record; one not followed inside it, a warning.
        """
        target = f"allas:{spec.bucket}/{spec.key}"
        found, links = local_files(local_path(spec.source, self.workdir), spec.source)
        prefix = spec.key if spec.key.endswith("/") or not spec.key else spec.key + "/"
        refused = [_link_record(spec, prefix, link) for link in links if link.refused]
        for link in links:
            if not link.refused:
                log.warning("stage-out %s: %s: %s", spec.where, link.path, link.reason)
        if not found:
            reason = f"nothing matches {spec.source}"
            return [], refused or [_record("stage-out", spec.where, spec.source, target, MISSING, reason)]
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
        return [Put(spec, file, name, remote.get(name)) for file, name in zip(found, names)], refused

    def stage_out(self, specs: Sequence[StageOut]) -> list[Transfer]:
        """Upload every file the directives name; each failure is recorded, none stops the rest."""
        puts: list[Put] = []
        records: list[Transfer] = []
        for spec in specs:
            try:
                self.store.ensure_bucket(spec.bucket)
                found, problems = self.resolve_out(spec)
            except StoreError as error:
                target = f"allas:{spec.bucket}/{spec.key}"
                found, problems = (
                    [],
                    [_record("stage-out", spec.where, spec.source, target, FAILED, str(error))],
                )
            puts += found
            records += problems
        total = sum(_listed_size(p.file) for p in puts)
        jobs = [(_put_record(p), partial(self._put, p)) for p in puts]
        return records + self._run("stage-out", jobs, total, lambda: False)

    def _put(self, put: Put, record: Transfer) -> None:
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
        old = self.store.segments(put.spec.bucket, remote) if remote and remote.large else None
        identical = identical_by(source, remote, old) if remote else ""
        if remote and identical:
            record.status, record.md5, record.verified = SKIPPED, remote.md5, identical
            return
        if remote and not put.spec.overwrite:
            record.status = REFUSED
            record.error = f"{record.destination} exists and differs; not replaced (--no-overwrite)"
            return
        segments: list[Segment] = []
        if size > self.settings.segment_size:
            step = _segment_step(put.file, size, self.settings.segment_size)
            md5 = self._retry(lambda: self._upload_large(put, source, size, step, segments))
        else:
            md5 = self._retry(lambda: self._upload(put, source, size))
        if remote and remote.slo:  # the replaced SLO's segments, whatever replaced it; a DLO's
            self._delete_segments(old)  # prefix is not known to hold its segments alone
        changed = _changed(put.file, before, source)
        if changed:  # what landed may be a torn read: it goes, and the file is reported
            self.store.delete(put.spec.bucket, put.name)
            self._delete_segments(segments)
            record.status, record.error = changed
            return
        record.status, record.bytes, record.md5 = DONE, size, md5
        record.verified = PER_SEGMENT if segments else MD5

    def _upload(self, put: Put, source: BinaryIO, size: int) -> str:
        source.seek(0)
        md5, etag = self.store.upload(put.spec.bucket, put.name, source, size)
        if etag != md5:
            self.store.delete(put.spec.bucket, put.name)
            raise Corrupt(f"{put.file.path}: the store kept ETag {etag}, the file read as MD5 {md5}")
        return md5

    def _upload_large(self, put: Put, source: BinaryIO, size: int, step: int, landed: list[Segment]) -> str:
        """Segments into `<bucket>_segments`, then a manifest; a failure cleans its segments.

        The manifest's segments go into `landed`. Their names are new for every upload (time and
        a random part): a rewrite of the same size and mtime must not reuse, and then delete as
        the replaced object's, the segments of its own manifest.
        """
        bucket = f"{put.spec.bucket}_segments"
        if bucket not in self._segment_buckets:
            self.store.ensure_bucket(bucket)
            self._segment_buckets.add(bucket)
        stamp = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}"
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
            self.store.put_manifest(put.spec.bucket, put.name, uploaded)
        except BaseException:
            self._delete_segments(uploaded)
            raise
        landed[:] = uploaded
        return slo_etag(uploaded)

    def _segments(self, bucket: str, obj: RemoteObject) -> list[Segment]:
        """The segments to verify a large object by; it is not fetched unverified.

        They must add up to the object the server describes (its size, and its ETag, which is
        the MD5 of theirs): a DLO is whatever lies under its prefix, which can change.
        """
        segments = self.store.segments(bucket, obj)
        where = obj.dlo or f"{bucket}_segments"
        if not segments:
            raise StoreError(
                f"{obj.name}: a large object whose segments the server does not list and that are "
                f"not in {where}: it cannot be verified, so it is not staged"
            )
        size = sum(s.size for s in segments)
        if size != obj.size or slo_etag(segments) != obj.md5:
            raise StoreError(
                f"{obj.name}: its {len(segments)} segments in {where} ({size} bytes) do not make the "
                f"object ({obj.size} bytes, ETag {obj.md5}): it cannot be verified, so it is not staged"
            )
        return segments

    def _delete_segments(self, segments: Optional[Iterable[Segment]]) -> None:
        for segment in segments or ():
            bucket, _, name = segment.path.partition("/")
            self.store.delete(bucket, name)

    # ---------------------------------------------------------------- shared

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Try up to `retries` times with 1, 2, 4 ... s between; the last error is raised."""
        for number in range(1, self.settings.retries + 1):
            if self._stop.is_set():
                raise Interrupted
            try:
                return attempt()
            except (StoreError, OSError):
                if number == self.settings.retries:
                    raise
                time.sleep(min(2 ** (number - 1), 30))
        raise AssertionError("unreachable")

    def _run(
        self,
        label: str,
        jobs: Sequence[tuple[Transfer, Callable[[Transfer], None]]],
        total: int,
        cancelled: Callable[[], bool],
    ) -> list[Transfer]:
        """Run the jobs on `threads` threads, showing progress; stop at once if cancelled.

        Each job fills in its own record; whatever it raises fails that record alone. A job not
        done when the run stops is CANCELLED (a copy of its record: an abandoned thread may
        still write to the original).
        """
        progress = Progress(label, len(jobs), total, self.settings.progress)
        results: list[Transfer] = []

        def done(record: Transfer) -> None:
            results.append(record)
            progress.advance(record)

        try:
            self._gather((partial(_timed, job, record) for record, job in jobs), cancelled, done)
        finally:
            progress.close()
        reported = {id(record) for record in results}
        return results + [
            replace(record, status=CANCELLED, error=INTERRUPTED)
            for record, _ in jobs
            if id(record) not in reported
        ]

    def _gather(
        self, calls: Iterable[Callable[[], T]], cancelled: Callable[[], bool], done: Callable[[T], None]
    ) -> None:
        """Run the calls on the workers, each result to `done`, until all are done or a stop.

        At most twice as many calls as threads are handed out at a time, so memory stays flat
        however many files there are; `cancelled` is asked at least every POLL seconds.
        """
        pool: Workers[T] = Workers(self.settings.threads, "allasrun-stager")
        try:
            for call in calls:
                if not self._drain(pool, 2 * pool.size - 1, cancelled, done):
                    break
                pool.submit(call)
            else:
                self._drain(pool, 0, cancelled, done)
            if self._stop.is_set():
                self._wind_down(pool, done)
        finally:
            pool.close()

    def _drain(
        self, pool: Workers[T], most: int, cancelled: Callable[[], bool], done: Callable[[T], None]
    ) -> bool:
        """Collect results until at most `most` calls are running; False once the run is stopped."""
        while pool.busy > most and not self._stopped(cancelled):
            for result in pool.collect(POLL):
                done(result)
        return not self._stopped(cancelled)

    def _stopped(self, cancelled: Callable[[], bool]) -> bool:
        if not self._stop.is_set() and cancelled():
            self._stop.set()
        return self._stop.is_set()

    def _wind_down(self, pool: Workers[T], done: Callable[[T], None]) -> None:
        """After a stop, give running transfers GRACE seconds, then walk away from them.

        A running download ends at its next chunk; a thread stuck in a stalled connection is
        abandoned, and its temporary file removed.
        """
        deadline = time.monotonic() + GRACE
        while pool.busy and time.monotonic() < deadline:
            for result in pool.collect(POLL):
                done(result)
        with self._lock:
            for temporary in self._temporaries:
                temporary.unlink(missing_ok=True)
            self._temporaries.clear()


def _timed(job: Callable[[Transfer], None], record: Transfer) -> Transfer:
    """Run one transfer job, turning any exception into the record's error."""
    started = time.monotonic()
    try:
        job(record)
    except Interrupted:
        record.status, record.error = CANCELLED, INTERRUPTED
    except (AllasrunError, OSError) as error:
        record.status, record.error = FAILED, str(error)
    except Exception as error:  # a bug or a malformed answer fails one transfer, not the run
        log.debug("%s -> %s failed unexpectedly", record.source, record.destination, exc_info=True)
        record.status, record.error = FAILED, f"unexpected error: {error!r}"
    record.seconds = round(time.monotonic() - started, 3)
    return record


def _fetch_record(fetch: Fetch) -> Transfer:
    return Transfer(
        "stage-in", fetch.spec.where, f"allas:{fetch.spec.bucket}/{fetch.obj.name}", str(fetch.path)
    )


def _spec_record(spec: StageIn, status: str, error: str) -> Transfer:
    """The record of a stage-in directive that was not resolved into objects."""
    return _record("stage-in", spec.where, f"allas:{spec.bucket}/{spec.key}", spec.destination, status, error)


def _put_record(put: Put) -> Transfer:
    return Transfer("stage-out", put.spec.where, str(put.file.path), f"allas:{put.spec.bucket}/{put.name}")


def _link_record(spec: StageOut, prefix: str, link: Unfollowed) -> Transfer:
    destination = f"allas:{spec.bucket}/{prefix}{link.relative}"
    return _record("stage-out", spec.where, str(link.path), destination, REFUSED, link.reason)


def _listed_size(file: LocalFile) -> int:
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


def _changed(file: LocalFile, before: os.stat_result, source: BinaryIO) -> Optional[tuple[str, str]]:
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


def _record(direction: str, where: str, source: str, destination: str, status: str, error: str) -> Transfer:
    return Transfer(direction, where, source, destination, status=status, error=error)

"""The stage-in side of the stager: how one object is fetched, verified into a temporary file, renamed.

Stage-in writes each object to a temporary name (never through a link), checks its size and
whatever checksum the store vouches for (`verify`) and only then renames it, so a final name
never holds a partial or corrupt file; folder markers are not files and are skipped. The
temporary files are registered, so that a stop signal can remove them even while their
threads are stuck. An identical file already in place is skipped, which makes a re-run resume.
A SIGKILLed allasrun removes nothing: its temporary files carry its host and process id, so
a re-run on that host removes those whose process is gone from each directory it stages into.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from allasrun.errors import BadArchive, BucketMissing, Corrupt, LocalFileError, StoreError
from allasrun.log import log
from allasrun.process import HOST, alive
from allasrun.staging.behind import BEHIND, Behind
from allasrun.staging.plan import StageIn
from allasrun.staging.select import AMETA, dir_like, inside, local_path, select_objects, without_companions
from allasrun.staging.store import OVER_S3, RemoteObject, Segment, Store, slo_etag
from allasrun.staging.transfer import (
    DONE,
    FAILED,
    MISSING,
    REFUSED,
    SKIPPED,
    Interrupted,
    Retry,
    Transfer,
    not_moved,
)
from allasrun.staging.unpack import Body, check_listing, kind_of, move_into, unpack
from allasrun.staging.verify import SIZE, Verifier, identical_by

NAME_MAX = 255  # bytes in one file name (Linux, Lustre, NFS)
_TEMPORARY = re.compile(r"\..*\.allasrun-(?P<host>.+)-(?P<pid>[0-9]+)\.part", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Fetch:
    """One object to download to one local path (with `--unpack`: to unpack into that folder)."""

    spec: StageIn
    obj: RemoteObject
    path: Path
    ameta: Optional[RemoteObject] = None  # a-put's `<object>_ameta`, to check an unpacked tree by


class Fetcher:
    """Stage-in of single objects into `workdir`, for the stager that runs them.

    `retry` runs an attempt again after a store's error; `stop` is the stager's stop signal,
    looked at between chunks and before a temporary file is made.
    """

    def __init__(self, store: Store, workdir: Path, retry: Retry, stop: threading.Event) -> None:
        self.store = store
        self.workdir = workdir
        self._retry = retry
        self._stop = stop
        self._lock = threading.Lock()
        self._temporaries: set[Path] = set()  # downloads' files not yet renamed or removed
        self._swept: set[Path] = set()  # directories already cleared of killed runs' temporaries

    def resolve(self, spec: StageIn) -> tuple[list[Fetch], list[Transfer]]:
        """List what a stage-in directive matches; what is missing or unsafe becomes a record.

        A store that fails (not a missing bucket) raises StoreError: that says nothing about
        whether the input exists.
        """
        source = spec.address()
        try:
            listed = self.store.listing(spec.bucket, spec.listing_prefix)
        except BucketMissing as error:
            return [], [not_moved("stage-in", spec.where, source, spec.destination, MISSING, str(error))]
        chosen, base, single = select_objects(spec, [o for o in listed if not o.folder])
        if not chosen and select_objects(spec, [o for o in listed if o.folder])[0]:
            return [], []  # only folder markers: an empty folder, made when staged in
        if not single and not spec.ameta:
            chosen, companions = without_companions(chosen)
            if companions:
                message = "%s: %d a-put metadata object(s) (*_ameta) left out; --ameta stages them"
                log.info(message, source, companions)
        if not chosen:
            reason = f"no object matches {source}"
            return [], [not_moved("stage-in", spec.where, source, spec.destination, MISSING, reason)]
        destination = local_path(spec.destination, self.workdir)
        if spec.unpack:
            return _unpacks(spec, chosen, base, single, destination, {o.name: o for o in listed})
        into_dir = dir_like(spec.destination, destination) or not single
        fetches, refused = [], []
        for obj in chosen:
            relative = obj.name[len(base) :] if not single else PurePosixPath(obj.name).name
            path = inside(destination, relative) if into_dir else destination
            if path is None:
                reason = f"object name {obj.name!r} would escape {destination}"
                refused.append(not_moved("stage-in", spec.where, spec.address(obj.name), "", REFUSED, reason))
            else:
                fetches.append(Fetch(spec, obj, path))
        return fetches, refused

    def resolve_numbered(self, number: int, spec: StageIn) -> tuple[int, list[Fetch], list[Transfer]]:
        """`resolve`, numbered to keep the directives' order, with a store's failure a record."""
        try:
            return number, *self.resolve(spec)
        except StoreError as error:
            return number, [], [spec_record(spec, FAILED, str(error))]

    def make_folders(self, specs: Sequence[StageIn]) -> list[Transfer]:
        """Destinations of directives that matched only folder markers: empty directories."""
        problems = []
        for spec in specs:
            try:
                make_folder(local_path(spec.destination, self.workdir))
            except LocalFileError as error:
                problems.append(spec_record(spec, FAILED, str(error)))
        return problems

    def fetch(self, fetch: Fetch, record: Transfer) -> None:
        """One object into place, or skipped as identical: the job that fills in `record`."""
        obj, path = fetch.obj, fetch.path
        self._sweep(path if fetch.spec.unpack else path.parent)
        segments = self._retry(lambda: self._segments(fetch.spec.bucket, obj)) if obj.large else None
        if fetch.spec.unpack:
            try:
                unpacked = self._retry(lambda: self._unpack(fetch, segments))
            except BadArchive as error:
                record.status, record.error = REFUSED, str(error)
                return
            record.md5, record.verified, record.unpacked = unpacked
        else:
            try:
                identical = identical_by(path, obj, segments) if path.is_file() else ""
            except OSError as error:  # a name too long for the file system, a folder unreadable
                raise LocalFileError.of(error, "check the existing file") from None
            if identical:
                record.status, record.md5, record.verified = SKIPPED, obj.md5, identical
                return
            record.md5, record.verified = self._retry(lambda: self._download(fetch, segments))
        record.status, record.bytes = DONE, obj.size
        if record.verified == SIZE and obj.md5.endswith(OVER_S3):
            log.warning(
                "%s: a large object written over Swift (segments), read over S3, which cannot name "
                "its segments: verified by its size only (stage it from allas: to check each segment)",
                record.source,
            )
        elif record.verified == SIZE:
            log.warning(
                "%s: the store's ETag %s is not a checksum allasrun can check: verified by its size only",
                record.source,
                obj.md5,
            )

    def remove_temporaries(self) -> None:
        """Remove every download's temporary file, even one a stuck thread still holds."""
        with self._lock:
            for temporary in self._temporaries:
                _remove(temporary)
            self._temporaries.clear()

    def _sweep(self, directory: Path) -> None:
        """Remove what killed allasruns on this host left in `directory`; once per directory.

        Once, not per file: a directory of a million files is listed once. Only files named
        as `temporary_name` makes them, for this host and a process that no longer exists: a
        running allasrun's (this one's, or another job's staging the same input) is kept.
        """
        with self._lock:
            if directory in self._swept:
                return
            self._swept.add(directory)
        try:
            entries = list(os.scandir(directory))
        except OSError:  # not made yet: nothing of anyone's in it
            return
        for entry in entries:
            found = _TEMPORARY.fullmatch(entry.name)
            if found and found["host"] == HOST and not alive(int(found["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    log.info("removed %s, left by an allasrun that was killed", entry.path)

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

    def _opened(self, fetch: Fetch, segments: Optional[list[Segment]]) -> tuple[Iterator[bytes], Verifier]:
        """The object's body, checked to be the one listed, and the Verifier to feed it to."""
        obj = fetch.obj
        headers, body = self.store.download(fetch.spec.bucket, obj.name)
        etag = headers.get("etag", "").strip('"')
        if etag.removesuffix(OVER_S3) != obj.md5.removesuffix(OVER_S3):
            raise Corrupt(f"{obj.name}: changed since it was listed (ETag {etag}, listed {obj.md5})")
        return body, Verifier(obj, segments)

    def _download(self, fetch: Fetch, segments: Optional[list[Segment]]) -> tuple[str, str]:
        """The object into a temporary file, verified, renamed into place: its MD5 and how it was verified."""
        obj, path = fetch.obj, fetch.path
        make_folder(path.parent)
        body, check = self._opened(fetch, segments)
        behind = Behind(check.update) if obj.size >= BEHIND else None
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
                    (behind or check).update(chunk)
            if behind:
                behind.wait()
            digest = check.finish()
            os.replace(temporary, path)
        except OSError as error:  # a full disk or quota: not retried, the file system named
            self._discard(temporary)  # first, so that the free space named is what is left
            raise not_written(path, obj, error) from None
        finally:
            if behind:
                behind.close()
            self._discard(temporary)
        return digest, check.how

    def _unpack(self, fetch: Fetch, segments: Optional[list[Segment]]) -> tuple[str, str, list[str]]:
        """An archive unpacked into a temporary folder as it streams, verified, moved into place.

        Its MD5, how it was verified, and the members unpacked. The tree is moved into the
        destination only after the object's MD5 (and the file list of its `_ameta`) checked out.
        """
        obj, folder = fetch.obj, fetch.path
        kind = kind_of(obj.name) or ""
        make_folder(folder)
        chunks, check = self._opened(fetch, segments)
        behind = Behind(check.update) if obj.size >= BEHIND else None
        body = Body(chunks, (behind or check).update, self._stop)
        temporary = self._temporary_folder(folder / PurePosixPath(obj.name).name)
        try:
            try:
                unpacked = unpack(kind, body, temporary, obj.name)
            finally:
                if behind:
                    behind.wait()
            digest = check.finish()
            if fetch.ameta:
                listed = check_listing(self._text(fetch.spec.bucket, fetch.ameta.name), unpacked, obj.name)
                source = fetch.spec.address(obj.name)
                log.info("%s: the %d file(s) %s lists arrived whole", source, listed, fetch.ameta.name)
            move_into(temporary, folder)
        except BadArchive:
            if body.ended:  # read to its end: a transfer that broke it is told by the MD5, and retried
                check.finish()
            raise
        except OSError as error:
            self._discard(temporary)
            raise not_written(folder, obj, error) from None
        finally:
            if behind:
                behind.close()
            self._discard(temporary)
        log.info(
            "%s: %d member(s) unpacked into %s", fetch.spec.address(obj.name), len(unpacked.members), folder
        )
        return digest, check.how, unpacked.members

    def _text(self, bucket: str, name: str) -> str:
        """A small object's text (a-put's `_ameta`)."""
        return b"".join(self.store.download(bucket, name)[1]).decode(errors="replace")

    def _temporary(self, path: Path) -> tuple[Path, int]:
        """A new file beside `path` to download into, and its descriptor.

        O_EXCL and O_NOFOLLOW: its name is predictable, so a file or link someone put there
        first is an error, never followed or truncated. It is registered, so that a stop
        signal can remove it even while its thread is stuck.
        """
        temporary = temporary_name(path)
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

    def _temporary_folder(self, path: Path) -> Path:
        """A new, private folder beside `path` to unpack into; registered as `_temporary` registers files."""
        temporary = temporary_name(path)
        with self._lock:
            if self._stop.is_set():
                raise Interrupted
            try:
                temporary.mkdir(0o700)
            except OSError as error:
                raise LocalFileError.of(error, "create the unpacking's temporary folder") from None
            self._temporaries.add(temporary)
        return temporary

    def _discard(self, temporary: Path) -> None:
        with self._lock:
            if temporary in self._temporaries:
                _remove(temporary)
                self._temporaries.discard(temporary)


def _unpacks(
    spec: StageIn,
    chosen: list[RemoteObject],
    base: str,
    single: bool,
    destination: Path,
    listed: dict[str, RemoteObject],
) -> tuple[list[Fetch], list[Transfer]]:
    """`--unpack`'s fetches: each archive into the destination (a prefix's into their own folders).

    An object that is not one of a-put's forms is refused, named: unpacking it cannot work.
    """
    fetches, refused = [], []
    for obj in chosen:
        folder = PurePosixPath(obj.name[len(base) :]).parent if not single else PurePosixPath(".")
        into = destination if str(folder) == "." else inside(destination, str(folder))
        if kind_of(obj.name) is None:
            reason = f"{obj.name} is not a .tar, .tar.zst or .zst object: --unpack cannot unpack it"
        elif into is None:
            reason = f"object name {obj.name!r} would escape {destination}"
        else:
            fetches.append(Fetch(spec, obj, into, listed.get(obj.name + AMETA)))
            continue
        refused.append(not_moved("stage-in", spec.where, spec.address(obj.name), "", REFUSED, reason))
    return fetches, refused


def _remove(path: Path) -> None:
    """A temporary file, or an unpacking's temporary folder with all in it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def make_folder(path: Path) -> None:
    """The folder and its parents; a file in the way is said so ("File exists" reads as success)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LocalFileError(f"cannot make the folder {path}: a file of that name is in the way") from None
    except OSError as error:
        raise LocalFileError.of(error, "make the folder") from None


def temporary_name(path: Path, pid: Optional[int] = None) -> Path:
    """The hidden name beside `path` that a download goes to: `.NAME.allasrun-HOST-PID.part`.

    The host and process id tell a re-run whose it is; NAME is cut short where the whole
    would not fit in one file name.
    """
    suffix = f".allasrun-{HOST}-{pid or os.getpid()}.part"
    room = NAME_MAX - 1 - len(suffix.encode())
    stem = path.name.encode(errors="surrogateescape")[:room].decode(errors="ignore")
    return path.with_name(f".{stem}{suffix}")


def not_written(path: Path, obj: RemoteObject, error: OSError) -> LocalFileError:
    """A download the local file system refused, naming the file and that file system.

    "No space left" alone leaves the user guessing which of scratch, home or $TMPDIR is full.
    """
    mount = Path(os.path.realpath(path.parent))
    while not os.path.ismount(mount):
        mount = mount.parent
    try:
        stats = os.statvfs(mount)
        free = f"{stats.f_bavail * stats.f_frsize} bytes free"
    except OSError:
        free = "free space unknown"
    return LocalFileError(
        f"cannot write {path}: {error.strerror or error} "
        f"(file system {mount}: {free}; the object is {obj.size} bytes)"
    )


def fetch_record(fetch: Fetch) -> Transfer:
    """The record a fetch starts with, for its job to fill in."""
    return Transfer("stage-in", fetch.spec.where, fetch.spec.address(fetch.obj.name), str(fetch.path))


def spec_record(spec: StageIn, status: str, error: str) -> Transfer:
    """The record of a stage-in directive that was not resolved into objects."""
    return not_moved("stage-in", spec.where, spec.address(), spec.destination, status, error)

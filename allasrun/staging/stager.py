"""The stager: moves bytes between a `Store` and the job's directory, in parallel, verified.

Stage-in writes each object to a temporary name, checks its MD5 against the listing (per
segment for large objects) and only then renames it, so a final name never holds a partial
or corrupt file. Stage-out uploads new and changed files, verifies the stored ETag, and never
touches the local files. Identical files are skipped both ways, which makes a re-run resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Optional

from allasrun.errors import AllasrunError, BucketMissing, Corrupt, StoreError
from allasrun.log import log
from allasrun.staging.plan import Settings, StageIn, StageOut, is_pattern
from allasrun.staging.progress import Progress
from allasrun.staging.select import common_prefix, dir_like, inside, local_files, local_path, select_objects
from allasrun.staging.store import RemoteObject, Segment, Store, slo_etag
from allasrun.staging.transfer import CANCELLED, DONE, FAILED, MISSING, REFUSED, SKIPPED, Transfer
from allasrun.staging.verify import Verifier, same_content


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
    path: Path
    name: str
    remote: Optional[RemoteObject]


class Stager:
    """Stage-in and stage-out for one run, against one Store."""

    def __init__(self, store: Store, settings: Settings, workdir: Path) -> None:
        self.store = store
        self.settings = settings
        self.workdir = workdir
        self._segment_buckets: set[str] = set()

    # ---------------------------------------------------------------- stage-in

    def resolve_in(self, spec: StageIn) -> tuple[list[Fetch], list[Transfer]]:
        """List what a stage-in directive matches; what is missing or unsafe becomes a record.

        A store that fails (not a missing bucket) raises StoreError: that says nothing about
        whether the input exists.
        """
        source = f"allas:{spec.bucket}/{spec.key}"
        try:
            objects = self.store.listing(spec.bucket, spec.listing_prefix)
        except BucketMissing as error:
            return [], [_record("stage-in", spec.where, source, spec.destination, MISSING, str(error))]
        chosen, base, single = select_objects(spec, objects)
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
        """Fetch everything the directives name; stop early when `cancelled` says so."""
        fetches: list[Fetch] = []
        records: list[Transfer] = []
        for spec in specs:
            try:
                found, problems = self.resolve_in(spec)
            except StoreError as error:
                source = f"allas:{spec.bucket}/{spec.key}"
                found, problems = (
                    [],
                    [_record("stage-in", spec.where, source, spec.destination, FAILED, str(error))],
                )
            fetches += found
            records += problems
        if records:  # something is missing or unsafe: fetch nothing, the command will not run
            return records
        total = sum(f.obj.size for f in fetches)
        jobs = [(_fetch_record(f), partial(self._fetch, f)) for f in fetches]
        return self._run("stage-in", jobs, total, cancelled)

    def _fetch(self, fetch: Fetch, record: Transfer) -> None:
        obj, path = fetch.obj, fetch.path
        segments = self._segments(fetch.spec.bucket, obj) if obj.slo else None
        if path.is_file() and path.stat().st_size == obj.size and same_content(path, obj, segments):
            record.status, record.md5 = SKIPPED, obj.md5
            return
        record.md5 = self._retry(lambda: self._download(fetch, segments))
        record.status, record.bytes = DONE, obj.size

    def _download(self, fetch: Fetch, segments: Optional[list[Segment]]) -> str:
        obj, path = fetch.obj, fetch.path
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.allasrun-{os.getpid()}.part")
        try:
            headers, body = self.store.download(fetch.spec.bucket, obj.name)
            etag = headers.get("etag", "").strip('"')
            if etag != obj.md5:
                raise Corrupt(f"{obj.name}: changed since it was listed (ETag {etag}, listed {obj.md5})")
            check = Verifier(obj, segments)
            # No fsync: it cost 1.8 s per GiB here, and buys nothing the checks don't. A file is
            # renamed only once complete and verified; after a crash, a re-run re-verifies any
            # existing file's size and MD5 before skipping it.
            with open(temporary, "wb") as out:
                for chunk in body:
                    out.write(chunk)
                    check.update(chunk)
            digest = check.finish()
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return digest

    # ---------------------------------------------------------------- stage-out

    def resolve_out(self, spec: StageOut) -> tuple[list[Put], list[Transfer]]:
        """The local files a stage-out directive names, each with its object name."""
        target = f"allas:{spec.bucket}/{spec.key}"
        found = local_files(local_path(spec.source, self.workdir), spec.source)
        if not found:
            reason = f"nothing matches {spec.source}"
            return [], [_record("stage-out", spec.where, spec.source, target, MISSING, reason)]
        single = len(found) == 1 and not is_pattern(spec.source) and found[0][1] == ""
        prefix = spec.key if spec.key.endswith("/") or not spec.key else spec.key + "/"
        names = [
            spec.key if single and spec.key and not spec.key.endswith("/") else prefix + (rel or path.name)
            for path, rel in found
        ]
        try:
            listing = self.store.listing(spec.bucket, common_prefix(names))
        except BucketMissing:
            listing = []
        remote = {obj.name: obj for obj in listing}
        return [Put(spec, path, name, remote.get(name)) for (path, _), name in zip(found, names)], []

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
        total = sum(p.path.stat().st_size for p in puts)
        jobs = [(_put_record(p), partial(self._put, p)) for p in puts]
        return records + self._run("stage-out", jobs, total, lambda: False)

    def _put(self, put: Put, record: Transfer) -> None:
        size = put.path.stat().st_size
        remote = put.remote
        old = self.store.segments(put.spec.bucket, remote) if remote and remote.slo else None
        if remote and remote.size == size and same_content(put.path, remote, old):
            record.status, record.md5 = SKIPPED, remote.md5
            return
        if remote and not put.spec.overwrite:
            record.status = REFUSED
            record.error = f"{record.destination} exists and differs; not replaced (--no-overwrite)"
            return
        if size > self.settings.segment_size:
            record.md5 = self._retry(lambda: self._upload_large(put, size))
        else:
            record.md5 = self._retry(lambda: self._upload(put, size))
        self._delete_segments(old)  # the replaced large object's, whatever replaced it
        record.status, record.bytes = DONE, size

    def _upload(self, put: Put, size: int) -> str:
        with open(put.path, "rb") as source:
            md5, etag = self.store.upload(put.spec.bucket, put.name, source, size)
        if etag != md5:
            self.store.delete(put.spec.bucket, put.name)
            raise Corrupt(f"{put.path}: the store kept ETag {etag}, the file read as MD5 {md5}")
        return md5

    def _upload_large(self, put: Put, size: int) -> str:
        """Segments into `<bucket>_segments`, then a manifest; a failure cleans its segments."""
        bucket = f"{put.spec.bucket}_segments"
        if bucket not in self._segment_buckets:
            self.store.ensure_bucket(bucket)
            self._segment_buckets.add(bucket)
        step = self.settings.segment_size
        stamp = f"{put.path.stat().st_mtime:.6f}"
        uploaded: list[Segment] = []
        try:
            with open(put.path, "rb") as source:
                for index, offset in enumerate(range(0, size, step)):
                    length = min(step, size - offset)
                    name = f"{put.name}/slo/{stamp}/{size}/{step}/{index:08d}"
                    source.seek(offset)
                    md5, etag = self.store.upload(bucket, name, source, length)
                    uploaded.append(Segment(f"{bucket}/{name}", length, md5))
                    if etag != md5:
                        raise Corrupt(f"{put.path}: segment {index} stored as {etag}, read as {md5}")
            self.store.put_manifest(put.spec.bucket, put.name, uploaded)
        except BaseException:
            self._delete_segments(uploaded)
            raise
        return slo_etag(uploaded)

    def _segments(self, bucket: str, obj: RemoteObject) -> list[Segment]:
        """The segments to verify a large object by; it is not fetched unverified."""
        segments = self.store.segments(bucket, obj)
        if not segments:
            raise StoreError(
                f"{obj.name}: a large object whose segments the server does not list and that are "
                f"not in {bucket}_segments: it cannot be verified, so it is not staged"
            )
        return segments

    def _delete_segments(self, segments: Optional[Iterable[Segment]]) -> None:
        for segment in segments or ():
            bucket, _, name = segment.path.partition("/")
            self.store.delete(bucket, name)

    # ---------------------------------------------------------------- shared

    def _retry(self, attempt: Callable[[], str]) -> str:
        """Try up to `retries` times with 1, 2, 4 ... s between; the last error is raised."""
        for number in range(1, self.settings.retries + 1):
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
        """Run the jobs on `threads` threads, showing progress; stop starting new ones if cancelled.

        Each job fills in its own record; whatever it raises fails that record alone.
        """
        progress = Progress(label, len(jobs), total, self.settings.progress)
        results: list[Transfer] = []
        with ThreadPoolExecutor(
            max_workers=self.settings.threads, thread_name_prefix="allasrun-stager"
        ) as pool:
            futures: dict[Future[Transfer], Transfer] = {
                pool.submit(_timed, job, record): record for record, job in jobs
            }
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                results.append(future.result())
                progress.advance(futures[future])
                if cancelled():
                    for pending in futures:
                        pending.cancel()
        progress.close()
        for future, record in futures.items():
            if future.cancelled():
                record.status, record.error = CANCELLED, "interrupted by a signal"
                results.append(record)
        return results


def _timed(job: Callable[[Transfer], None], record: Transfer) -> Transfer:
    """Run one transfer job, turning any exception into the record's error."""
    started = time.monotonic()
    try:
        job(record)
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


def _put_record(put: Put) -> Transfer:
    return Transfer("stage-out", put.spec.where, str(put.path), f"allas:{put.spec.bucket}/{put.name}")


def _record(direction: str, where: str, source: str, destination: str, status: str, error: str) -> Transfer:
    return Transfer(direction, where, source, destination, status=status, error=error)

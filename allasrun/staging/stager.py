"""The stager: moves bytes between a `Store` and the job's directory, in parallel, verified.

The one front door of both directions: `fetch` says how one object is staged in, `put` how one
file is staged out; this module runs them. A stop signal ends a stage-in at once, even one
whose transfers are stuck in a stalled connection: the work runs on daemon threads (`workers`)
that a stopped run walks away from, after removing their temporary files. Identical files are
skipped both ways, which makes a re-run resume.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import BinaryIO, Optional, TypeVar

from allasrun.errors import AllasrunError, BucketMissing, Corrupt, StoreError
from allasrun.log import log
from allasrun.staging.bundle import Bundler, bundles
from allasrun.staging.fetch import Fetch, Fetcher, fetch_record, spec_record
from allasrun.staging.pace import THREADS, Pace
from allasrun.staging.pack import Pack, Packer, pack_record
from allasrun.staging.plan import Settings, StageIn, StageOut
from allasrun.staging.progress import Progress
from allasrun.staging.put import Put, Uploader, listed_size, put_record
from allasrun.staging.store import BulkStore, RemoteObject, Segment, Store
from allasrun.staging.transfer import CANCELLED, FAILED, Interrupted, Transfer
from allasrun.staging.workers import POLL, Workers

T = TypeVar("T")
X = TypeVar("X")
GRACE = 2.0  # seconds a stopped stage-in waits for running transfers before it walks away
INTERRUPTED = "interrupted by a signal"
UNPROCESSABLE = 422  # Swift's answer to an upload whose bytes did not match the MD5 sent with it
# Local errors that no second try can change: the name, the tree or the rights are wrong.
PERMANENT = frozenset({
    errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EACCES, errno.EPERM,
    errno.EROFS, errno.ELOOP, errno.EEXIST, errno.EINVAL, errno.EXDEV, errno.ENOSPC, errno.EDQUOT,
    errno.EFBIG,
})  # fmt: skip


class Stager:
    """Stage-in and stage-out for one run, against one Store.

    Once a stop signal is seen (`cancelled`), the stager starts nothing more: it is stopped for good.
    """

    def __init__(
        self, store: Store, settings: Settings, workdir: Path, swift: Optional[Callable[[], Store]] = None
    ) -> None:
        """`swift`: the same buckets over Swift, for large files an S3 stage-out writes as segments."""
        self.store = store
        self.settings = settings
        self.workdir = workdir
        self._stop = threading.Event()
        self._fetcher = Fetcher(store, workdir, self._retry, self._stop)
        self._uploader = Uploader(store, settings, workdir, self._retry, swift)
        self._packer = Packer(store, workdir, self._retry, settings.segment_size)

    # ---------------------------------------------------------------- stage-in

    def resolve_in(self, spec: StageIn) -> tuple[list[Fetch], list[Transfer]]:
        """What a stage-in directive matches; what is missing or unsafe, as records (`Fetcher.resolve`)."""
        return self._fetcher.resolve(spec)

    def stage_in(self, specs: Sequence[StageIn], cancelled: Callable[[], bool]) -> list[Transfer]:
        """Fetch everything the directives name; stop at once when `cancelled` says so.

        The listings run on the worker threads too: a stalled one must not keep a signal waiting.
        """
        resolved: list[tuple[int, list[Fetch], list[Transfer]]] = []
        self._gather(
            (partial(self._fetcher.resolve_numbered, n, spec) for n, spec in enumerate(specs)),
            cancelled,
            resolved.append,
        )
        if self._stop.is_set():
            return [spec_record(spec, CANCELLED, INTERRUPTED) for spec in specs]
        resolved.sort(key=lambda found: found[0])
        fetches = deque(fetch for _, found, _ in resolved for fetch in found)
        records = [record for _, _, problems in resolved for record in problems]
        if records:  # something is missing or unsafe: fetch nothing, the command will not run
            return records
        records = self._fetcher.make_folders([specs[n] for n, found, _ in resolved if not found])
        if records:
            return records
        total, count = sum(f.obj.size for f in fetches), len(fetches)
        del resolved  # the fetches are held by the deque alone, and let go of as they are handed out
        tasks = (_single(fetch_record(f), partial(self._fetcher.fetch, f)) for f in _handed(fetches))
        return self._run("stage-in", tasks, count, total, cancelled, Pace(self.settings.threads))

    # ---------------------------------------------------------------- stage-out

    def resolve_out(self, spec: StageOut) -> tuple[list[Put], list[Transfer]]:
        """The local files a stage-out directive names, each with its object name (`Uploader.resolve`)."""
        return self._uploader.resolve(spec)

    def stage_out(
        self, specs: Sequence[StageOut], only: Optional[Collection[tuple[str, str]]] = None
    ) -> list[Transfer]:
        """Upload every file the directives name; each failure is recorded, none stops the rest.

        `only`: just these (source, destination) pairs, as a report names them (finishing an
        earlier stage-out); nothing else the directives name now is touched or reported.
        """
        puts: list[Put] = []
        packs: list[Pack] = []
        records: list[Transfer] = []
        for spec in specs:
            if spec.pack:
                pack, problems = self._packer.resolve(spec)
                wanted = (
                    only is None or pack is None or (str(pack.path), pack_record(pack).destination) in only
                )
                packs += [pack] if pack and wanted else []
                records += problems
                continue
            try:
                self.store.ensure_bucket(spec.bucket)
                found, problems = self.resolve_out(spec)
            except StoreError as error:
                found, problems = self._unreachable(spec, error)
            if only is not None:
                found = [p for p in found if (str(p.file.path), put_record(p).destination) in only]
                problems = [t for t in problems if (t.source, t.destination) in only]
            puts += found
            records += problems
        total, count = sum(listed_size(p.file) for p in puts), len(puts)
        grouped, alone = bundles(self.store, puts, self.settings.threads or THREADS, self.settings.bundles)
        del puts  # held by `alone` and `grouped` alone, and let go of as they are handed out
        bundler = None
        if isinstance(self.store, BulkStore):
            bundler = Bundler(self.store, self._uploader, self._put_alone)
        tasks = self._out_tasks(packs, deque(alone), deque(grouped), bundler)
        del alone, grouped
        records += self._run("stage-out", tasks, count, total, lambda: False, self._fixed())
        if bundler and bundler.bundles:
            log.info("stage-out: %d small file(s) went in %d tar bundle(s)", bundler.files, bundler.bundles)
        return records

    def _out_tasks(
        self, packs: list[Pack], alone: deque[Put], grouped: deque[list[Put]], bundler: Optional[Bundler]
    ) -> Iterator[Task]:
        """The stage-out's tasks, each made when it is handed out: packs, single files, then bundles.

        Bundles only over a store that unpacks them; `bundles` groups none for another.
        """
        for pack in packs:
            yield _single(pack_record(pack), partial(self._packer.pack, pack))
        for put in _handed(alone):
            yield _single(put_record(put), partial(self._uploader.put, put))
        if bundler is None:
            return
        for group in _handed(grouped):
            members = [put_record(p) for p in group]
            yield members, partial(_bundled, bundler, group, members)

    def _put_alone(self, put: Put, record: Transfer) -> None:
        """One file of a bundle sent alone (`bundle.Single`)."""
        _timed(partial(self._uploader.put, put), record)

    def _unreachable(self, spec: StageOut, error: StoreError) -> tuple[list[Put], list[Transfer]]:
        """The store failed before any upload: every file of the directive is named as FAILED.

        Named one by one, so the log and the report say exactly what did not land, and a later
        `allasrun stage-out REPORT` knows what to upload.
        """
        found, problems = Uploader(_Unlisted(error), self.settings, self.workdir, self._retry).resolve(spec)
        return [], problems + [replace(put_record(p), status=FAILED, error=str(error)) for p in found]

    # ---------------------------------------------------------------- shared

    def _retry(self, attempt: Callable[[], T]) -> T:
        """Try up to `retries` times with 1, 2, 4 ... s between; the last error is raised.

        What the store has already retried (an outage, throttling) is not tried again here:
        its waits would multiply, and a throttled job could outlive its time limit.
        """
        for number in range(1, self.settings.retries + 1):
            if self._stop.is_set():
                raise Interrupted
            try:
                return attempt()
            except (StoreError, OSError) as error:
                if number == self.settings.retries or not worth_retrying(error):
                    raise
                delay = min(2 ** (number - 1), 30)
                log.info("%s; retrying in %d s", error, delay)  # progress: the failure, if any, is an error
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _fixed(self) -> Pace:
        """The threads the user gave, else THREADS: no more, however the rate goes.

        For a stage-out: it holds each transfer's bytes in memory (a bundle of up to 4 MiB, a
        small file up to 8 MiB), so more in flight would cost memory; a stage-in streams to
        disk, and adapts (`Pace(self.settings.threads)`).
        """
        return Pace(self.settings.threads or THREADS)

    def _run(
        self,
        label: str,
        tasks: Iterable[Task],
        count: int,
        total: int,
        cancelled: Callable[[], bool],
        pace: Pace,
    ) -> list[Transfer]:
        """Run the tasks (`count` files, `total` bytes) on the threads, with progress, until cancelled.

        Each task fills in its own records (one file's, or a bundle's); whatever it raises fails
        its records alone. Tasks are taken from `tasks` as threads come free, so only those
        running are held, with the records of those done. A task not done when the run stops is
        CANCELLED (copies of its records: an abandoned thread may still write to the originals).
        """
        progress = Progress(label, count, total, self.settings.progress)
        results: list[Transfer] = []
        running: dict[int, Sequence[Transfer]] = {}
        waiting = iter(tasks)

        def handed() -> Iterator[Callable[[], Sequence[Transfer]]]:
            for records, call in waiting:
                running[id(records)] = records
                yield partial(_finished, call, records)

        def done(records: Sequence[Transfer]) -> None:
            running.pop(id(records), None)
            for record in records:
                results.append(record)
                progress.advance(record)

        try:
            self._gather(handed(), cancelled, done, pace)
        finally:
            progress.close()
        left = [*running.values(), *(records for records, _ in waiting)]
        return results + [
            replace(r, status=CANCELLED, error=INTERRUPTED) for records in left for r in records
        ]

    def _gather(
        self,
        calls: Iterable[Callable[[], T]],
        cancelled: Callable[[], bool],
        done: Callable[[T], None],
        pace: Optional[Pace] = None,
    ) -> None:
        """Run the calls on the workers, each result to `done`, until all are done or a stop.

        At most twice as many calls as threads are handed out at a time, so memory stays flat
        however many files there are; `cancelled` is asked at least every POLL seconds. The
        number of threads follows `pace`: fixed (by default), or more while more pay.
        """
        pace = pace or self._fixed()
        pool: Workers[T] = Workers(pace.limit, "allasrun-stager")

        def finished(result: T) -> None:
            done(result)
            pace.finished(1)

        try:
            for call in calls:
                pool.resize(pace.limit)
                if not self._drain(pool, 2 * pool.size - 1, cancelled, finished):
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
        self._fetcher.remove_temporaries()


def worth_retrying(error: Exception) -> bool:
    """Whether a second try may succeed: a cut stream, a transfer corrupted on the way, a read error.

    A refusal (a name too long for the store, no permission, a missing object), a name the local
    file system cannot hold, or what the store has already retried as long as it may, fails at
    once: retrying it only spends the job's time on sleeps before the same report.
    """
    if isinstance(error, StoreError):
        corrupted = isinstance(error, Corrupt) or error.http_status == UNPROCESSABLE
        return not error.retried and (error.transient or corrupted)
    return isinstance(error, OSError) and error.errno not in PERMANENT


class _Unlisted:
    """A store that could not be reached: nothing is listed, so local files can still be named."""

    def __init__(self, error: StoreError) -> None:
        self.error = error

    def listing(self, bucket: str, prefix: str) -> list[RemoteObject]:
        raise BucketMissing(str(self.error))

    def bucket_exists(self, bucket: str) -> bool:
        raise self.error

    def ensure_bucket(self, bucket: str) -> None:
        raise self.error

    def segments(self, bucket: str, obj: RemoteObject, *, exact: bool = False) -> list[Segment]:
        raise self.error

    def download(self, bucket: str, name: str) -> tuple[dict[str, str], Iterator[bytes]]:
        raise self.error

    def upload(self, bucket: str, name: str, source: BinaryIO, size: int) -> tuple[str, str]:
        raise self.error

    def put_manifest(self, bucket: str, name: str, segments: list[Segment]) -> None:
        raise self.error

    def delete(self, bucket: str, name: str) -> None:
        raise self.error


Task = tuple[Sequence[Transfer], Callable[[], object]]  # records, and the call that fills them in


def _single(record: Transfer, job: Callable[[Transfer], None]) -> Task:
    """The task of one file or object."""
    return [record], partial(_timed, job, record)


def _handed(items: deque[X]) -> Iterator[X]:
    """Each item in turn, let go of as it is handed out (memory flat in the file count)."""
    while items:
        yield items.popleft()


def _finished(call: Callable[[], object], records: Sequence[Transfer]) -> Sequence[Transfer]:
    call()
    return records


def _bundled(bundler: Bundler, puts: Sequence[Put], records: Sequence[Transfer]) -> None:
    """A bundle's task: its files sent (`Bundler.send`), each timed by the bundle unless sent alone.

    Whatever escapes the bundler fails the records it had not filled in (a bug, not a store's
    failure: those it handles file by file).
    """
    started = time.monotonic()
    try:
        bundler.send(puts, records)
    except Exception as error:  # a bug fails these files, not the run
        log.debug("a bundle of %d file(s) failed unexpectedly", len(records), exc_info=True)
        for record in records:
            if record.status == FAILED and not record.error:
                record.error = f"unexpected error: {error!r}"
    for record in records:
        record.seconds = record.seconds or round(time.monotonic() - started, 3)


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

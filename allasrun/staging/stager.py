"""The stager: moves bytes between Swift and the job's directory, in parallel, verified.

Stage-in writes each object to a temporary name, checks its MD5 against the listing (per
segment for large objects) and only then renames it, so a final name never holds a partial
or corrupt file. Stage-out uploads new and changed files, verifies Swift's ETag, and never
touches the local files. Identical files are skipped both ways, which makes a re-run resume.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from allasrun.staging.plan import Settings, StageIn, StageOut
from allasrun.staging.report import CANCELLED, DONE, FAILED, MISSING, REFUSED, SKIPPED, Progress, Transfer
from allasrun.staging.swift import CHUNK, BucketMissing, RemoteObject, Segment, Store, StoreError

_MAGIC = re.compile(r"[*?\[]")


class Corrupt(Exception):
    """What arrived is not what Swift listed (size, MD5, or the object changed meanwhile)."""


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
        """List what a stage-in directive matches; problems become failed transfers."""
        source = f"allas:{spec.bucket}/{spec.key}"
        try:
            objects = self.store.listing(spec.bucket, spec.listing_prefix)
        except StoreError as error:
            return [], [_record("stage-in", spec.where, source, spec.destination, MISSING, str(error))]
        chosen, base, single = _select(spec, objects)
        if not chosen:
            reason = f"no object matches {source}"
            return [], [_record("stage-in", spec.where, source, spec.destination, MISSING, reason)]
        destination = self._local(spec.destination)
        into_dir = _dir_like(spec.destination, destination) or not single
        fetches, refused = [], []
        for obj in chosen:
            relative = obj.name[len(base) :] if not single else PurePosixPath(obj.name).name
            path = _inside(destination, relative) if into_dir else destination
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
            found, problems = self.resolve_in(spec)
            fetches += found
            records += problems
        if records:  # something is missing or unsafe: fetch nothing, the command will not run
            return records
        total = sum(f.obj.size for f in fetches)
        return self._run("stage-in", [partial(self._fetch, f) for f in fetches], total, cancelled)

    def _fetch(self, fetch: Fetch) -> Transfer:
        obj, path = fetch.obj, fetch.path
        record = Transfer("stage-in", fetch.spec.where, f"allas:{fetch.spec.bucket}/{obj.name}", str(path))
        started = time.monotonic()
        try:
            segments = self.store.segments(fetch.spec.bucket, obj.name) if obj.slo else None
            if path.is_file() and path.stat().st_size == obj.size and _same(path, obj, segments):
                record.status, record.md5 = SKIPPED, obj.md5
                return record
            record.md5 = self._retry(lambda: self._download(fetch, segments))
            record.status, record.bytes = DONE, obj.size
        except (StoreError, Corrupt, OSError) as error:
            record.error = str(error)
        record.seconds = round(time.monotonic() - started, 3)
        return record

    def _download(self, fetch: Fetch, segments: Optional[list[Segment]]) -> str:
        obj, path = fetch.obj, fetch.path
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.allasrun-{os.getpid()}.part")
        try:
            headers, body = self.store.download(fetch.spec.bucket, obj.name)
            etag = headers.get("etag", "").strip('"')
            if not obj.slo and etag != obj.md5:
                raise Corrupt(f"{obj.name}: changed since it was listed (ETag {etag}, listed {obj.md5})")
            check = _Verifier(obj, segments)
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
        found = _local_files(self._local(spec.source), spec.source)
        if not found:
            return [], [
                _record(
                    "stage-out", spec.where, spec.source, target, MISSING, f"nothing matches {spec.source}"
                )
            ]
        single = len(found) == 1 and not _MAGIC.search(spec.source) and found[0][1] == ""
        prefix = spec.key if spec.key.endswith("/") or not spec.key else spec.key + "/"
        names = [
            spec.key if single and spec.key and not spec.key.endswith("/") else prefix + (rel or path.name)
            for path, rel in found
        ]
        try:
            listing = self.store.listing(spec.bucket, _common_prefix(names))
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
        return records + self._run("stage-out", [partial(self._put, p) for p in puts], total, lambda: False)

    def _put(self, put: Put) -> Transfer:
        record = Transfer("stage-out", put.spec.where, str(put.path), f"allas:{put.spec.bucket}/{put.name}")
        started = time.monotonic()
        try:
            size = put.path.stat().st_size
            remote = put.remote
            old = self.store.segments(put.spec.bucket, put.name) if remote and remote.slo else None
            if remote and remote.size == size and _same(put.path, remote, old):
                record.status, record.md5 = SKIPPED, remote.md5
                return record
            if remote and not put.spec.overwrite:
                record.status = REFUSED
                record.error = f"{record.destination} exists and differs; not replaced (--no-overwrite)"
                return record
            if size > self.settings.segment_size:
                record.md5 = self._retry(lambda: self._upload_large(put, size))
                self._delete_segments(old)
            else:
                record.md5 = self._retry(lambda: self._upload(put, size))
            record.status, record.bytes = DONE, size
        except (StoreError, Corrupt, OSError) as error:
            record.error = str(error)
        record.seconds = round(time.monotonic() - started, 3)
        return record

    def _upload(self, put: Put, size: int) -> str:
        with open(put.path, "rb") as source:
            md5, etag = self.store.upload(put.spec.bucket, put.name, source, size)
        if etag != md5:
            self.store.delete(put.spec.bucket, put.name)
            raise Corrupt(f"{put.path}: Swift stored ETag {etag}, the file read as MD5 {md5}")
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
        return hashlib.md5("".join(s.md5 for s in uploaded).encode()).hexdigest()

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
            except (StoreError, Corrupt, OSError):
                if number == self.settings.retries:
                    raise
                time.sleep(min(2 ** (number - 1), 30))
        raise AssertionError("unreachable")

    def _run(
        self,
        label: str,
        jobs: Sequence[Callable[[], Transfer]],
        total: int,
        cancelled: Callable[[], bool],
    ) -> list[Transfer]:
        """Run the jobs on `threads` threads, showing progress; stop starting new ones if cancelled."""
        progress = Progress(label, len(jobs), total, self.settings.progress)
        results: list[Transfer] = []
        with ThreadPoolExecutor(
            max_workers=self.settings.threads, thread_name_prefix="allasrun-stager"
        ) as pool:
            futures: list[Future[Transfer]] = [pool.submit(job) for job in jobs]
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except Exception as error:  # a bug or a malformed answer fails one transfer, not the run
                    result = Transfer(label, "", "", "", status=FAILED, error=f"unexpected error: {error!r}")
                results.append(result)
                progress.advance(result)
                if cancelled():
                    for pending in futures:
                        pending.cancel()
        progress.close()
        for future in futures:
            if future.cancelled():
                results.append(Transfer(label, "", "", "", status=CANCELLED, error="interrupted by a signal"))
        return results

    def _local(self, name: str) -> Path:
        path = Path(os.path.expanduser(name))
        return path if path.is_absolute() else self.workdir / path


class _Verifier:
    """MD5 of a download as it streams: of the whole object, or of each SLO segment."""

    def __init__(self, obj: RemoteObject, segments: Optional[list[Segment]]) -> None:
        self.obj = obj
        self.segments = segments or []
        self.size = 0
        self.whole = hashlib.md5()
        self.index = 0
        self.left = self.segments[0].size if self.segments else 0
        self.part = hashlib.md5()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if not self.segments:
            self.whole.update(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self.index >= len(self.segments):
                raise Corrupt(f"{self.obj.name}: more data than its segments hold")
            take = view[: self.left]
            self.part.update(take)
            self.whole.update(take)
            self.left -= len(take)
            view = view[len(take) :]
            if self.left == 0:
                self._segment_done()

    def _segment_done(self) -> None:
        expected = self.segments[self.index]
        if self.part.hexdigest() != expected.md5:
            raise Corrupt(
                f"{self.obj.name}: segment {self.index} has MD5 {self.part.hexdigest()}, not {expected.md5}"
            )
        self.index += 1
        self.part = hashlib.md5()
        self.left = self.segments[self.index].size if self.index < len(self.segments) else 0

    def finish(self) -> str:
        """The whole MD5, after checking size and digests; Corrupt if anything is off."""
        if self.size != self.obj.size:
            raise Corrupt(f"{self.obj.name}: received {self.size} bytes, listed {self.obj.size} (short read)")
        if self.segments and self.index != len(self.segments):
            raise Corrupt(f"{self.obj.name}: ended inside segment {self.index}")
        digest = self.whole.hexdigest()
        if not self.segments and digest != self.obj.md5:
            raise Corrupt(f"{self.obj.name}: MD5 {digest} does not match the listed {self.obj.md5}")
        return digest


def _select(spec: StageIn, objects: list[RemoteObject]) -> tuple[list[RemoteObject], str, bool]:
    """Objects a directive names, the part of their names to drop, and whether it is one object."""
    if spec.is_glob:
        pattern = _glob_regex(spec.key)
        return [o for o in objects if pattern.fullmatch(o.name)], spec.base, False
    if not spec.key or spec.key.endswith("/"):
        return objects, spec.key, False
    exact = [o for o in objects if o.name == spec.key]
    if exact:
        return exact, spec.key, True
    prefix = spec.key + "/"
    return [o for o in objects if o.name.startswith(prefix)], prefix, False


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-like: `*` and `?` stay within one path segment, `**` crosses them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _inside(directory: Path, relative: str) -> Optional[Path]:
    """`directory/relative`, or None if the name is empty, absolute or climbs out with `..`."""
    parts = PurePosixPath(relative).parts
    if not relative or relative.startswith("/") or any(part in ("..", ".") for part in parts):
        return None
    return directory.joinpath(*parts)


def _dir_like(text: str, path: Path) -> bool:
    return text.endswith("/") or text in (".", "") or path.is_dir()


def _local_files(path: Path, text: str) -> list[tuple[Path, str]]:
    """Files a stage-out source names, each with its path relative to the source's base."""
    if _MAGIC.search(text):
        base = Path(_MAGIC.split(str(path), 1)[0]).parent if "/" in text else path.parent
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        return [(f, f.relative_to(base).as_posix()) for m in matches for f in _walk(m)]
    if path.is_dir():
        return [(f, f.relative_to(path).as_posix()) for f in _walk(path)]
    return [(path, "")] if path.is_file() else []


def _walk(path: Path) -> list[Path]:
    """A file, or every regular file below a directory (symlinked directories not followed)."""
    if path.is_file():
        return [path]
    return sorted(
        Path(root) / name
        for root, _, names in os.walk(path)
        for name in names
        if (Path(root) / name).is_file()
    )


def _common_prefix(names: Sequence[str]) -> str:
    return os.path.commonprefix(list(names)) if names else ""  # noqa: RUF071 (a string prefix is meant)


def _same(path: Path, obj: RemoteObject, segments: Optional[list[Segment]]) -> bool:
    """Whether a local file has the remote object's content (per segment for SLO)."""
    if obj.slo:
        if not segments:
            return False
        with open(path, "rb") as source:
            return all(_md5(source, segment.size) == segment.md5 for segment in segments)
    with open(path, "rb") as source:
        return _md5(source, obj.size) == obj.md5


def _md5(source: BinaryIO, size: int) -> str:
    digest = hashlib.md5()
    left = size
    while left > 0:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _record(direction: str, where: str, source: str, destination: str, status: str, error: str) -> Transfer:
    return Transfer(direction, where, source, destination, status=status, error=error)

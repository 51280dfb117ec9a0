"""`--pack`: a folder out as one a-put-style object (`.tar`, `.tar.zst`) with its `_ameta`, streamed.

The tar is written as it is sent: tarfile (GNU format, as a-put's `tar -cf`) into zstd if asked,
into pieces of at most PIECE bytes, each uploaded as soon as it is full. A pack that fits one piece
is one object; a larger one goes as Swift segments and a manifest, or as an S3 multipart upload,
in allasrun's layout (`put.py`), so an unfinished one is swept as any other. No tar of the whole
folder is ever on disk: a piece above IN_MEMORY spills to a temporary file (in $TMPDIR, the
node-local disk on Roihu), and only one piece is held at a time.

Then `<object>_ameta`, in a-put's format (what `a-list`, `a-info` and `a-get` read): who, where
from, the compression, and an `ls -l` line per file, as a-put's `find -type f | xargs ls -l`
writes them. Members are named `<folder name>/...`, as `a-put <folder name>` run beside the
folder names them, which is where `a-get` and `--unpack` put them.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import io
import os
import pwd
import socket
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Optional, Protocol, cast

from allasrun import __version__
from allasrun.errors import Corrupt, LocalFileError, StoreError
from allasrun.log import log
from allasrun.staging.payload import IN_MEMORY
from allasrun.staging.plan import StageOut
from allasrun.staging.put import LARGEST_SEGMENT, MAX_SEGMENTS, checked_upload, segment_stamp, uploading
from allasrun.staging.select import AMETA, local_path
from allasrun.staging.store import CHUNK, Part, PartStore, Segment, Store, slo_etag
from allasrun.staging.transfer import DONE, MISSING, REFUSED, Retry, Transfer, not_moved
from allasrun.staging.unpack import TAR, TAR_ZST, ZST
from allasrun.staging.verify import MD5, PER_PART, PER_SEGMENT

PIECE = 64 * 1024 * 1024  # a pack is sent in pieces of this size (smaller if segment-size says so)
TAR_END = 10240  # two zero blocks, padded to tar's 20-block record
SIX_MONTHS = 182 * 24 * 3600  # `ls -l` shows the year instead of the time for older files


@dataclass(frozen=True)
class Pack:
    """One folder (or file) to pack into one object."""

    spec: StageOut
    path: Path
    name: str  # the object's
    root: str  # the members' top name: the folder's own


@dataclass
class _Listing:
    """What went into the tar, for the `_ameta`: an `ls -l` line per regular file."""

    lines: list[str] = field(default_factory=list)
    files: int = 0


class _Sink(Protocol):
    """Where a large pack's pieces go: Swift segments or S3 parts."""

    def send(self, number: int, piece: BinaryIO, length: int) -> None: ...

    def finish(self) -> tuple[str, str]: ...

    def abandon(self) -> None: ...


class Packer:
    """Stage-out of `--pack` directives from `workdir`, for the stager that runs them."""

    def __init__(self, store: Store, workdir: Path, retry: Retry, segment_size: int) -> None:
        self.store = store
        self.workdir = workdir
        self._retry = retry
        self._segment_size = segment_size

    def resolve(self, spec: StageOut) -> tuple[Optional[Pack], list[Transfer]]:
        """The pack a directive asks for, or the record of why there is none."""
        path = local_path(spec.source, self.workdir)
        root = PurePosixPath(spec.source.rstrip("/") or ".").name or path.name
        folder = path.is_dir()
        name = _object_name(spec, root.replace(" ", "_"), folder)
        if not os.path.lexists(path):
            reason = f"{spec.source} does not exist"
            return None, [
                not_moved("stage-out", spec.where, spec.source, spec.address(name), MISSING, reason)
            ]
        if not folder and not path.is_file():
            reason = f"{spec.source} is not a folder or a file: --pack packs those"
            return None, [
                not_moved("stage-out", spec.where, spec.source, spec.address(name), REFUSED, reason)
            ]
        return Pack(spec, path, name, root), []

    def pack(self, pack: Pack, record: Transfer) -> None:
        """The pack uploaded and checked, then its `_ameta`: the job that fills in `record`."""
        spec = pack.spec
        self.store.ensure_bucket(spec.bucket)
        if not spec.overwrite and self._exists(spec.bucket, pack.name):
            record.status = REFUSED
            record.error = f"{record.destination} exists; not replaced (--no-overwrite)"
            return
        listing = _Listing()
        size, md5, verified = self._send(pack, listing)
        self._retry(lambda: self._put_ameta(pack, listing))
        record.status, record.bytes, record.md5, record.verified = DONE, size, md5, verified
        log.info(
            "%s: %d file(s) of %s packed into %d bytes, with %s%s",
            record.destination,
            listing.files,
            pack.path,
            size,
            pack.name,
            AMETA,
        )

    def _exists(self, bucket: str, name: str) -> bool:
        with contextlib.suppress(StoreError):
            return any(o.name == name for o in self.store.listing(bucket, name))
        return False

    def _send(self, pack: Pack, listing: _Listing) -> tuple[int, str, str]:
        """Write the archive through the pieces; its size, ETag and what checked it."""
        piece = piece_size(_bound(pack), self._segment_size)
        pieces = _Pieces(piece, lambda: self._large(pack, piece))
        target = cast(IO[bytes], pieces)  # what tarfile and zstd write to; it has what they call
        if pack.spec.compress:
            import zstandard  # only when a pack is compressed

            threads = len(os.sched_getaffinity(0))  # the job's CPUs, not the node's
            compressor = zstandard.ZstdCompressor(level=3, threads=threads, write_checksum=True)
            target = compressor.stream_writer(target, closefd=False)
        try:
            if pack.path.is_dir():
                _write_tar(pack, target, listing)
            else:
                _write_file(pack, target, listing)
            if pack.spec.compress:
                target.close()  # the zstd frame's end
        except OSError as error:
            pieces.abandon()
            raise LocalFileError.of(error, "pack") from None
        except BaseException:
            pieces.abandon()
            raise
        return pieces.close(lambda piece, length: self._single(pack, piece, length))

    def _single(self, pack: Pack, piece: BinaryIO, length: int) -> tuple[str, str]:
        bucket, name = pack.spec.bucket, pack.name
        return self._retry(lambda: checked_upload(self.store, bucket, name, piece, length, name)), MD5

    def _large(self, pack: Pack, piece: int) -> _Sink:
        if isinstance(self.store, PartStore):
            return _Parts(self.store, pack, self._retry)
        return _Segments(self.store, pack, self._retry, piece)

    def _put_ameta(self, pack: Pack, listing: _Listing) -> None:
        data = ameta(pack, listing, self.store).encode()
        name = pack.name + AMETA
        checked_upload(self.store, pack.spec.bucket, name, io.BytesIO(data), len(data), name)


class _Pieces:
    """A write-only stream cut into pieces; each full piece goes to the large upload, begun on the first.

    A piece is sent only once more bytes come after it, so a stream that fits one piece is
    known to before anything is sent, and goes as one object (`close`).
    """

    def __init__(self, size: int, large: Callable[[], _Sink]) -> None:
        self._size = size
        self._large = large
        self._sink: Optional[_Sink] = None
        self._number = 0
        self._current = self._new()
        self._filled = 0
        self.total = 0

    def _new(self) -> IO[bytes]:
        return tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._filled == self._size:
                self._flush()
            taken = view[: self._size - self._filled]
            self._current.write(taken)
            self._filled += len(taken)
            view = view[len(taken) :]
        self.total += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing: a piece goes when it is full."""

    def _flush(self) -> None:
        if self._sink is None:
            self._sink = self._large()
        self._number += 1
        self._sink.send(self._number, self._current, self._filled)  # type: ignore[arg-type]
        self._current.close()
        self._current, self._filled = self._new(), 0

    def close(self, single: Callable[[BinaryIO, int], tuple[str, str]]) -> tuple[int, str, str]:
        """The last piece sent: the whole size, its ETag and what checked it."""
        try:
            if self._sink is None:
                etag, verified = single(self._current, self._filled)  # type: ignore[arg-type]
            else:
                self._flush()
                etag, verified = self._sink.finish()
        except BaseException:
            self.abandon()
            raise
        finally:
            self._current.close()
        return self.total, etag, verified

    def abandon(self) -> None:
        """A failed pack: what its large upload left is removed (best effort)."""
        if self._sink is not None:
            self._sink.abandon()
            self._sink = None


class _Segments:
    """Pieces as Swift segments in `<bucket>_segments`, in put.py's layout, then a manifest."""

    def __init__(self, store: Store, pack: Pack, retry: Retry, piece: int) -> None:
        self.store, self.pack, self._retry = store, pack, retry
        self.bucket = f"{pack.spec.bucket}_segments"
        store.ensure_bucket(self.bucket)
        self._in_flight = contextlib.ExitStack()  # marked as uploading (put.py's sweep) until over
        stamp = self._in_flight.enter_context(uploading(segment_stamp()))
        self.prefix = f"{pack.name}/slo/{stamp}/0/{piece}"  # the size is not known yet: 0
        self.segments: list[Segment] = []

    def send(self, number: int, piece: BinaryIO, length: int) -> None:
        if number > MAX_SEGMENTS:  # the folder grew past its bound while it was packed
            raise StoreError(f"{self.pack.path}: the pack needs more than {MAX_SEGMENTS} segments")
        name = f"{self.prefix}/{number - 1:08d}"

        def attempt() -> Segment:
            piece.seek(0)
            md5, etag = self.store.upload(self.bucket, name, piece, length)
            if etag != md5:
                raise Corrupt(f"{self.pack.name}: segment {number} stored as {etag}, sent as {md5}")
            return Segment(f"{self.bucket}/{name}", length, md5)

        self.segments.append(self._retry(attempt))

    def finish(self) -> tuple[str, str]:
        try:
            self._retry(lambda: self.store.put_manifest(self.pack.spec.bucket, self.pack.name, self.segments))
        finally:
            self._in_flight.close()
        return slo_etag(self.segments), PER_SEGMENT

    def abandon(self) -> None:
        for segment in self.segments:
            with contextlib.suppress(StoreError):
                self.store.delete(self.bucket, segment.path.partition("/")[2])
        self._in_flight.close()


class _Parts:
    """Pieces as the parts of an S3 multipart upload."""

    def __init__(self, store: PartStore, pack: Pack, retry: Retry) -> None:
        self.store, self.pack, self._retry = store, pack, retry
        self.upload_id = store.begin(pack.spec.bucket, pack.name)
        self.parts: list[Part] = []

    def send(self, number: int, piece: BinaryIO, length: int) -> None:
        bucket, name = self.pack.spec.bucket, self.pack.name

        def attempt() -> Part:
            piece.seek(0)
            part = self.store.upload_part(bucket, name, self.upload_id, number, piece, length)
            if part.etag != part.md5:
                raise Corrupt(f"{name}: part {number} stored as {part.etag}, sent as {part.md5}")
            return part

        self.parts.append(self._retry(attempt))

    def finish(self) -> tuple[str, str]:
        bucket, name = self.pack.spec.bucket, self.pack.name
        return self._retry(lambda: self.store.complete(bucket, name, self.upload_id, self.parts)), PER_PART

    def abandon(self) -> None:
        with contextlib.suppress(StoreError):
            self.store.abort(self.pack.spec.bucket, self.pack.name, self.upload_id)


def piece_size(bound: int, segment_size: int) -> int:
    """The piece size for a pack of at most `bound` bytes.

    PIECE (or a smaller segment-size), raised so that the pack needs at most 90% of the segments
    a manifest may list (the rest is room for files that grow while they are packed); a pack
    that even the largest segments cannot hold fails before any byte is sent. The bound is of
    the tar: zstd's output is smaller, but cannot be known before it is made.
    """
    wanted = min(segment_size, PIECE)
    needed = -(-bound // (MAX_SEGMENTS * 9 // 10))
    if needed > LARGEST_SEGMENT:
        raise StoreError(f"{bound} bytes is more than one object can hold ({MAX_SEGMENTS} segments of 5 GiB)")
    return max(wanted, needed)


def _bound(pack: Pack) -> int:
    """The tar's size at most, from one walk of stats (a small cost beside reading the files).

    Per entry, its data in 512-byte blocks and a generous 2 KiB plus twice its name for its
    header, a GNU long name and a long link target; then the end.
    """
    total = TAR_END
    for path, name in _walk(pack.path, pack.root):
        info = path.lstat()
        data = info.st_size if stat.S_ISREG(info.st_mode) else 0
        total += 2048 + 2 * len(name.encode()) + -(-data // 512) * 512
    return total


def _object_name(spec: StageOut, root: str, folder: bool) -> str:
    """a-put's name: `<name>.tar` (`.tar.zst`) for a folder, `<name>` (`.zst`) for a file.

    A destination ending in `/` (or a bare bucket) gets the folder's name, spaces as `_`; one
    naming an object gets the suffix added if it lacks it, as a-put's `--object` does.
    """
    suffix = (TAR_ZST if spec.compress else TAR) if folder else (ZST if spec.compress else "")
    if not spec.key or spec.key.endswith("/"):
        return f"{spec.key}{root}{suffix}"
    return spec.key if spec.key.endswith(suffix) else spec.key + suffix


def _write_tar(pack: Pack, target: IO[bytes], listing: _Listing) -> None:
    """The folder as a GNU tar, members in name order, links stored as links (never followed)."""
    with tarfile.open(fileobj=target, mode="w|", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        for path, name in _walk(pack.path, pack.root):
            info = tar.gettarinfo(str(path), name)
            if info is None:  # a socket: tar leaves it out too
                log.warning("%s: %s is a socket; not packed", pack.spec.where, path)
                continue
            if info.isreg():
                with open(path, "rb") as source:
                    tar.addfile(info, source)
            else:
                tar.addfile(info)
            if info.isreg() or info.islnk():  # what `find -type f` lists, hard links too
                listing.lines.append(ls_line(os.stat(path, follow_symlinks=False), name))
                listing.files += 1


def _write_file(pack: Pack, target: IO[bytes], listing: _Listing) -> None:
    """A single file as it is (a-put's form for a file), compressed if asked."""
    with open(pack.path, "rb") as source:
        while chunk := source.read(CHUNK):
            target.write(chunk)
        listing.lines.append(ls_line(os.fstat(source.fileno()), pack.spec.source))
    listing.files = 1


def _walk(path: Path, name: str) -> Iterator[tuple[Path, str]]:
    yield path, name
    if path.is_dir() and not path.is_symlink():
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            yield from _walk(Path(entry.path), f"{name}/{entry.name}")


def ls_line(info: os.stat_result, name: str, now: Optional[float] = None) -> str:
    """One file as `ls -l` shows it (a-put's file list): mode, links, owner, group, size, date, name."""
    moment = time.localtime(info.st_mtime)
    recent = abs((now or time.time()) - info.st_mtime) < SIX_MONTHS
    when = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", moment)
    owner = _name(lambda uid: pwd.getpwuid(uid).pw_name, info.st_uid)
    group = _name(lambda gid: grp.getgrgid(gid).gr_name, info.st_gid)
    return f"{stat.filemode(info.st_mode)} {info.st_nlink} {owner} {group} {info.st_size} {when} {name}"


def _name(look_up: Callable[[int], str], number: int) -> str:
    """A user's or group's name, or its number where it has none (as `ls -l` shows it)."""
    try:
        return look_up(number)
    except KeyError:
        return str(number)


def ameta(pack: Pack, listing: _Listing, store: Store) -> str:
    """The `_ameta` text, line for line as a-put writes it (trailing spaces included)."""
    protocol = "S3 " if isinstance(store, PartStore) else "swift"
    host = socket.gethostname()
    job = os.environ.get("SLURM_JOB_ID")
    lines = [
        f"user: {getpass.getuser()}",
        f"host: {host}",
        f"host_name: {host.split('.')[0]}",
        f"input: {pack.root}",
        f"original_location: {os.path.abspath(pack.path)} ",
        f"protocol: {protocol}",
        f"compression: {'zstd' if pack.spec.compress else 'none'}",
        f"Note: packed by allasrun {__version__}" + (f" in job {job}" if job else ""),
        *(listing.lines or ["Empty directory"]),
    ]
    return "\n".join(lines) + "\n"


def pack_record(pack: Pack) -> Transfer:
    """The record a pack starts with, for its job to fill in."""
    return Transfer("stage-out", pack.spec.where, str(pack.path), pack.spec.address(pack.name))

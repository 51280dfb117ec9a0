"""`--unpack`: a-put's archives (`.tar`, `.tar.zst`, `.zst`) extracted as they stream in, member by member.

allasrun extracts itself rather than calling `tarfile.extractall`: Debian 12's Python (3.11.2)
predates tarfile's extraction filters, and a refusal must name the object and the member. Every
member is checked against the tree as it stands when the member comes (a link extracted earlier
counts), which is what keeps a chain of links inside: names with `..` or a leading `/`, links whose
target resolves outside the tree, hard links to anything but a file already extracted, and device
files and FIFOs are refused; set-id bits and owners are dropped (as `tar -x -o` does for a user).
The tree is made in a temporary directory and moved into place only once the object's MD5 has
checked out, so a corrupt or refused archive leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Optional

from allasrun.errors import BadArchive, LocalFileError
from allasrun.staging.store import CHUNK
from allasrun.staging.transfer import Interrupted

TAR, TAR_ZST, ZST = ".tar", ".tar.zst", ".zst"
KINDS = (TAR_ZST, TAR, ZST)  # longest first: `x.tar.zst` is a compressed tar, not a compressed file


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def kind_of(name: str) -> Optional[str]:
    """Which of a-put's forms an object's name says it is; None for any other name."""
    return next((kind for kind in KINDS if name.endswith(kind) and len(name) > len(kind)), None)


@dataclass
class Unpacked:
    """What one archive put in the tree: member names in order, and each regular file's size."""

    members: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)


class Body(io.RawIOBase):
    """A download's chunks as a file to read, each chunk handed to `seen` (the MD5) first.

    `stop` is looked at between chunks, as a plain download does.
    """

    def __init__(self, chunks: Iterator[bytes], seen: Callable[[bytes], None], stop: threading.Event) -> None:
        self._chunks = chunks
        self._seen = seen
        self._stop = stop
        self._left = memoryview(b"")
        self.ended = False  # every chunk read: the MD5 can be judged

    def readable(self) -> bool:
        """Always: io's readers ask."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """The next bytes of the current chunk; a new chunk (hashed first) when it is used up."""
        if not self._left:
            if self._stop.is_set():
                raise Interrupted
            chunk = next(self._chunks, b"")
            self.ended = not chunk
            self._seen(chunk)
            self._left = memoryview(chunk)
        taken = min(len(buffer), len(self._left))
        buffer[:taken] = self._left[:taken]
        self._left = self._left[taken:]
        return taken

    def drain(self) -> None:
        """Read to the end, so that every byte of the object has been hashed."""
        while self.read(CHUNK):
            pass


def unpack(kind: str, body: Body, root: Path, name: str) -> Unpacked:
    """The archive `name` from `body` into the empty directory `root`; the stream read to its end.

    A `.zst` is one file, named as the object less `.zst` (as a-get names it). An archive that
    cannot be read is read to its end before BadArchive is raised: if its MD5 fails too, it was
    the transfer that broke it (`Body.ended` tells the caller it can judge).
    """
    raw = io.BufferedReader(body, CHUNK)
    stream: IO[bytes] = raw
    unreadable: tuple[type[Exception], ...] = (tarfile.TarError, EOFError)
    if kind in (TAR_ZST, ZST):
        import zstandard  # only when a compressed archive is unpacked

        stream = io.BufferedReader(_Unzstd(raw, zstandard.ZstdDecompressor().decompressobj), CHUNK)
        unreadable += (zstandard.ZstdError,)
    try:
        if kind == ZST:
            unpacked = _one_file(stream, root, PurePosixPath(name).name[: -len(ZST)])
        else:
            unpacked = _Extraction(root, name).run(stream)
        while stream.read(CHUNK):  # what follows the tar's end: zero blocks, padding
            pass
    except unreadable as error:
        body.drain()
        raise BadArchive(f"{name}: not a readable {kind.lstrip('.')} archive ({error})") from None
    body.drain()
    return unpacked


class _Unzstd(io.RawIOBase):
    """zstd frames from `source`, decompressed one after another and fed a few KiB at a time.

    Several frames, as `zstd -d` reads them (pzstd writes several). Not zstandard's stream_reader:
    it takes a stream that ends inside a frame for a short one, and a `.zst` cut short would
    arrive as a short file. Fed SLICE bytes at a time, a step's output stays bounded (a zstd
    block holds at most 128 KiB), however well the data packs.
    """

    SLICE = 4096

    def __init__(self, source: IO[bytes], fresh: Callable[[], Any]) -> None:
        self._source = source
        self._fresh = fresh  # a new ZstdDecompressionObj, for the next frame
        self._frame = fresh()
        self._inside = False  # fed some of a frame that has not ended
        self._out = memoryview(b"")

    def readable(self) -> bool:
        """Always: io's readers ask."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """The next decompressed bytes; EOFError if the data ends inside a frame."""
        while not self._out:
            data = self._source.read(self.SLICE)
            if not data:
                if self._inside:
                    raise EOFError("the zstd data ends inside a frame: the archive is cut short")
                return 0
            self._out = memoryview(self._decompress(data))
        taken = min(len(buffer), len(self._out))
        buffer[:taken] = self._out[:taken]
        self._out = self._out[taken:]
        return taken

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            self._inside = True
            out.append(self._frame.decompress(data))
            data = b""
            if self._frame.eof:  # the rest, if any, starts the next frame
                data = self._frame.unused_data
                self._frame, self._inside = self._fresh(), False
        return b"".join(out)


def _one_file(stream: IO[bytes], root: Path, name: str) -> Unpacked:
    size = _write(root / name, stream, 0o666)
    return Unpacked([name], {name: size})


def _write(path: Path, source: IO[bytes], mode: int) -> int:
    """A new file at `path` (never through a link) with what `source` holds; its size.

    `mode` as the archive has it, less set-id bits; the umask applies, as it does to `tar -x`.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, mode)
    except OSError as error:
        raise LocalFileError.of(error, "unpack into") from None
    size = 0
    with os.fdopen(descriptor, "wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            size += len(chunk)
    return size


class _Extraction:
    """One tar's members, each checked and made under `root`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.name = name
        self.unpacked = Unpacked()
        self._folders: list[tuple[Path, tarfile.TarInfo]] = []
        self._umask = _umask()

    def run(self, stream: IO[bytes]) -> Unpacked:
        with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
            for member in tar:
                self._member(tar, member)
        for path, member in reversed(self._folders):  # last: making their entries changed their times
            os.chmod(path, member.mode & 0o777 & ~self._umask | stat.S_IRWXU)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        return self.unpacked

    def _refuse(self, member: tarfile.TarInfo, why: str) -> BadArchive:
        return BadArchive(f"{self.name}: member {member.name!r} {why}; nothing of it was unpacked")

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        relative = self._relative(member, member.name)
        path = self.root / relative
        self._inside(member, os.path.realpath(path.parent), "lies behind a link that leads out of the tree")
        if member.isdir():
            self._folder(member, path)
        elif member.isreg():
            self._clear(member, path)
            source = tar.extractfile(member)
            if source is None:  # only for links and folders, which are not here
                raise self._refuse(member, "has no data")
            self.unpacked.sizes[relative] = _write(path, source, member.mode & 0o777)
            os.utime(path, (member.mtime, member.mtime))
        elif member.issym():
            self._symlink(member, path)
        elif member.islnk():
            self._hardlink(member, path, relative)
        else:
            raise self._refuse(member, "is a device file or FIFO, which --unpack does not make")
        self.unpacked.members.append(relative)

    def _relative(self, member: tarfile.TarInfo, name: str) -> str:
        """A member's name as a path under the root: refused if absolute or with `..`."""
        if name.startswith("/"):
            raise self._refuse(member, f"has an absolute path ({name!r})")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self._refuse(member, f"climbs out with '..' ({name!r})")
        if not parts or any("\0" in part for part in parts):
            raise self._refuse(member, "has no usable name")
        return "/".join(parts)

    def _inside(self, member: tarfile.TarInfo, real: str, why: str) -> None:
        if real != self.real_root and not real.startswith(self.real_root + os.sep):
            raise self._refuse(member, why)

    def _clear(self, member: tarfile.TarInfo, path: Path) -> None:
        """Make the parents, and remove a non-folder of the same name (a member given twice)."""
        _mkdirs(path.parent)
        if path.is_dir() and not path.is_symlink():
            raise self._refuse(member, "would replace a folder of the archive's")
        if os.path.lexists(path):
            path.unlink()

    def _folder(self, member: tarfile.TarInfo, path: Path) -> None:
        if os.path.lexists(path) and not (path.is_dir() and not path.is_symlink()):
            path.unlink()
        _mkdirs(path)
        self._folders.append((path, member))

    def _symlink(self, member: tarfile.TarInfo, path: Path) -> None:
        """A link whose target, resolved from where it stands, stays in the tree.

        Written with its target normalised (`a/../b` as `b`): a part of the target that is no
        link now cannot become one later (a folder is never replaced), so what stays inside
        now stays inside.
        """
        target = member.linkname
        if not target or target.startswith("/"):
            raise self._refuse(member, f"is a link to an absolute path ({target!r})")
        target = os.path.normpath(target)
        real = os.path.realpath(os.path.join(os.path.realpath(path.parent), target))
        self._inside(member, real, f"is a link that leads out of the tree ({member.linkname!r})")
        self._clear(member, path)
        os.symlink(target, path)

    def _hardlink(self, member: tarfile.TarInfo, path: Path, relative: str) -> None:
        """A hard link to a regular file this archive already put in the tree."""
        source = self.root / self._relative(member, member.linkname)
        why = f"is a hard link out of the tree ({member.linkname!r})"
        self._inside(member, os.path.realpath(source), why)
        try:
            regular = stat.S_ISREG(os.lstat(source).st_mode)
        except FileNotFoundError:
            regular = False
        if not regular:
            raise self._refuse(member, f"is a hard link to {member.linkname!r}, not a file of the archive")
        self._clear(member, path)
        os.link(source, path, follow_symlinks=False)
        self.unpacked.sizes[relative] = os.lstat(path).st_size


def _mkdirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LocalFileError.of(error, "make the folder") from None


def move_into(source: Path, destination: Path) -> None:
    """Every entry of `source` into `destination`, folders merged with folders already there.

    A renamed entry costs no copy; a file replaces a file, but a folder already there is never
    replaced by a file (that would lose what it holds): that is an error naming it.
    """
    _mkdirs(destination)
    for entry in os.scandir(source):
        target = destination / entry.name
        moving_folder = entry.is_dir(follow_symlinks=False)
        there_folder = target.is_dir() and not target.is_symlink()
        if moving_folder and there_folder:
            move_into(Path(entry.path), target)
        elif there_folder:
            raise LocalFileError(f"cannot unpack {target}: a folder of that name is in the way")
        else:
            if moving_folder and os.path.lexists(target):
                target.unlink()
            os.replace(entry.path, target)


def check_listing(ameta: str, unpacked: Unpacked, name: str) -> int:
    """The files a-put listed in `<name>_ameta` (its `ls -l` lines) against what was unpacked.

    Each file a-put saw must have arrived with the size it had; the number checked is returned
    (0 when the metadata lists no files: `--skip-filelist`, or an empty directory). `ls -l`
    writes a name with a newline as it is, so such a file's line ends at the newline: it is
    matched by the name's first line.
    """
    listed = _listed_files(ameta)
    arrived = {os.path.normpath(path): size for path, size in unpacked.sizes.items()}
    cut = {path.split("\n")[0]: size for path, size in arrived.items() if "\n" in path}
    single = len(unpacked.sizes) == 1 and len(listed) == 1  # a `.zst`: a-put listed the file by its path
    for path, size in listed.items():
        key = os.path.normpath(path).lstrip("/")
        got = next(iter(arrived.values())) if single else arrived.get(key, cut.get(key))
        if got is None:
            raise BadArchive(f"{name}: {path} is listed in {name}_ameta but is not in the archive")
        if got != size:
            raise BadArchive(f"{name}: {path} is {got} bytes, {name}_ameta says {size}")
    return len(listed)


def _listed_files(ameta: str) -> dict[str, int]:
    """`ls -l` lines of regular files: `-rw-r--r-- 1 user group SIZE Mon DD HH:MM path`."""
    files = {}
    for line in ameta.splitlines():
        words = line.split(None, 8)
        if len(words) == 9 and line.startswith("-") and words[4].isdigit():
            files[words[8]] = int(words[4])
    return files

"""Writing files that other processes read at any moment: whole or not at all, never torn.

A job's rclone and swift calls read the configuration while the keeper rewrites it, on a
shared file system and across a crash, so every write is temp file, fsync, rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from allasrun.errors import UnsafeFile

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make sure it is ours and only we can enter it.

    A shared /tmp lets anyone create a name first, so the last component is opened without
    following a symlink and judged by what was opened: a link, a non-directory or a directory
    of another user is refused (UnsafeFile), never chmodded or written into.
    """
    with contextlib.suppress(FileExistsError):  # a dangling link: refused below, not followed
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if path.is_symlink() else "not a directory"
            raise UnsafeFile(f"{path}: {kind}; refusing to keep secrets there") from None
        raise
    try:
        found = os.fstat(fd)
        if found.st_uid != os.geteuid():
            raise UnsafeFile(
                f"{path}: owned by another user (uid {found.st_uid}); refusing to keep secrets there"
            )
        if stat.S_IMODE(found.st_mode) != PRIVATE_DIR:
            os.fchmod(fd, PRIVATE_DIR)
    finally:
        os.close(fd)
    return path


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new file, never a mix.

    The temporary file lives in the same directory (rename is only atomic within one file
    system), is created 0600 before any secret is written to it, and is fsynced before the
    rename; the directory is fsynced after it so the new name survives a crash.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), PRIVATE_FILE)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None:  # write() and fsync() name no file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename; some file systems refuse fsync on a directory, which is harmless."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a side file next to `path` (a renamed file cannot be locked).

    Used for read-modify-write of files shared by several jobs of one user, and to let one
    of a hundred tasks starting together authenticate while the others wait for its token.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""Which objects and files a directive names, and where each one lands (pure, but for the file system).

Object names come from the store and so from anyone who can write to the bucket: a name
that would land outside the destination (`..`, absolute) is refused here, before any byte
is written. Output trees come from the job and from anyone who can write to its directories:
a symbolic link in one is never followed out of it, so a link to `~/.ssh/id_ed25519` that a
project member or a workflow tool left in a shared output directory is not uploaded.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Optional, Union

from allasrun.staging.plan import StageIn, is_pattern, is_utf8, pattern_start

if TYPE_CHECKING:
    from allasrun.staging.store import RemoteObject


def select_objects(spec: StageIn, objects: list[RemoteObject]) -> tuple[list[RemoteObject], str, bool]:
    """Objects a directive names, the part of their names to drop, and whether it is one object."""
    if spec.is_glob:
        pattern = glob_regex(spec.key)
        return [o for o in objects if pattern.fullmatch(o.name)], spec.base, False
    if not spec.key or spec.key.endswith("/"):
        return objects, spec.key, False
    exact = [o for o in objects if o.name == spec.key]
    if exact:
        return exact, spec.key, True
    prefix = spec.key + "/"
    return [o for o in objects if o.name.startswith(prefix)], prefix, False


AMETA = "_ameta"  # a-put's companion of each object it stores: `<object>_ameta`, what it recorded


def without_companions(objects: list[RemoteObject]) -> tuple[list[RemoteObject], int]:
    """The objects but a-put's `<object>_ameta` companions of others among them, and how many those were.

    A companion is a few lines of text about its object (who, where from, the file list): as
    files beside the data, half of a prefix's files were these (12 of 24 in one run). One whose
    object is not among them is no companion (or was asked for, as a glob `*_ameta` asks) and stays.
    """
    names = {o.name for o in objects}
    kept = [o for o in objects if not (o.name.endswith(AMETA) and o.name[: -len(AMETA)] in names)]
    return kept, len(objects) - len(kept)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-like: `*` and `?` stay within one path segment, `**` crosses them, `[...]` is a set."""
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
        elif (found := _char_set(pattern, i)) is not None:
            out.append(found[0])
            i = found[1]
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _char_set(pattern: str, start: int) -> Optional[tuple[str, int]]:
    """The set `[...]` at `start` as a regex and the index after it; None if there is none.

    As in the shell, a `]` first in the set (after `[` or `[!`) is a member, and a `[` that
    opens no valid set (`[]`, `[!]`, `[z-a]`) is a literal character, never a regex error.
    """
    if pattern[start] != "[":
        return None
    negate = pattern.startswith("[!", start)
    first = start + 2 if negate else start + 1
    end = pattern.find("]", first + 1)
    if end < 0:
        return None
    members = "".join(c if c == "-" else re.escape(c) for c in pattern[first:end])
    regex = f"[{'^' if negate else ''}{members}]"
    try:
        re.compile(regex)
    except re.error:
        return None
    return regex, end + 1


def inside(directory: Path, relative: str) -> Optional[Path]:
    """`directory/relative`, or None if the name is empty, absolute, or has a `..`, `.` or empty part.

    `.` and empty parts are refused too: `data/.` or `a//b` would name a directory, or the same
    file as another object does. So is a name no file can have: one with a NUL (no system call
    takes it) or a lone surrogate (a listing that was not UTF-8, which Swift's names must be).
    Every other character is kept, newlines and backslashes included: on Linux they are
    ordinary characters of one part, never separators.
    """
    parts = relative.split("/")
    if any(part in ("", ".", "..") or "\0" in part for part in parts) or not is_utf8(relative):
        return None
    return directory.joinpath(*parts)


def dir_like(text: str, path: Path) -> bool:
    """Whether a destination means a directory: it says so (`/`, `.`) or is one already."""
    return text.endswith("/") or text in (".", "") or path.is_dir()


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file a stage-out uploads: where it was found, its name below the source, what to read.

    `real` is the regular file to open: the file itself, or the one a link in the tree names.
    Whatever is opened must lie in `tree`, the source directory (or glob's fixed part) resolved;
    for a single named file, the directory it is really in.

    Held as its folder (one `Path` shared by the files of a folder) and its name, the paths made
    when asked for: a `Path` per file costs about 300 bytes, 30 MB for a stage-out of 100,000.
    """

    folder: Path
    name: str
    relative: str
    tree: Path
    link_target: Optional[Path] = None  # what a link in the tree names; None for a regular file

    @classmethod
    def at(
        cls, path: Path, relative: str, real: Path, tree: Path, folders: Optional[dict[Path, Path]] = None
    ) -> LocalFile:
        """The file at `path`, read from `real` (itself, or what the link at `path` names).

        `folders` keeps one `Path` per folder for the files found in it.
        """
        folder = path.parent if folders is None else folders.setdefault(path.parent, path.parent)
        return cls(folder, path.name, relative, tree, None if real == path else real)

    @property
    def path(self) -> Path:
        """Where the file was found."""
        return self.folder / self.name

    @property
    def real(self) -> Path:
        """The regular file to read."""
        return self.link_target or self.path


@dataclass(frozen=True)
class Unfollowed:
    """A symbolic link in an output tree that is not uploaded; `refused` if it leads out of the tree."""

    path: Path
    relative: str
    reason: str
    refused: bool


def local_files(path: Path, text: str) -> tuple[list[LocalFile], list[Unfollowed]]:
    """The files a stage-out source names, and the links in it that are not followed.

    A source the user named is followed even if it is a link; links found below it are not
    followed out of it (see `_entry`).
    """
    if is_pattern(text):
        fixed = str(path)[: pattern_start(str(path))].rpartition("/")[0]
        base = Path(fixed or "/")
        matches = _matches(base, str(path)[len(fixed) + 1 :])
        below = [p for m in matches if m.is_dir() and not m.is_symlink() for p in _entries(m)]
        return _sorted_out(base, base.resolve(), [*matches, *below])
    if path.is_dir():
        return _sorted_out(path, path.resolve(), _entries(path))
    if path.is_file():
        real = path.resolve()
        return [LocalFile.at(path, "", real, real.parent)], []
    return [], []


def _matches(base: Path, pattern: str) -> list[Path]:
    """Entries below `base` that match, found a segment at a time as the shell does.

    A directory is listed only where the pattern leads into it, and never entered through a
    link; from a segment with `**` on, everything below is walked (links not entered) and
    matched against the rest of the pattern.
    """
    parts = pattern.split("/")
    found = [base]
    for index, part in enumerate(parts):
        found = [d for d in found if d == base or (d.is_dir() and not d.is_symlink())]
        if "**" in part:
            rest = glob_regex("/".join(parts[index:]))
            return sorted(
                p for d in found for p in _entries(d) if rest.fullmatch(p.relative_to(d).as_posix())
            )
        found = [child for d in found for child in _children(d, part)]
    return found


def _children(directory: Path, part: str) -> list[Path]:
    """The entries of `directory` one segment of a pattern names."""
    if not is_pattern(part):
        return [directory / part] if os.path.lexists(directory / part) else []
    regex = glob_regex(part)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [directory / name for name in sorted(names) if regex.fullmatch(name)]


def _sorted_out(base: Path, tree: Path, paths: Iterable[Path]) -> tuple[list[LocalFile], list[Unfollowed]]:
    """The files among `paths` (each once, named relative to `base`) and the links not followed."""
    folders: dict[Path, Path] = {}
    found = {path: _entry(path, path.relative_to(base).as_posix(), tree, folders) for path in paths}
    ordered = [found[path] for path in sorted(found)]
    return (
        [e for e in ordered if isinstance(e, LocalFile)],
        [e for e in ordered if isinstance(e, Unfollowed)],
    )


def _entries(top: Path) -> Iterator[Path]:
    """Everything below `top`; links to directories are listed, not entered."""
    for root, dirs, names in os.walk(top):
        yield from (Path(root) / name for name in dirs + names)


def _entry(
    path: Path, relative: str, tree: Path, folders: dict[Path, Path]
) -> Union[LocalFile, Unfollowed, None]:
    """A regular file is uploaded; a link only if it names a regular file inside `tree`.

    A link out of the tree is refused, whatever it names: following it could upload a private
    file, and leaving it out silently would lose a result the directory seems to hold. A link
    to a directory in the tree is not followed (its files are staged under their own names, and
    following could loop); one that names nothing in the tree is skipped. Directories, devices
    and pipes are not files to upload.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None  # gone while being listed: it was never there to upload
    if stat.S_ISREG(mode):
        return LocalFile.at(path, relative, path, tree, folders)
    if not stat.S_ISLNK(mode):
        return None
    real = Path(os.path.realpath(path))
    if not _within(real, tree):
        return Unfollowed(path, relative, f"a symbolic link to {real}, outside {tree}", refused=True)
    if real.is_file():
        return LocalFile.at(path, relative, real, tree, folders)
    kind = "the directory" if real.is_dir() else "nothing at"
    reason = f"a symbolic link to {kind} {real} in the tree: not followed"
    return Unfollowed(path, relative, reason, refused=False)


def _within(path: Path, tree: Path) -> bool:
    """Whether `path` is `tree` or below it (both already resolved)."""
    return path == tree or tree in path.parents


def open_inside(file: LocalFile) -> BinaryIO:
    """The file to upload, opened; OSError if it is gone, no longer a regular file, or outside its tree.

    Checked on what was opened, not on the name: a link or directory swapped in after the listing
    cannot lead the upload out of the tree. O_NONBLOCK: a pipe swapped in does not hang the open.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(file.real, flags)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise OSError(errno.ELOOP, "became a symbolic link after it was listed", str(file.path)) from None
    source = os.fdopen(descriptor, "rb")
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "is no longer a regular file", str(file.path))
        opened = _opened_path(descriptor)
        if opened is not None and not _within(opened, file.tree):
            raise OSError(errno.EXDEV, f"leads to {opened}, outside {file.tree}", str(file.path))
    except BaseException:
        source.close()
        raise
    return source


def _opened_path(descriptor: int) -> Optional[Path]:
    """Where an open file lies, as the kernel sees it; None without /proc (then only O_NOFOLLOW guards)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{descriptor}"))
    except OSError:
        return None


def common_prefix(names: Sequence[str]) -> str:
    """The longest string all names start with: one listing covers them all."""
    return os.path.commonprefix(list(names)) if names else ""  # noqa: RUF071 (a string prefix is meant)


def local_path(name: str, workdir: Path) -> Path:
    """A directive's (or report's) local name: `~` expanded, relative to the job's directory."""
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else workdir / path

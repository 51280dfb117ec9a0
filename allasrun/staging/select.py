"""Which objects and files a directive names, and where each one lands (pure, but for globbing).

Object names come from the store and so from anyone who can write to the bucket: a name
that would land outside the destination (`..`, absolute) is refused here, before any byte
is written.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Optional

from allasrun.staging.plan import StageIn, is_pattern, pattern_start

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


def glob_regex(pattern: str) -> re.Pattern[str]:
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


def inside(directory: Path, relative: str) -> Optional[Path]:
    """`directory/relative`, or None if the name is empty, absolute or climbs out with `..`."""
    parts = PurePosixPath(relative).parts
    if not relative or relative.startswith("/") or any(part in ("..", ".") for part in parts):
        return None
    return directory.joinpath(*parts)


def dir_like(text: str, path: Path) -> bool:
    """Whether a destination means a directory: it says so (`/`, `.`) or is one already."""
    return text.endswith("/") or text in (".", "") or path.is_dir()


def local_files(path: Path, text: str) -> list[tuple[Path, str]]:
    """Files a stage-out source names, each with its path relative to the source's base."""
    if is_pattern(text):
        base = Path(str(path)[: pattern_start(str(path))]).parent if "/" in text else path.parent
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        return [(f, f.relative_to(base).as_posix()) for m in matches for f in walk(m)]
    if path.is_dir():
        return [(f, f.relative_to(path).as_posix()) for f in walk(path)]
    return [(path, "")] if path.is_file() else []


def walk(path: Path) -> list[Path]:
    """A file, or every regular file below a directory (symlinked directories not followed)."""
    if path.is_file():
        return [path]
    return sorted(
        Path(root) / name
        for root, _, names in os.walk(path)
        for name in names
        if (Path(root) / name).is_file()
    )


def common_prefix(names: Sequence[str]) -> str:
    """The longest string all names start with: one listing covers them all."""
    return os.path.commonprefix(list(names)) if names else ""  # noqa: RUF071 (a string prefix is meant)


def local_path(name: str, workdir: Path) -> Path:
    """A directive's (or report's) local name: `~` expanded, relative to the job's directory."""
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else workdir / path

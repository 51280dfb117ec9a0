"""Where allasrun keeps things: stored credentials, the token cache, per-run files.

Every location can be moved with an environment variable, so tests and sites with unusual
file systems (node-local scratch, no $HOME) need no code change.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from allasrun.atomicfile import private_dir
from allasrun.errors import LocalFileError, UnsafeFile
from allasrun.log import log


def config_dir(env: Mapping[str, str]) -> Path:
    """Long-lived, private: application credentials written by `allasrun login`."""
    if env.get("ALLASRUN_CONFIG_DIR"):
        return Path(env["ALLASRUN_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "allasrun"


def cache_dir(env: Mapping[str, str]) -> Path:
    """Tokens shared between runs of one user (on a shared home, between nodes too)."""
    if env.get("ALLASRUN_CACHE_DIR"):
        return Path(env["ALLASRUN_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "allasrun" / "tokens"


def shared_dir(env: Mapping[str, str]) -> Path:
    """Where the nodes of one multi-node step meet: under the home's cache, which every node sees."""
    if env.get("ALLASRUN_SHARED_DIR"):
        return Path(env["ALLASRUN_SHARED_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "allasrun" / "steps"


def runtime_dir(env: Mapping[str, str]) -> Path:
    """A private base for per-run files: $XDG_RUNTIME_DIR if it is really ours, else one under $TMPDIR.

    sbatch's default --export=ALL carries the login node's XDG_RUNTIME_DIR to compute nodes that
    have no such directory, and su or sudo can leave someone else's: such a one is passed over
    quietly (debug only), as it is on every job of those users. The $TMPDIR fallback must be ours:
    a name someone else took first in a shared /tmp is refused (UnsafeFile), never used.
    """
    if env.get("ALLASRUN_RUNTIME_DIR"):
        return _made(Path(env["ALLASRUN_RUNTIME_DIR"]))
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and _ours_alone(Path(xdg)):
        try:
            return private_dir(Path(xdg) / "allasrun")
        except OSError as error:
            log.debug("not using XDG_RUNTIME_DIR %s: %s", xdg, error.strerror or error)
    elif xdg:
        log.debug("not using XDG_RUNTIME_DIR %s: missing, or not a 0700 directory of ours", xdg)
    return _made(Path(env.get("TMPDIR") or tempfile.gettempdir()) / f"allasrun-{os.geteuid()}")


def _ours_alone(path: Path) -> bool:
    """A real directory (not a link), owned by us, that nobody else can enter: what logind makes."""
    try:
        found = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid() and not found.st_mode & 0o077


def _made(path: Path) -> Path:
    try:
        return private_dir(path)
    except OSError as error:
        raise LocalFileError.of(error, "make the run directory") from None


def user_rclone_config(env: Mapping[str, str]) -> Path:
    """The rclone.conf the user's own rclone reads: $RCLONE_CONFIG or rclone's default."""
    if env.get("RCLONE_CONFIG"):
        return Path(env["RCLONE_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rclone" / "rclone.conf"


def owned_private_dir(path: Path) -> Path:
    """Make `path` 0700, refusing a link or one someone else created (a shared /tmp invites that)."""
    return private_dir(path)


def check_private(path: Path) -> None:
    """Refuse a secret file that group or others can read, as allas-cli-utils does."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UnsafeFile(f"{path}: mode {mode:04o} lets others read a secret; run chmod 600 {path}")

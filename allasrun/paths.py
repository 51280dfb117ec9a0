"""Where allasrun keeps things: stored credentials, the token cache, per-run files.

Every location can be moved with an environment variable, so tests and sites with unusual
file systems (node-local scratch, no $HOME) need no code change.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from allasrun.atomicfile import private_dir
from allasrun.errors import UnsafeFile


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
    """A private base for per-run files: $XDG_RUNTIME_DIR if set, else one under $TMPDIR."""
    if env.get("ALLASRUN_RUNTIME_DIR"):
        base = Path(env["ALLASRUN_RUNTIME_DIR"])
    elif env.get("XDG_RUNTIME_DIR"):
        base = Path(env["XDG_RUNTIME_DIR"]) / "allasrun"
    else:
        base = Path(env.get("TMPDIR") or tempfile.gettempdir()) / f"allasrun-{os.getuid()}"
    return owned_private_dir(base)


def user_rclone_config(env: Mapping[str, str]) -> Path:
    """The rclone.conf the user's own rclone reads: $RCLONE_CONFIG or rclone's default."""
    if env.get("RCLONE_CONFIG"):
        return Path(env["RCLONE_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rclone" / "rclone.conf"


def owned_private_dir(path: Path) -> Path:
    """Make `path` 0700, refusing one someone else created (a shared /tmp invites that)."""
    private_dir(path)
    if path.stat().st_uid != os.getuid():
        raise UnsafeFile(f"{path}: owned by another user; refusing to keep tokens there")
    return path


def check_private(path: Path) -> None:
    """Refuse a secret file that group or others can read, as allas-cli-utils does."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UnsafeFile(f"{path}: mode {mode:04o} lets others read a secret; run chmod 600 {path}")

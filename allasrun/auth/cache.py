"""The per-user token cache that keeps a hundred starting tasks off Keystone.

A still-valid token from an earlier run (or another task) is reused; a lock around the
check-then-authenticate means the first task authenticates and the rest read its result.

An entry is named by a keyed hash (HMAC-SHA256, with a random key of this user's, 0600 beside
the entries) of everything the token depends on, the secret included: a wrong password or
another application credential secret finds no entry and goes to Keystone, which refuses it,
and an entry's name tells nobody who cannot read the key anything about the secret. The
`--storage-url` is part of the name too, so a token cached for one Swift URL never serves
another.

The cache only saves logins, so it never costs a run its token: a cache that cannot be made,
locked or written (quota, full disk, permission) is a warning, and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from allasrun.atomicfile import PRIVATE_FILE, locked, private_dir, write_atomic
from allasrun.auth.identity import Secret, Target
from allasrun.auth.token import Token
from allasrun.errors import AllasrunError
from allasrun.log import log

KEY_FILE = "key"
KEY_BYTES = 32


@dataclass(frozen=True)
class TokenCache:
    """One cache file for one (Keystone, user, project, Swift URL, secret) combination."""

    path: Path

    @classmethod
    def for_identity(cls, directory: Path, target: Target, secret: Secret) -> TokenCache:
        """The entry for this identity; OSError or UnsafeFile when the cache directory cannot be used."""
        key = _key(directory)
        who = secret.cache_owner(target)
        scope = f"{target.project_domain}/{target.project_name}"
        fields = (
            target.auth_url,
            who,
            scope,
            target.interface,
            target.region or "",
            target.storage_url or "",
        )
        material = "\0".join((*fields, *secret.hidden())).encode()
        digest = hmac.new(key, material, hashlib.sha256).hexdigest()[:40]
        return cls(directory / f"{digest}.json")

    def load(self) -> Optional[Token]:
        """The cached token, or None when there is none or the file is unreadable."""
        try:
            return Token.from_json(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return None

    def store(self, token: Token) -> None:
        """Replace the cached token (0600, atomically); on failure warn and go on without it."""
        try:
            write_atomic(self.path, token.to_json())
        except OSError as error:
            _warn("write", self.path, error)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialise authenticate-and-store across processes of this user, if the lock can be had."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(locked(self.path))
            except OSError as error:
                _warn("lock", self.path, error)
            yield


def open_cache(directory: Path, target: Target, secret: Secret) -> Optional[TokenCache]:
    """The cache entry for this identity, or None (and a warning) when the cache cannot be used."""
    try:
        return TokenCache.for_identity(directory, target, secret)
    except (OSError, AllasrunError) as error:
        _warn("use", directory, error)
        return None


def _key(directory: Path) -> bytes:
    """The user's HMAC key, made once; a race between two first runs keeps the first one's."""
    private_dir(directory)
    path = directory / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    fresh = directory / f".{KEY_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)  # left by a crashed run whose pid we now have
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(fresh, path)  # never replaces a key another run made meanwhile
    finally:
        os.unlink(fresh)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        found = os.fstat(fd)
        if found.st_uid != os.geteuid() or found.st_mode & 0o077:
            raise OSError(errno.EPERM, "not a 0600 file of ours", str(path))
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise OSError(errno.EINVAL, "damaged key (remove it to start the cache afresh)", str(path))
    return key


def _warn(doing: str, where: Path, error: Exception) -> None:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    where_text = getattr(error, "filename", None) or where
    log.warning(
        "cannot %s the token cache %s: %s; going on without it (the token is kept)", doing, where_text, reason
    )

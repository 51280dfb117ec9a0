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

The cache lives in the home, which every node of a cluster shares, and nodes' clocks differ.
An entry therefore names the host that wrote it and that host's clock offset from Keystone
when the token arrived: a run on the same host can judge the token by Keystone's clock at no
cost, one on another host has to ask Keystone (`TokenSource`). An entry of an older allasrun
(the bare token) counts as another host's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import socket
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
class Entry:
    """A cached token, who wrote it, and how far the writer's clock was off Keystone's."""

    token: Token
    host: Optional[str]  # None: an entry of an older allasrun, written on a host unknown
    clock_offset: Optional[float]  # the writer's clock minus Keystone's; None: not known

    @property
    def written_here(self) -> bool:
        """Whether this host wrote it: then the writer's clock is ours, and so is its offset."""
        return self.host == socket.gethostname()

    def to_json(self) -> str:
        """The entry's file content."""
        token = json.loads(self.token.to_json())
        return json.dumps(
            {"token": token, "host": self.host, "clock_offset": self.clock_offset}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> Entry:
        """Read an entry back, or a bare token as an older allasrun wrote it (host unknown).

        A ValueError or TypeError means a bad cache file.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or "token" not in data:
            return cls(Token.from_dict(data), None, None)
        host, offset = data["host"], data["clock_offset"]
        if not isinstance(host, (str, type(None))) or not isinstance(offset, (int, float, type(None))):
            raise TypeError("token cache entry has a bad host or clock offset")
        return cls(Token.from_dict(data["token"]), host, None if offset is None else float(offset))


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

    def load(self) -> Optional[Entry]:
        """The cached entry, or None when there is none or the file is unreadable."""
        try:
            return Entry.from_json(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return None

    def store(self, token: Token) -> None:
        """Replace the cached token (0600, atomically) as this host's, with the token's clock offset.

        On failure warn and go on without it.
        """
        entry = Entry(token, socket.gethostname(), token.clock_offset)
        try:
            write_atomic(self.path, entry.to_json())
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

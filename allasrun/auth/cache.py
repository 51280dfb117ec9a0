"""The per-user, per-project token cache that keeps a hundred starting tasks off Keystone.

A still-valid token from an earlier run (or another task) is reused; a lock around the
check-then-authenticate means the first task authenticates and the rest read its result.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from allasrun.atomicfile import locked, private_dir, write_atomic
from allasrun.auth.identity import Secret, Target
from allasrun.auth.token import Token


@dataclass(frozen=True)
class TokenCache:
    """One cache file for one (Keystone, user, project, secret) combination."""

    path: Path

    @classmethod
    def for_identity(cls, directory: Path, target: Target, secret: Secret) -> TokenCache:
        """Name the file by a hash of who the token is for, never by the secret itself."""
        who = secret.cache_owner(target)
        scope = f"{target.project_domain}/{target.project_name}"
        key = "|".join((target.auth_url, who, scope, target.interface, target.region or ""))
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return cls(directory / f"{digest}.json")

    def load(self) -> Optional[Token]:
        """The cached token, or None when there is none or the file is unreadable."""
        try:
            return Token.from_json(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return None

    def store(self, token: Token) -> None:
        """Replace the cached token (0600, atomically)."""
        private_dir(self.path.parent)
        write_atomic(self.path, token.to_json())

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialise authenticate-and-store across processes of this user."""
        private_dir(self.path.parent)
        with locked(self.path):
            yield

"""What the job's clients see: the files rclone and swift read, and the command's environment.

Every file is rewritten whole at each renewal (see atomicfile), so a client started at any
moment reads a token with time left on it. The environment is ours less every secret, plus
where those files are.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from allasrun import paths
from allasrun.atomicfile import locked, write_atomic
from allasrun.auth import SECRET_VARIABLES, AppCredential, Target, Token
from allasrun.errors import AllasrunError, LocalFileError, UnsafeFile
from allasrun.log import log

HEADER = "# Written by allasrun; rewritten at every token renewal. Edits here are lost.\n"


def rclone_section(
    remote: str,
    target: Target,
    token: Token,
    credential: Optional[AppCredential],
) -> str:
    """The `[remote]` section of rclone's swift backend.

    With an application credential the section holds only that: rclone authenticates at
    start and again on a 401, so one transfer can outlive any token. (rclone 1.60 never
    re-authenticates when `auth_token` is also set, as the long-copy test showed, so the
    token is not added.) Without one, the current token is pinned and rewritten at every
    renewal. A password is never written.
    """
    keys: dict[str, str] = {"type": "swift", "env_auth": "false"}
    if credential is not None:
        keys.update(
            auth=target.auth_url,
            auth_version="3",
            application_credential_id=credential.id,
            application_credential_secret=credential.secret,
            endpoint_type=target.interface,
        )
        if target.region:
            keys["region"] = target.region
    else:
        keys.update(auth_token=token.value, storage_url=token.storage_url)
    body = "".join(f"{key} = {value}\n" for key, value in keys.items())
    return f"[{remote}]\n{body}"


def read_env(path: Path) -> dict[str, str]:
    """The token and storage URL an `env_file` holds, read back without running a shell."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, equals, value = line.removeprefix("export ").partition("=")
        if equals and name in ("OS_AUTH_TOKEN", "OS_STORAGE_URL"):
            found[name] = shlex.split(value)[0]
    return found


def child_environment(
    env: Mapping[str, str],
    additions: Mapping[str, str],
    keep_password: bool = False,
) -> dict[str, str]:
    """The job command's environment: ours, less every secret, plus the keeper's variables."""
    removed = {name for name in SECRET_VARIABLES if not (keep_password and name == "OS_PASSWORD")}
    child = {name: value for name, value in env.items() if name not in removed}
    child.update(additions)
    return child


def env_file(token: Token) -> str:
    """Shell lines for `source`: what allas-conf exports, for swift and curl users."""
    lines = [
        HEADER,
        f"# token expires {token.expiry_text()}\n",
        f"export OS_AUTH_TOKEN={shlex.quote(token.value)}\n",
        f"export OS_STORAGE_URL={shlex.quote(token.storage_url)}\n",
    ]
    return "".join(lines)


def replace_section(text: str, name: str, section: str) -> str:
    """Put `section` in place of section `[name]` of an INI text, keeping every other byte.

    Comments and blank lines just before the next section header are left where they are,
    as they usually describe that next section. A missing section is appended.
    """
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _header(line) == name), None)
    if start is None:
        if not text:
            return section
        return text.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if _header(lines[i]) is not None), len(lines))
    keep_from = end
    while keep_from > start + 1 and _is_comment_or_blank(lines[keep_from - 1]):
        keep_from -= 1
    return "".join(lines[:start]) + section + "".join(lines[keep_from:])


def _header(line: str) -> Optional[str]:
    stripped = line.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        return stripped[1:-1].strip()
    return None


def _is_comment_or_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith(("#", ";"))


Lasting = Callable[[], tuple[Token, Optional[AppCredential]]]


@dataclass(frozen=True)
class ClientFiles:
    """Where the files of one run live, and how to write them all for a token.

    `lasting` gives what the user's own rclone.conf may hold (TokenSource.lasting): it outlives
    the run, so never a credential the run revokes when it ends.
    """

    directory: Path
    remote: str
    target: Target
    credential: Optional[AppCredential]
    user_config: Optional[Path] = None
    node: str = ""
    lasting: Optional[Lasting] = None

    @property
    def rclone_config(self) -> Path:
        """The job's own rclone.conf, holding only the allas remote."""
        return self.directory / "rclone.conf"

    @property
    def env_path(self) -> Path:
        """The file swift users `source` before a call."""
        return self.directory / "env"

    def write(self, token: Token) -> None:
        """Write every file for `token`; each is replaced atomically.

        The run's own files are what the command's clients read, so failing to write them is a
        LocalFileError: at start the run stops before the command does; at a renewal the
        TokenSource warns and keeps the new token for staging, and clients keep the previous
        token until it expires. A run directory removed meanwhile (logind clears /run/user/UID
        at logout, a tmp cleaner) is made again first. The user's rclone.conf is best effort.
        """
        try:
            self._write_own(token)
        except OSError as error:
            raise LocalFileError.of(error, "write the command's client files") from None
        if self.user_config is not None:
            self._update_user_config(self.user_config, token)

    def environment(self, token: Token) -> Mapping[str, str]:
        """What the command's environment gains: where the files are, and the first token."""
        rclone_config = self.rclone_config
        if self.user_config is not None and refusal(self.user_config) is None:
            rclone_config = self.user_config
        return {
            "RCLONE_CONFIG": str(rclone_config),
            "ALLASRUN_ENV_FILE": str(self.env_path),
            "ALLASRUN_DIR": str(self.directory),
            "ALLASRUN_NODE": self.node,  # a nested allasrun reuses these files only on this node
            "OS_AUTH_TOKEN": token.value,
            "OS_STORAGE_URL": token.storage_url,
        }

    def _write_own(self, token: Token) -> None:
        if not self.directory.is_dir():
            log.warning("the run directory %s was removed; making it again", self.directory)
            paths.owned_private_dir(self.directory)
        section = rclone_section(self.remote, self.target, token, self.credential)
        write_atomic(self.rclone_config, HEADER + section)
        write_atomic(self.env_path, env_file(token))

    def _update_user_config(self, path: Path, token: Token) -> None:
        """Keep [remote] current in the user's own file; any failure is a warning."""
        try:
            lasting, credential = self.lasting() if self.lasting else (token, self.credential)
            update_section(path, self.remote, rclone_section(self.remote, self.target, lasting, credential))
        except OSError as error:
            log.warning("not updating [%s]: %s", self.remote, LocalFileError.of(error, "write"))
        except AllasrunError as error:
            log.warning("not updating [%s] in %s: %s", self.remote, path, error)


def refusal(path: Path) -> Optional[str]:
    """Why a user's rclone.conf must not be rewritten by allasrun, if it must not.

    A symlink (dotfiles kept elsewhere) would be replaced by a plain file, and an encrypted
    configuration by a plaintext one holding every other remote's secrets.
    """
    if path.is_symlink():
        return "it is a symbolic link, which allasrun would replace with a plain file"
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None  # missing (it will be made) or unreadable (the write will say why)
    if b"RCLONE_ENCRYPT_V0:" in head:
        return "it is encrypted (RCLONE_ENCRYPT_V0), and allasrun writes only plain text"
    return None


def update_section(path: Path, name: str, section: str) -> None:
    """Rewrite one section of a user's own rclone.conf under a lock, the rest untouched.

    Two jobs of one user renew at their own times; the lock makes each read-modify-write
    see the other's result instead of losing it. A file `refusal` names is left as it is
    (UnsafeFile).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with locked(path):
        reason = refusal(path)
        if reason is not None:
            raise UnsafeFile(f"{path}: {reason}")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        write_atomic(path, replace_section(text, name, section))

"""What the job's clients see: the files rclone, swift and bash read, and the command's environment.

Every file is rewritten whole at each renewal (see atomicfile), so a client started at any
moment reads a token with time left on it. With the run's token service (tokenservice.py) the
clients are pointed at it instead of Keystone: they re-authenticate there on their own, for as
long as the run lives. The environment is ours less every secret, plus where those files are.
A run with S3 keys also gives the command's S3 clients (rclone, aws, boto3, s3cmd, s5cmd) those
keys and the endpoint, so none of them needs the user's own files.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from allasrun import paths
from allasrun.atomicfile import locked, write_atomic
from allasrun.auth import SECRET_VARIABLES, AppCredential, S3Keys, Target, Token
from allasrun.errors import AllasrunError, BadS3Keys, LocalFileError, UnsafeFile
from allasrun.job.tokenservice import Access
from allasrun.log import log

HEADER = "# Written by allasrun; rewritten at every token renewal. Edits here are lost.\n"
# Not secret, but it sends swift to Keystone with a credential the command no longer has.
DROPPED = (*SECRET_VARIABLES, "OS_AUTH_TYPE")
S3_REMOTE = "s3allas"  # as CSC's allas-conf --mode S3 names it
# With the run's S3 keys: a profile or session token would steer the AWS clients to other keys,
# and rclone 1.60's s3 backend will not start at all while AWS_CA_BUNDLE is set, whatever the
# endpoint's scheme ("LoadCustomCABundleError ... unsupported transport"); the bundle moves into
# the aws and s3cmd configuration files instead.
S3_DROPPED = ("AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN")


def rclone_section(
    remote: str,
    target: Target,
    token: Token,
    credential: Optional[AppCredential],
    service: Optional[Access] = None,
) -> str:
    """The `[remote]` section of rclone's swift backend.

    With the run's token service, its v1 auth and nothing else: rclone authenticates there at
    start and again on a 401, so one transfer can outlive any token, and Keystone sees none of
    it. Without one (it could not start, or the file outlives the run), an application
    credential: rclone logs in to Keystone by itself. (rclone 1.60 never re-authenticates when
    `auth_token` is also set, as the long-copy test showed, so the token is not added.) Without
    either, the current token is pinned and rewritten at every renewal. A password is never
    written.
    """
    keys: dict[str, str] = {"type": "swift", "env_auth": "false"}
    if service is not None:
        keys.update(auth=service.url, auth_version="1", user=service.user, key=service.key)
    elif credential is not None:
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
    return ini_section(remote, keys)


def ini_section(name: str, options: Mapping[str, str]) -> str:
    """`[name]` and its `option = value` lines, as rclone, s3cmd and botocore read them."""
    return f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items())


def s3_remote(keys: S3Keys) -> dict[str, str]:
    """The options of rclone's `[s3allas]` (or `[lumi-o]`) remote: the run's keys, path style, no environment.

    Provider Ceph is what Allas and LUMI-O run; it works with Swift's s3api too (tested on both).
    """
    return {
        "type": "s3",
        "provider": "Ceph",
        "env_auth": "false",
        "endpoint": _endpoint(keys),
        "force_path_style": "true",
        "access_key_id": keys.access,
        "secret_access_key": keys.secret,
    }


def s3_variables(directory: Path, keys: Optional[S3Keys]) -> dict[str, str]:
    """What boto3, the aws CLI, s5cmd and s3cmd read: the keys, the endpoint, their config files."""
    if keys is None:
        return {}
    return {
        "AWS_ACCESS_KEY_ID": keys.access,
        "AWS_SECRET_ACCESS_KEY": keys.secret,
        "AWS_ENDPOINT_URL": _endpoint(keys),
        "S3_ENDPOINT_URL": _endpoint(keys),  # s5cmd's name for it
        "AWS_CONFIG_FILE": str(directory / "aws-config"),
        "S3CMD_CONFIG": str(directory / "s3cfg"),
    }


def aws_config(ca_bundle: Optional[str]) -> str:
    """The aws CLI's and boto3's config: path style, a region to sign for, the CA bundle.

    No keys: the variables carry them. The region is one every radosgw and s3api accepts;
    an AWS_DEFAULT_REGION the job has still wins. No endpoint either: AWS_ENDPOINT_URL is read
    by botocore >= 1.31 (aws CLI v1 >= 1.29, v2 >= 2.13); older CLIs, Debian 12's 2.9 among
    them, need `--endpoint-url "$AWS_ENDPOINT_URL"`. A `[plugins]` section could teach them,
    but aws CLI v1 imports every name in it, `cli_legacy_plugin_path` too, and would not start.
    """
    default = {"region": "us-east-1", "s3": "\n  addressing_style = path"}
    if ca_bundle:
        default["ca_bundle"] = ca_bundle
    return HEADER + ini_section("default", default)


def s3cmd_config(keys: S3Keys, ca_bundle: Optional[str]) -> str:
    """The s3cmd config: bucket in the path (host_bucket without `%(bucket)s`), https as the endpoint says."""
    url = urlsplit(_endpoint(keys))
    options = {
        "access_key": keys.access,
        "secret_key": keys.secret,
        "host_base": url.netloc,
        "host_bucket": url.netloc,
        "use_https": str(url.scheme == "https"),
    }
    if ca_bundle:
        options["ca_certs_file"] = ca_bundle
    return HEADER + ini_section("default", options)


def _endpoint(keys: S3Keys) -> str:
    if not keys.endpoint:
        raise ValueError("the run's S3 keys need their endpoint resolved")  # the caller's duty
    return keys.endpoint.rstrip("/")


def _check_lines(keys: S3Keys) -> None:
    """A line break in a key would add lines of its own to every file the keys go into."""
    for what, value in (
        ("access key", keys.access),
        ("secret key", keys.secret),
        ("endpoint", keys.endpoint),
    ):
        if value and any(char in value for char in "\r\n"):
            raise BadS3Keys(f"the S3 {what} from {keys.origin} contains a line break")


def service_variables(service: Optional[Access]) -> dict[str, str]:
    """What swift and swiftclient read to re-authenticate at the token service on a 401.

    ST_AUTH_VERSION comes first in swift's search for the auth version, so an OS_AUTH_VERSION=3
    left by allas-conf does not send swift to Keystone instead.
    """
    if service is None:
        return {}
    return {"ST_AUTH": service.url, "ST_USER": service.user, "ST_KEY": service.key, "ST_AUTH_VERSION": "1.0"}


def rclone_variables(remote: str, options: Mapping[str, str]) -> dict[str, str]:
    """The per-remote variables of rclone for `options` of `remote`; they win over any rclone.conf."""
    prefix = "RCLONE_CONFIG_" + remote.upper().replace("-", "_") + "_"
    return {prefix + name.upper(): value for name, value in options.items()}


def rclone_overrides(remote: str, service: Optional[Access]) -> dict[str, str]:
    """The per-remote variables of rclone that point `remote` of any rclone.conf at the service.

    For a run that keeps the user's own rclone.conf as RCLONE_CONFIG (--update-user-config):
    that file holds what outlives the run, and the variables win over it while the run lasts.
    The keys a pinned or credential section has are emptied, or rclone would use them.
    """
    if service is None:
        return {}
    values = {
        "TYPE": "swift",
        "ENV_AUTH": "false",
        "AUTH": service.url,
        "AUTH_VERSION": "1",
        "USER": service.user,
        "KEY": service.key,
        "AUTH_TOKEN": "",
        "STORAGE_URL": "",
        "APPLICATION_CREDENTIAL_ID": "",
        "APPLICATION_CREDENTIAL_NAME": "",
        "APPLICATION_CREDENTIAL_SECRET": "",
    }
    return rclone_variables(remote, values)


def read_env(path: Path) -> dict[str, str]:
    """The variables an `env_file` exports, read back without running a shell."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("export "):
            name, equals, value = line.removeprefix("export ").partition("=")
            if equals:
                found[name] = shlex.split(value)[0]
    return found


def child_environment(
    env: Mapping[str, str],
    additions: Mapping[str, str],
    keep_password: bool = False,
) -> dict[str, str]:
    """The job command's environment: ours, less every secret, plus the keeper's variables.

    With the run's S3 keys (leader or follower alike: they come from the files), less what
    would steer the S3 clients away from them too.
    """
    removed = {name for name in DROPPED if not (keep_password and name == "OS_PASSWORD")}
    if "AWS_ACCESS_KEY_ID" in additions:
        removed.update(S3_DROPPED)
    child = {name: value for name, value in env.items() if name not in removed}
    child.update(additions)
    return child


def env_file(
    token: Optional[Token], service: Optional[Access] = None, s3: Optional[Mapping[str, str]] = None
) -> str:
    """Shell lines for `source`: what allas-conf exports, for swift and curl users, and the service.

    With S3 variables, also those, and then without what S3_DROPPED names, as the command has it.
    Without a token (a run on S3 keys alone), only those.
    """
    exported = {"OS_AUTH_TOKEN": token.value, "OS_STORAGE_URL": token.storage_url} if token else {}
    exported.update(service_variables(service))
    exported.update(s3 or {})
    lines = [HEADER] + ([f"# token expires {token.expiry_text()}\n"] if token else [])
    lines += [f"export {name}={shlex.quote(value)}\n" for name, value in exported.items()]
    if s3:
        lines.append(f"unset {' '.join(S3_DROPPED)}\n")
    return "".join(lines)


def bash_env(env_path: Path, original: Optional[str]) -> str:
    """The file bash reads (BASH_ENV) when it starts a script: the user's own first, then ours.

    CSC's a-commands are bash scripts that hand swift the OS_AUTH_TOKEN they inherit; through
    this file each one started at hour 60 inherits the current token, not the job's first.
    Lmod sets BASH_ENV for modules in scripts, so a BASH_ENV the job had is read first.
    Missing files are passed over quietly: a process that outlives the run must still start.
    """
    lines = ["# Written by allasrun: bash reads this file when it starts a script (BASH_ENV).\n"]
    for path in (original, str(env_path)):
        if path:
            quoted = shlex.quote(path)
            lines.append(f"if [ -r {quoted} ]; then . {quoted}; fi\n")
    return "".join(lines)


def files_environment(directory: Path, rclone_config: str, node: str) -> dict[str, str]:
    """What a command run on the files in `directory` gets: where they are, and the current token.

    The leader's command and its srun followers and nested allasruns alike, so they see one
    thing: followers read it back from the files the leader wrote.
    """
    found = {
        "RCLONE_CONFIG": rclone_config,
        "ALLASRUN_ENV_FILE": str(directory / "env"),
        "ALLASRUN_DIR": str(directory),
        "ALLASRUN_NODE": node,  # a nested allasrun reuses these files only on this node
        "BASH_ENV": str(directory / "bash_env"),
    }
    found.update(read_env(directory / "env"))
    return found


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
    target: Optional[Target]  # None: a run on S3 keys alone, with no Keystone identity
    credential: Optional[AppCredential]
    user_config: Optional[Path] = None
    node: str = ""
    lasting: Optional[Lasting] = None
    service: Optional[Access] = None
    bash_env_before: Optional[str] = None  # the BASH_ENV the job had, read before ours
    s3: Optional[S3Keys] = None  # the S3 keys the command's clients get, endpoint resolved
    s3_remote: str = S3_REMOTE  # the rclone remote they are under: `s3allas`, or `lumi-o` as CSC names it
    aws_ca_bundle: Optional[str] = None  # the AWS_CA_BUNDLE the job had, kept in the config files

    def __post_init__(self) -> None:
        if self.s3 is not None:
            _check_lines(self.s3)
            _endpoint(self.s3)

    @property
    def rclone_config(self) -> Path:
        """The job's own rclone.conf: the allas remote, and `[s3allas]` (or `[lumi-o]`) with S3 keys."""
        return self.directory / "rclone.conf"

    @property
    def env_path(self) -> Path:
        """The file swift users `source` before a call."""
        return self.directory / "env"

    def write(self, token: Optional[Token]) -> None:
        """Write every file for `token` (None: a run on S3 keys alone); each is replaced atomically.

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
        if self.user_config is not None and token is not None and self.target is not None:
            self._update_user_config(self.user_config, self.target, token)

    def environment(self) -> Mapping[str, str]:
        """What the command's environment gains: where the files are, and what they hold now.

        Keeping the user's rclone.conf as RCLONE_CONFIG keeps their other remotes at hand; the
        run's remote is then pointed at the token service by rclone's variables.
        """
        if self.user_config is not None and refusal(self.user_config) is None:
            found = files_environment(self.directory, str(self.user_config), self.node)
            s3 = rclone_variables(self.s3_remote, s3_remote(self.s3)) if self.s3 else {}
            return {**found, **rclone_overrides(self.remote, self.service), **s3}
        return files_environment(self.directory, str(self.rclone_config), self.node)

    def _write_own(self, token: Optional[Token]) -> None:
        if not self.directory.is_dir():
            log.warning("the run directory %s was removed; making it again", self.directory)
            paths.owned_private_dir(self.directory)
        sections = []
        if token is not None and self.target is not None:
            sections.append(rclone_section(self.remote, self.target, token, self.credential, self.service))
        if self.s3 is not None:
            sections.append(ini_section(self.s3_remote, s3_remote(self.s3)))
            self._write_s3(self.s3)
        write_atomic(self.rclone_config, HEADER + "\n".join(sections))
        write_atomic(self.env_path, env_file(token, self.service, s3_variables(self.directory, self.s3)))
        write_atomic(self.directory / "bash_env", bash_env(self.env_path, self.bash_env_before))

    def _write_s3(self, keys: S3Keys) -> None:
        """The files s3cmd and the aws CLI read; written before the env file that names them."""
        write_atomic(self.directory / "s3cfg", s3cmd_config(keys, self.aws_ca_bundle))
        write_atomic(self.directory / "aws-config", aws_config(self.aws_ca_bundle))

    def _update_user_config(self, path: Path, target: Target, token: Token) -> None:
        """Keep [remote] current in the user's own file; any failure is a warning."""
        try:
            lasting, credential = self.lasting() if self.lasting else (token, self.credential)
            update_section(path, self.remote, rclone_section(self.remote, target, lasting, credential))
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

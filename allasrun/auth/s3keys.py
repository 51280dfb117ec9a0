"""S3 keys a user already has: the AWS variables, the AWS shared files, or s3cmd's file.

CSC's `allas-conf --mode S3` leaves the same Keystone EC2 key pair in `~/.s3cfg` (s3cmd) and
`~/.aws/credentials` (boto3, the aws CLI), and `allas-conf --lumi` overwrites both with LUMI-O
keys; the endpoint in the file is what tells the two apart. The order is the one boto3 uses
(variables, then the shared credentials file), with s3cmd's file last, as the file a Roihu user
is most likely to have. A half-given pair or a file that cannot be read as such is an error,
not a reason to fall through to other keys: silently using someone else's keys is worse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from allasrun.errors import BadS3Keys, LocalFileError

ACCESS_VARIABLE = "AWS_ACCESS_KEY_ID"
SECRET_VARIABLE = "AWS_SECRET_ACCESS_KEY"
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"

_SECTION = re.compile(r"\[([^\]]+)\]\s*$")
_OPTION = re.compile(r"([^=:\s][^=:]*?)\s*[=:]\s*(.*)$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class S3Keys:
    """An S3 access/secret pair, where it came from (for messages), and the endpoint it names."""

    access: str
    secret: str = field(repr=False)
    origin: str
    endpoint: Optional[str]


@dataclass(frozen=True)
class _Option:
    value: str
    line: int


@dataclass
class _Section:
    line: int
    options: dict[str, _Option] = field(default_factory=dict)


@dataclass(frozen=True)
class _IniFile:
    """A parsed INI file: sections by name, option names lower-cased as configparser does."""

    path: Path
    sections: dict[str, _Section]
    s3cmd: bool

    def where(self, line: int) -> str:
        """`file:line` for messages; the file alone for what is missing from the whole file."""
        return f"{self.path}:{line}" if line else str(self.path)


def find_keys(env: Mapping[str, str], home: Path) -> Optional[S3Keys]:
    """The user's S3 keys, from the first source that has any; None if none has.

    `home` is the user's home directory (the caller's HOME), so tests and other users'
    runs never read the running process's own files.
    """
    endpoint = env.get(ENDPOINT_VARIABLE) or None
    for source in (_from_variables, _from_shared_files, _from_s3cmd):
        keys = source(env, home)
        if keys is not None:
            return keys if endpoint is None else replace(keys, endpoint=endpoint)
    return None


def _from_variables(env: Mapping[str, str], home: Path) -> Optional[S3Keys]:
    access, secret = env.get(ACCESS_VARIABLE), env.get(SECRET_VARIABLE)
    if not access and not secret:
        return None
    if not access or not secret:
        given, missing = (ACCESS_VARIABLE, SECRET_VARIABLE) if access else (SECRET_VARIABLE, ACCESS_VARIABLE)
        raise BadS3Keys(
            f"{given} is set but {missing} is not: S3 needs both {ACCESS_VARIABLE} and "
            f"{SECRET_VARIABLE} (or unset both to use ~/.aws/credentials or ~/.s3cfg)"
        )
    return S3Keys(access, secret, ACCESS_VARIABLE, None)


def _from_shared_files(env: Mapping[str, str], home: Path) -> Optional[S3Keys]:
    """The profile's pair in the AWS credentials file, and its `endpoint_url` in the config file.

    A named profile (AWS_PROFILE) that the file lacks is an error, as it is for the aws CLI;
    a file without `[default]` only means there are no keys here.
    """
    path = _path(env, "AWS_SHARED_CREDENTIALS_FILE", home, ".aws/credentials")
    parsed = _read_ini(path, s3cmd=False)
    if parsed is None:
        return None
    profile = env.get("AWS_PROFILE") or "default"
    section = parsed.sections.get(profile)
    if section is None:
        if env.get("AWS_PROFILE"):
            raise BadS3Keys(f"{path}: has no [{profile}] section (AWS_PROFILE={profile})")
        return None
    access, secret = _pair(parsed, section, f"[{profile}]", "aws_access_key_id", "aws_secret_access_key")
    endpoint = _config_endpoint(env, home, profile)
    return S3Keys(access, secret, f"{_shown(path, home)} [{profile}]", endpoint)


def _config_endpoint(env: Mapping[str, str], home: Path, profile: str) -> Optional[str]:
    """`endpoint_url` of the profile in the AWS config file, where allas-conf writes it."""
    parsed = _read_ini(_path(env, "AWS_CONFIG_FILE", home, ".aws/config"), s3cmd=False)
    if parsed is None:
        return None
    names = ("default", "profile default") if profile == "default" else (f"profile {profile}",)
    for name in names:
        section = parsed.sections.get(name)
        if section is not None and "endpoint_url" in section.options:
            return section.options["endpoint_url"].value or None
    return None


def _from_s3cmd(env: Mapping[str, str], home: Path) -> Optional[S3Keys]:
    """s3cmd's pair and host. s3cmd reads every section and lets a later value win.

    allas-conf names the section `[allas-PROJECT]` (LUMI-O: `[lumi-PROJECT]`), not `[default]`,
    so the section name cannot be relied on.
    """
    path = _path(env, "S3CMD_CONFIG", home, ".s3cfg")
    parsed = _read_ini(path, s3cmd=True)
    if parsed is None:
        return None
    merged = _Section(line=0)
    for section in parsed.sections.values():
        merged.options.update(section.options)
    access, secret = _pair(parsed, merged, "the file", "access_key", "secret_key")
    return S3Keys(access, secret, _shown(path, home), _s3cmd_endpoint(parsed, merged))


def _s3cmd_endpoint(parsed: _IniFile, options: _Section) -> Optional[str]:
    """`host_base` as a URL: allas-conf writes `a3s.fi` for Allas and `https://lumidata.eu` for LUMI-O."""
    host = options.options.get("host_base")
    if host is None or not host.value:
        return None
    if "://" in host.value:
        return host.value.rstrip("/")
    scheme = "https" if _flag(parsed, options.options.get("use_https"), default=True) else "http"
    return f"{scheme}://{host.value.rstrip('/')}"


def _flag(parsed: _IniFile, option: Optional[_Option], default: bool) -> bool:
    if option is None or not option.value:
        return default
    word = option.value.lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise BadS3Keys(f"{parsed.where(option.line)}: use_https is neither True nor False")


def _pair(
    parsed: _IniFile, section: _Section, label: str, access_name: str, secret_name: str
) -> tuple[str, str]:
    """Both halves of the pair, or an error naming the file, the line and the missing key."""
    access, secret = section.options.get(access_name), section.options.get(secret_name)
    if access is not None and access.value and secret is not None and secret.value:
        return access.value, secret.value
    halves = ((access_name, access), (secret_name, secret))
    missing = [name for name, option in halves if option is None or not option.value]
    given = [option.line for _, option in halves if option is not None and option.value]
    line = given[0] if given else section.line
    raise BadS3Keys(f"{parsed.where(line)}: {label} has no {' and no '.join(missing)}")


def _path(env: Mapping[str, str], variable: str, home: Path, default: str) -> Path:
    value = env.get(variable)
    if not value:
        return home / default
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    return Path(value)


def _shown(path: Path, home: Path) -> str:
    """The path as the user would write it (`~/.s3cfg`), for the origin in messages."""
    try:
        return f"~/{path.relative_to(home)}"
    except ValueError:
        return str(path)


def _read_ini(path: Path, s3cmd: bool) -> Optional[_IniFile]:
    """Parse an INI file line by line, so every error can name its line; None if it does not exist.

    `s3cmd`: its dialect, in which options may come before any section and one pair of
    matching quotes around a value is dropped (botocore keeps them).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LocalFileError.of(error, "read S3 keys from") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadS3Keys(f"{path}: is not UTF-8 text") from None
    parsed = _IniFile(path, {}, s3cmd)
    current: Optional[_Section] = _Section(line=0) if s3cmd else None
    if current is not None:
        parsed.sections[""] = current
    continues = False
    for number, line in enumerate(text.splitlines(), start=1):
        current, continues = _parse_line(parsed, current, continues, number, line)
    return parsed


def _parse_line(
    parsed: _IniFile, current: Optional[_Section], continues: bool, number: int, line: str
) -> tuple[Optional[_Section], bool]:
    """One line: a section header, an option, a continuation of the option above, or an error.

    The error never quotes the line: a mistyped line may well be a secret.
    """
    stripped = line.strip()
    if not stripped or stripped[0] in "#;":
        return current, continues
    if line[0].isspace() and continues:
        return current, True  # a nested value (`s3 =` then indented lines), which no key here uses
    header = _SECTION.match(stripped)
    if header is not None:
        section = _Section(line=number)
        parsed.sections[header.group(1).strip()] = section
        return section, False
    option = _OPTION.match(stripped)
    if option is None:
        raise BadS3Keys(f"{parsed.where(number)}: is neither a [section] nor a 'name = value' line")
    if current is None:
        raise BadS3Keys(f"{parsed.where(number)}: an option before any [section]")
    value = option.group(2).strip()
    current.options[option.group(1).lower()] = _Option(_unquoted(value) if parsed.s3cmd else value, number)
    return current, True


def _unquoted(value: str) -> str:
    """s3cmd drops one pair of matching quotes around a value; so do we."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value

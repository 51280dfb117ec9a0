"""Who to authenticate as, where, and with which secret: read from the environment.

The precedence rules (`choose_secret`) are pure functions of what was found; `gather` does
the I/O around them (the stored credential, the terminal), so every rule is testable
without a server or a person at the keyboard.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Union
from urllib.parse import urlsplit

from allasrun.auth import credstore
from allasrun.errors import NoCredentials, UsageError
from allasrun.paths import config_dir

# CSC's defaults, as allas-conf uses them, so a user with only OS_PROJECT_NAME set is served.
DEFAULT_AUTH_URL = "https://pouta.csc.fi:5001/v3"
DEFAULT_DOMAIN = "Default"
DEFAULT_INTERFACE = "public"

# Variables that carry a secret: none of them is passed on to the job's command.
SECRET_VARIABLES = (
    "OS_PASSWORD",
    "OS_APPLICATION_CREDENTIAL_SECRET",
    "OS_APPLICATION_CREDENTIAL_ID",
    "OS_APPLICATION_CREDENTIAL_NAME",
)


@dataclass(frozen=True)
class AppCredential:
    """A Keystone application credential: renewable without the user's password."""

    id: str
    secret: str = ""
    origin: str = "environment"
    renewable = True

    def describe(self) -> str:
        """Which credential and where it came from, for logs (never the secret)."""
        return f"application credential {self.id} ({self.origin})"

    def cache_owner(self, target: Target) -> str:
        """Whose tokens these are, for the token cache's file name."""
        return f"appcred:{self.id}"

    def hidden(self) -> tuple[str, ...]:
        """The strings the log must never show."""
        return (self.secret,)


@dataclass(frozen=True)
class Password:
    """The user's password; renewable, but never written anywhere and never passed on."""

    value: str
    origin: str = "OS_PASSWORD"
    renewable = True

    def describe(self) -> str:
        """Where the password came from, for logs."""
        return f"password from {self.origin}"

    def cache_owner(self, target: Target) -> str:
        """A password's tokens are the user's, shared by every run with that password."""
        return f"user:{target.user_domain}/{target.username}"

    def hidden(self) -> tuple[str, ...]:
        """The strings the log must never show."""
        return (self.value,)


@dataclass(frozen=True)
class ExistingToken:
    """A token someone else obtained (OS_AUTH_TOKEN): usable until it expires, never renewable."""

    value: str
    storage_url: Optional[str] = None
    renewable = False

    def describe(self) -> str:
        """What the run holds: a token that ends when it ends."""
        return "existing token from OS_AUTH_TOKEN (cannot be renewed)"

    def cache_owner(self, target: Target) -> str:
        """Never cached (there is nothing to renew), but named for completeness of the protocol."""
        return "token"

    def hidden(self) -> tuple[str, ...]:
        """The strings the log must never show."""
        return (self.value,)


@dataclass(frozen=True)
class AskPassword:
    """No secret was found but a terminal is attached: the CLI asks for the password."""


Secret = Union[AppCredential, Password, ExistingToken]


@dataclass(frozen=True)
class Target:
    """Where and as whom to authenticate: everything but the secret."""

    auth_url: str
    project_name: Optional[str]
    username: str
    user_domain: str = DEFAULT_DOMAIN
    project_domain: str = DEFAULT_DOMAIN
    region: Optional[str] = None
    interface: str = DEFAULT_INTERFACE
    storage_url: Optional[str] = None

    def describe(self) -> str:
        """A human name for error messages: user, project and Keystone, never a secret."""
        project = self.project_name or "the application credential's project"
        return f"user {self.username!r}, project {project!r} at {self.auth_url}"


def target_from_env(
    env: Mapping[str, str],
    login_name: str,
    storage_url: Optional[str] = None,
) -> Target:
    """Read the OpenStack variables exactly as allas-conf and the OpenStack clients name them."""
    return Target(
        auth_url=_url(env, "OS_AUTH_URL") or DEFAULT_AUTH_URL,
        project_name=_text(env, "OS_PROJECT_NAME"),
        username=_text(env, "OS_USERNAME") or login_name,
        user_domain=_text(env, "OS_USER_DOMAIN_NAME") or DEFAULT_DOMAIN,
        project_domain=_text(env, "OS_PROJECT_DOMAIN_NAME") or DEFAULT_DOMAIN,
        region=_text(env, "OS_REGION_NAME"),
        interface=_text(env, "OS_INTERFACE") or DEFAULT_INTERFACE,
        storage_url=storage_url,
    )


def _text(env: Mapping[str, str], name: str) -> Optional[str]:
    """A variable's value (None if unset or empty); one that is not UTF-8 is an error naming it.

    Bytes that are not UTF-8 reach Python as lone surrogates, which Keystone's JSON and
    headers cannot carry: left alone, they failed deep in the request as a defect (exit 70).
    The message never quotes the value, which may be a secret.
    """
    value = env.get(name) or None
    if value is not None:
        try:
            value.encode()
        except UnicodeEncodeError as error:
            raise UsageError(
                f"{name} is not UTF-8 (an undecodable byte at character {error.start + 1})"
            ) from None
    return value


def _url(env: Mapping[str, str], name: str) -> Optional[str]:
    """An http(s) URL from a variable, or a usage error naming it: never a request to a non-URL."""
    value = _text(env, name)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad IPv6 address or port
        usable = False
    if not usable or not value.isprintable() or any(c.isspace() for c in value):
        raise UsageError(f"{name} is not an http(s) URL: {value[:200]!r}")
    return value


def choose_secret(
    env: Mapping[str, str],
    stored: Optional[AppCredential],
    can_prompt: bool,
) -> Union[Secret, AskPassword]:
    """Pick the most durable secret available.

    Order: an application credential from the environment, then one stored by
    `allasrun login`, then OS_PASSWORD (as `allas-conf -k` leaves it), then a password typed
    at the terminal, and last OS_AUTH_TOKEN, which cannot be renewed and so comes last.
    """
    cred_id = _text(env, "OS_APPLICATION_CREDENTIAL_ID")
    cred_secret = _text(env, "OS_APPLICATION_CREDENTIAL_SECRET")
    if cred_id and cred_secret:
        return AppCredential(cred_id, cred_secret, "OS_APPLICATION_CREDENTIAL_ID/_SECRET")
    if stored is not None:
        return stored
    password = _text(env, "OS_PASSWORD")
    if password:
        return Password(password)
    if can_prompt:
        return AskPassword()
    token = _text(env, "OS_AUTH_TOKEN")
    if token:
        if not token.isprintable() or any(c.isspace() for c in token):
            raise UsageError(
                "OS_AUTH_TOKEN holds a blank or control character: it cannot be sent as a header"
            )
        return ExistingToken(token, _url(env, "OS_STORAGE_URL"))
    raise NoCredentials(
        "no credentials: set OS_PASSWORD (allas-conf -k), run 'allasrun login', "
        "export OS_APPLICATION_CREDENTIAL_ID and _SECRET, or run from a terminal"
    )


def keystone_at_hand(env: Mapping[str, str]) -> bool:
    """Whether a Keystone secret is here without asking: a variable, a handed or stored credential.

    What decides that a job with only S3 keys stages over S3: a terminal's password prompt
    does not count, since a batch job has no terminal.
    """
    names = ("OS_PASSWORD", "OS_APPLICATION_CREDENTIAL_SECRET", "OS_AUTH_TOKEN", "ALLASRUN_CREDENTIALS")
    if any(_text(env, name) for name in names):
        return True
    try:
        return any((config_dir(env) / "credentials").glob("*.json"))
    except OSError:
        return False


@dataclass(frozen=True)
class Identity:
    """Where to authenticate, as whom, and with what."""

    target: Target
    secret: Secret

    @property
    def origin(self) -> str:
        """Where the secret came from, for logs and `allasrun status` (never the secret)."""
        return self.secret.describe()


def gather(
    env: Mapping[str, str],
    storage_url: Optional[str] = None,
    ask: Callable[[str], str] = getpass.getpass,
    use_stored: bool = True,
) -> Identity:
    """Build the identity for this run, prompting only when stdin is a terminal."""
    target = target_from_env(env, getpass.getuser(), storage_url)
    stored = None
    if env.get("ALLASRUN_CREDENTIALS"):  # handed to this job by `allasrun sbatch`
        path = Path(env["ALLASRUN_CREDENTIALS"])
        stored = _stored(path, credstore.read(path))
    elif use_stored:
        found = credstore.load(config_dir(env), target.project_name, target.auth_url)
        if found is not None:
            path, record = found
            stored = _stored(path, record)
            if target.project_name is None:
                target = replace(target, project_name=record.project_name)
    choice = choose_secret(env, stored, can_prompt=os.isatty(0))
    if isinstance(choice, AskPassword):
        choice = ask_password(target, ask)
    return Identity(target, choice)


def ask_password(target: Target, ask: Callable[[str], str] = getpass.getpass) -> Password:
    """Read the password from the terminal, never echoing it."""
    project = target.project_name or "?"
    return Password(ask(f"Allas password for {target.username} (project {project}): "), "the terminal")


def _stored(path: Path, record: credstore.StoredCredential) -> AppCredential:
    """A credential from a file, naming the file as its origin."""
    return AppCredential(record.id, record.secret, f"stored in {path}")

"""Every failure allasrun reports, and the one table that maps each to an exit code.

Lower modules raise these; the CLI turns any that reaches it into one line and its
`exit_code`. Staging outcomes are not exceptions: a stage that fails returns 74 or 75 in
its `StageResult`, because the run goes on (the report is written, the command's status
logged). Third-party exceptions are mapped to these where they arise: keystoneauth's in
`auth/keystone.py`, http.client's in `staging/wire.py` (for both stores).

    AllasrunError
    ├── UsageError ─ DirectiveError   2   bad option, input file or #ALLAS line
    ├── LocalFileError                73  a local file or directory could not be made, read or written
    ├── KeystoneUnreachable           69  Keystone down or answering 5xx
    ├── SlurmUnavailable              69  slurmctld did not give what the job needs (its batch script)
    ├── StoreError ─ BucketMissing    69  the object store refused or failed a request
    │             └─ Corrupt          69  what arrived is not what was listed
    ├── AuthenticationFailed          77  Keystone refused the credentials
    ├── NoCredentials                 78  nothing to authenticate with
    ├── UnsafeFile                    78  a secret file others can read, a directory not ours
    ├── BadS3Keys                     78  S3 keys half given, or their file unreadable as such
    ├── NoObjectStore                 78  no object-store endpoint in the catalog
    ├── CommandNotExecutable          126
    └── CommandNotFound               127
"""

from __future__ import annotations

from typing import Optional

# The exit codes allasrun itself uses. A command that ran exits with its own status instead
# (0-255, or 128+N when signal N killed it); these are only seen when allasrun stops first.
EXIT_USAGE = 2  # bad options, bad input file or #ALLAS directive, missing command
EXIT_UNAVAILABLE = 69  # Keystone (or Swift) could not be reached or answered with an error
EXIT_SOFTWARE = 70  # a defect in allasrun itself: the one line says so (-v adds the traceback)
EXIT_LOCAL_FILE = 73  # a local file or directory could not be made, read or written (quota, disk, permission)
EXIT_STAGE_IN = 74  # stage-in failed: the command was not started
EXIT_STAGE_OUT = 75  # stage-out failed: some results did not land (each is named in the log)
EXIT_AUTH = 77  # Keystone refused the credentials: wrong password, unknown project, expired
EXIT_CONFIG = 78  # nothing to authenticate with, no object-store endpoint, unsafe file mode
EXIT_NOT_EXECUTABLE = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127  # the command was not found on PATH


class AllasrunError(Exception):
    """Base of every error allasrun reports as one line and a documented exit code."""

    exit_code = EXIT_USAGE


class UsageError(AllasrunError):
    """The command line or an input file is wrong; nothing was started."""

    exit_code = EXIT_USAGE


class DirectiveError(UsageError):
    """A directive is wrong; the message starts with `file:line:` and quotes the line."""

    def __init__(self, where: str, message: str, text: str) -> None:
        super().__init__(f"{where}: {message}: {text.strip()}")


class LocalFileError(AllasrunError):
    """The machine refused a file allasrun needs: permission, quota, a full disk, a path that is a directory.

    These are the environment's doing, not the user's input, so they get their own code (sysexits'
    EX_CANTCREAT) and a message naming the path and the system's reason.
    """

    exit_code = EXIT_LOCAL_FILE

    @classmethod
    def of(cls, error: OSError, doing: str) -> LocalFileError:
        """`doing` says what allasrun was trying ("write the token cache"); the path comes from `error`."""
        where = f" {error.filename}" if error.filename else ""
        return cls(f"cannot {doing}{where}: {error.strerror or error}")


class CommandNotFound(AllasrunError):
    """The job command is not on PATH; found before any Keystone call is made."""

    exit_code = EXIT_NOT_FOUND


class CommandNotExecutable(AllasrunError):
    """The job command exists but is not executable by this user."""

    exit_code = EXIT_NOT_EXECUTABLE


class NoCredentials(AllasrunError):
    """No application credential, password, terminal to ask on, or token was found."""

    exit_code = EXIT_CONFIG


class UnsafeFile(AllasrunError):
    """A secret-holding file is readable by others; using it would spread the secret."""

    exit_code = EXIT_CONFIG


class BadS3Keys(AllasrunError):
    """S3 keys are half given (one variable without the other) or their file cannot be parsed.

    The message names the variables, or the file and line, never a key's value: a line that
    does not parse may hold a secret.
    """

    exit_code = EXIT_CONFIG


class BadCABundle(AllasrunError):
    """`AWS_CA_BUNDLE` names a file that cannot be read as CA certificates (an https S3 endpoint's)."""

    exit_code = EXIT_CONFIG


class NoObjectStore(AllasrunError):
    """The Keystone catalog has no object-store endpoint for the chosen interface/region."""

    exit_code = EXIT_CONFIG


class KeystoneUnreachable(AllasrunError):
    """Keystone did not answer, or answered with a server error."""

    exit_code = EXIT_UNAVAILABLE


class SlurmUnavailable(AllasrunError):
    """slurmctld did not answer what the job needs from it (exit 69, like any unavailable service)."""

    exit_code = EXIT_UNAVAILABLE


class AuthenticationFailed(AllasrunError):
    """Keystone answered and refused: wrong password, unknown project or user, expired secret."""

    exit_code = EXIT_AUTH


class StoreError(AllasrunError):
    """The object store refused or failed a request (after the client's own retries).

    `transient`: no answer, a server error or throttling (408, 429, 498, 5xx), worth asking
    again; `retry_after`: the seconds the server asked to wait first (`Retry-After`);
    `retried`: the store has already retried it as long as it may, so no caller should again.
    """

    exit_code = EXIT_UNAVAILABLE

    def __init__(
        self,
        message: str,
        http_status: Optional[int] = None,
        *,
        transient: bool = False,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.transient = transient
        self.retry_after = retry_after
        self.retried = False


class BucketMissing(StoreError):
    """The bucket (container) does not exist."""


class Corrupt(StoreError):
    """What arrived is not what the store listed (size, MD5, or the object changed meanwhile)."""


class BadArchive(AllasrunError):
    """An archive `--unpack` will not extract: unreadable, unsafe, or not what its `_ameta` lists.

    Its stage-in is refused (exit 74): the object itself is the problem, so it is not retried.
    """

    exit_code = EXIT_STAGE_IN

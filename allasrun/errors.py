"""Every failure allasrun reports, and the one table that maps each to an exit code.

Lower modules raise these; only the CLI turns them into a message and an exit status, so
the codes users script against are decided in exactly one place.
"""

from __future__ import annotations

# The exit codes allasrun itself uses. A command that ran exits with its own status instead
# (0-255, or 128+N when signal N killed it); these are only seen when allasrun stops first.
EXIT_USAGE = 2  # bad options, bad input file or #ALLAS directive, missing command
EXIT_UNAVAILABLE = 69  # Keystone (or Swift) could not be reached or answered with an error
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


class NoObjectStore(AllasrunError):
    """The Keystone catalog has no object-store endpoint for the chosen interface/region."""

    exit_code = EXIT_CONFIG


class KeystoneUnreachable(AllasrunError):
    """Keystone did not answer, or answered with a server error."""

    exit_code = EXIT_UNAVAILABLE


class AuthenticationFailed(AllasrunError):
    """Keystone answered and refused: wrong password, unknown project or user, expired secret."""

    exit_code = EXIT_AUTH

"""allasrun's log: timestamped `allasrun:` lines on stderr, with secrets masked.

Job logs are read by support staff and pasted into tickets, so every secret allasrun learns
is registered here and replaced by `***` in whatever a line holds: the message, and the
traceback or stack below it. File and object names, directive text and server answers are
anyone's bytes: control characters in them are shown escaped (an escape character as the four
characters backslash x 1 b), so that a name can neither forge a log line nor drive the terminal
that shows the job's output. A process that holds a secret is also made non-dumpable, so no
core file (and no ptrace or /proc/PID/mem read by the user's other processes) shows it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time

log = logging.getLogger("allasrun")

PR_SET_DUMPABLE = 4


class _Secrets:
    """The registered secrets, as a frozenset that is replaced whole, never changed in place.

    A log call in one thread then masks with one snapshot while another thread adds to it.
    """

    def __init__(self) -> None:
        self.known: frozenset[str] = frozenset()
        self._adding = threading.Lock()
        self._undumpable = False

    def add(self, secrets: frozenset[str]) -> None:
        with self._adding:
            self.known = self.known | secrets
            first = not self._undumpable
            self._undumpable = True
        if first:
            _no_core_dumps()

    def mask(self, text: str) -> str:
        for secret in self.known:
            text = text.replace(secret, "***")
        return text


_secrets = _Secrets()
# C0 and C1 controls and DEL, Unicode's bidirectional overrides (which reorder what a terminal
# shows), and lone surrogates (a non-UTF-8 file name's bytes, which stderr cannot encode).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with every character that a terminal would act on, rather than show, escaped."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    if character in _ESCAPES:
        return _ESCAPES[character]
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class _Redacting(logging.Formatter):
    """Formats as usual with the message made printable, then masks every registered secret."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        record.message = printable(_secrets.mask(record.message))
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return _secrets.mask(super().format(record))


def hide(*secrets: str) -> None:
    """Never print these strings (passwords, credential secrets, tokens), nor dump them in a core."""
    new = frozenset(secret for secret in secrets if secret)
    if new:
        _secrets.add(new)


def _no_core_dumps() -> None:
    """PR_SET_DUMPABLE 0 for allasrun's own process.

    Not RLIMIT_CORE: that limit survives fork and exec, so it would silently take core dumps
    away from the user's command too. The dumpable flag is reset by exec, so the command
    (which holds no more than its environment shows) keeps the user's core settings.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # 3 ms, paid only by a process that holds a secret

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # no libc or no prctl: nothing more to be done
        return


def configure(verbosity: int) -> None:
    """-1 warnings only (--quiet), 0 progress (default), 1 debug (--verbose)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = _Redacting("allasrun: %(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))

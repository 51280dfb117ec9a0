"""allasrun's log: timestamped `allasrun:` lines on stderr, with secrets masked.

Job logs are read by support staff and pasted into tickets, so every secret allasrun learns
is registered here and replaced by `***` in any message, whatever produced it.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("allasrun")


class _Redact(logging.Filter):
    """Replaces every registered secret in a record's final message."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in tuple(self.secrets):  # a snapshot: another thread may hide() meanwhile
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


_redact = _Redact()


def hide(*secrets: str) -> None:
    """Never print these strings (passwords, credential secrets, tokens)."""
    _redact.secrets.update(secret for secret in secrets if secret)


def configure(verbosity: int) -> None:
    """-1 warnings only (--quiet), 0 progress (default), 1 debug (--verbose)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("allasrun: %(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_redact)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))

"""Whether a process is still there: the one test behind every "is its owner gone?" decision.

A step's leader and followers judge each other by it, and stage-in by it removes only the
temporary files of an allasrun that is gone. Shared here because job and staging do not
import each other.
"""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether `pid` exists; another user's process (EPERM) counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

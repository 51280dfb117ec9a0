"""Whether a process is still there: the one test behind every "is its owner gone?" decision.

A step's leader and followers judge each other by it; stage-in by it removes only the
temporary files, and stage-out only the segments, of an allasrun that is gone. What such a
name records is `HOST` and a pid: a pid means something only on its own host. Shared here
because job and staging do not import each other.
"""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname().split(".")[0]  # this node's short name, as temporary and segment names carry it


def alive(pid: int) -> bool:
    """Whether `pid` exists; another user's process (EPERM) counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

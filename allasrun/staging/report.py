"""The JSON report: allasrun's and the command's exit status, every transfer and how it was verified."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from allasrun.atomicfile import write_atomic
from allasrun.staging.transfer import Transfer


def write(path: Path, status: Optional[int], command: Optional[int], transfers: Sequence[Transfer]) -> None:
    """The JSON report: allasrun's and the command's exit status, every transfer."""
    document = {
        "exit_status": status,
        "command_status": command,
        "transfers": [asdict(t) for t in transfers],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(document, indent=1) + "\n")

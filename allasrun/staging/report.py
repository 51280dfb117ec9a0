"""The JSON report: allasrun's and the command's exit status, every transfer and how it was verified.

It is also the record a failed stage-out leaves for finishing it later: the working directory,
the stage-out directives with every substitution already made (`%j` of the job, not of
whoever finishes it), and the settings that shape an upload. `read` gives that back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from allasrun.atomicfile import write_atomic
from allasrun.errors import LocalFileError, UsageError
from allasrun.staging.plan import Settings, StageOut, StagePlan
from allasrun.staging.transfer import Transfer

# What an upload needs of the settings; the rest (report, progress, deadline) is the run's own.
KEPT = ("project", "threads", "segment_size", "retries")


@dataclass(frozen=True)
class Record:
    """A report read back: enough to upload what did not land, where the job meant it to go."""

    path: Path
    exit_status: Optional[int]
    command_status: Optional[int]
    transfers: list[Transfer]
    workdir: Path
    plan: StagePlan


def write(
    path: Path,
    status: Optional[int],
    command: Optional[int],
    transfers: Sequence[Transfer],
    plan: StagePlan,
    workdir: Path,
) -> None:
    """The JSON report: allasrun's and the command's exit status, every transfer, what to finish with."""
    document = {
        "exit_status": status,
        "command_status": command,
        "transfers": [asdict(t) for t in transfers],
        "workdir": str(workdir),
        "settings": {name: getattr(plan.settings, name) for name in KEPT},
        "stage_out": [asdict(spec) for spec in plan.stage_out],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(document, indent=1) + "\n")


def read(path: Path) -> Record:
    """A report written by `write`; one that is not (hand-edited, older, another file) is a UsageError."""
    try:
        text = path.read_text()
    except OSError as error:
        raise LocalFileError.of(error, "read the report") from None
    try:
        document = json.loads(text)
        return Record(
            path,
            document["exit_status"],
            document["command_status"],
            [_known(Transfer, row) for row in document["transfers"]],
            Path(document["workdir"]),
            StagePlan(
                stage_out=tuple(_known(StageOut, row) for row in document["stage_out"]),
                settings=Settings(**{name: document["settings"][name] for name in KEPT}),
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UsageError(f"{path}: not a stage-out report of allasrun ({error!r})") from None


def _known(kind: Any, row: dict[str, Any]) -> Any:
    """A dataclass from a JSON object, refusing names it does not have."""
    names = {f.name for f in fields(kind)}
    unknown = set(row) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields {sorted(unknown)}")
    return kind(**row)

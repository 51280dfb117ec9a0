"""`allasrun stage-out REPORT`: upload what a failed stage-out's report says did not land.

The report holds the job's directives with their substitutions made, so the files reach the
objects the job named (its `%j`, not a new one), from the job's working directory, and nothing
the job has uploaded already is touched. Run it when Allas is back; run it again if it fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from allasrun.auth import TokenSource
from allasrun.log import log
from allasrun.staging import StagingRun


def run(path: Path, env: Mapping[str, str], storage_url: Optional[str] = None) -> int:
    """0 when every file landed now, 75 when some still did not (the report says which)."""
    record = StagingRun.record(path)
    with TokenSource.open(env, project=record.plan.settings.project, storage_url=storage_url) as source:
        log.info("finishing the stage-out of %s from %s", path, record.workdir)
        return StagingRun(record.plan, source, record.workdir).resume(record)

"""Reading a job script: its `#ALLAS` plan, and the command line that runs it."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from allasrun.errors import UsageError
from allasrun.log import log
from allasrun.slurm import facts as slurm
from allasrun.staging import directives
from allasrun.staging import plan as stageplan


def load_plan(
    path: Path, env: Mapping[str, str], login_name: str, strict: bool = True
) -> stageplan.StagePlan:
    """Parse and resolve the script's directives; warnings are logged, errors raised."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UsageError(f"{path}: cannot read the job script ({error.strerror})") from None
    return _plan(text, str(path), env, login_name, strict)


def discover_plan(env: Mapping[str, str], login_name: str) -> stageplan.StagePlan:
    """The plan of the Slurm job's own batch script, so `allasrun -- CMD` needs no `--script`.

    Not in a job, or under an enclosing allasrun (which does the staging): no plan.
    """
    job = slurm.job_id(env)
    if job is None or env.get("ALLASRUN_DIR"):
        return stageplan.StagePlan()
    text = slurm.batch_script(env)
    if text is None:
        log.debug("job %s: no batch script from scontrol; no #ALLAS staging", job)
        return stageplan.StagePlan()
    return _plan(text, f"job {job} batch script", env, login_name, strict=True)


def command_for(path: Path) -> list[str]:
    """How to run a script the way sbatch does, executable bit or not: by its `#!` line."""
    if os.access(path, os.X_OK):
        return [str(path) if "/" in str(path) else f"./{path}"]  # not a PATH lookup
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    interpreter = shlex.split(first[2:]) if first.startswith("#!") else ["/bin/sh"]
    if not interpreter:
        raise UsageError(f"{path}:1: empty #! line")
    return [*interpreter, str(path)]


def _plan(
    text: str, label: str, env: Mapping[str, str], login_name: str, strict: bool
) -> stageplan.StagePlan:
    found, warnings = directives.parse(text, label)
    for warning in warnings:
        log.warning("%s", warning)
    return stageplan.build(found, env, login_name, strict)

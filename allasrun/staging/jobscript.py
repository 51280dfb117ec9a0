"""Reading a job script: its text, its `#ALLAS` plan, and the command line that runs it."""

from __future__ import annotations

import getpass
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from allasrun.errors import UsageError
from allasrun.log import log
from allasrun.slurm import facts
from allasrun.staging import directives
from allasrun.staging.plan import StagePlan, build


def read(path: Union[str, Path]) -> str:
    """The script's text; an unreadable script is a usage error naming it."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UsageError(f"{path}: cannot read the job script ({error.strerror})") from None


def load_plan(path: Path, env: Mapping[str, str], strict: bool = True) -> StagePlan:
    """Parse and resolve a script file's directives; warnings are logged, errors raised."""
    return plan_of(read(path), str(path), env, strict)


def discover_plan(env: Mapping[str, str]) -> StagePlan:
    """The plan of the Slurm job's own batch script, so `allasrun -- CMD` needs no `--script`.

    Not in a job: no plan. Under an allasrun around the batch step, which stages the shared
    directives and its own node's: nothing on that node, the node-local part on the others.
    """
    job = facts.job_id(env)
    outer = env.get("ALLASRUN_DIR")
    if job is None or (outer and env.get("ALLASRUN_NODE") == facts.node_name(env)):
        return StagePlan()
    text = facts.batch_script(env)
    if text is None:
        log.debug("job %s: no batch script from scontrol; no #ALLAS staging", job)
        return StagePlan()
    plan = plan_of(text, f"job {job} batch script", env, strict=True)
    return plan.part(node_local=True) if outer else plan


def plan_of(text: str, label: str, env: Mapping[str, str], strict: bool) -> StagePlan:
    """The plan a script's text asks for; `label` names the script in every message.

    `strict=False` keeps Slurm placeholders (%j) that cannot be known before the job runs.
    """
    found, warnings = directives.parse(text, label)
    for warning in warnings:
        log.warning("%s", warning)
    return build(found, env, getpass.getuser(), strict)


def command_for(path: Path) -> list[str]:
    """How to run a script the way sbatch does, executable bit or not: by its `#!` line."""
    if os.access(path, os.X_OK):
        return [str(path) if "/" in str(path) else f"./{path}"]  # not a PATH lookup
    first = read(path).split("\n", 1)[0]
    interpreter = shlex.split(first[2:]) if first.startswith("#!") else ["/bin/sh"]
    if not interpreter:
        raise UsageError(f"{path}:1: empty #! line")
    return [*interpreter, str(path)]

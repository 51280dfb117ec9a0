"""Reading a job script: its text, its `#ALLAS` plan, and the command line that runs it."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

from allasrun.errors import SlurmUnavailable, UsageError
from allasrun.log import log
from allasrun.slurm import facts
from allasrun.staging import directives
from allasrun.staging.plan import StagePlan, build

BATCH_SCRIPT_RETRIES = (2.0, 5.0, 10.0)  # seconds between asks: a busy slurmctld times out


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
    An ALLASRUN_DIR inherited from where the job was submitted (a shell under allasrun) is
    no allasrun of this job's, and changes nothing.
    """
    job = facts.job_id(env)
    if job is None:
        return StagePlan()
    enclosing = _enclosing(env)
    if enclosing == "here":
        return StagePlan()
    text = _batch_script(env, job)
    if text is None:
        return StagePlan()
    plan = plan_of(text, f"job {job} batch script", env, strict=True)
    return plan.part(node_local=True) if enclosing == "elsewhere" else plan


def _enclosing(env: Mapping[str, str]) -> Optional[str]:
    """Where this job's enclosing allasrun runs: on this node ("here"), another of the job's, or none."""
    outer, node = env.get("ALLASRUN_DIR"), env.get("ALLASRUN_NODE", "")
    if not outer:
        return None
    if node == facts.node_name(env):
        return "here" if _is_file(Path(outer) / "env") else None
    nodelist = env.get("SLURM_JOB_NODELIST")
    return "elsewhere" if nodelist is None or node in hostnames(nodelist) else None


def _is_file(path: Path) -> bool:
    """Whether `path` is a file; a name the system refuses (too long) is none of allasrun's."""
    try:
        return path.is_file()
    except OSError:
        return False


def hostnames(nodelist: str) -> list[str]:
    """Slurm's compressed host list (`n[1-3,07],login1`) as names.

    One Slurm would not write (`n[a-b]`, more hosts than it expands) is a usage error naming
    the variable, never a traceback or a list that fills the memory.
    """
    names: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        found = re.search(r"\[([^\]]*)\]", item)
        if found is None:
            names.append(item)
            continue
        head, tail = item[: found.start()], item[found.end() :]
        for part in found.group(1).split(","):
            first, _, last = part.partition("-")
            if not _RANGE.fullmatch(part) or int(last or first) - int(first) > MAX_HOSTS:
                raise UsageError(f"SLURM_JOB_NODELIST is not a Slurm host list: {nodelist[:200]!r}")
            for number in range(int(first), int(last or first) + 1):
                names.extend(head + str(number).zfill(len(first)) + rest for rest in hostnames(tail) or [""])
                if len(names) > MAX_HOSTS:
                    raise UsageError(f"SLURM_JOB_NODELIST names over {MAX_HOSTS} hosts: {nodelist[:200]!r}")
    return names


MAX_HOSTS = 65536  # as many as Slurm's own host lists expand (MAX_RANGE in hostlist.c)
_RANGE = re.compile(r"[0-9]+(-[0-9]+)?")


def _batch_script(env: Mapping[str, str], job: str) -> Optional[str]:
    """The job's batch script from slurmctld, asked again while it is too busy to answer.

    A job without its `#ALLAS` plan would run without inputs and lose its results, so a
    failure is an error once the retries are spent; only a node without scontrol (a
    container without Slurm) has no plan to find.
    """
    if shutil.which("scontrol", path=env.get("PATH")) is None:
        log.debug("job %s: no scontrol on PATH; no #ALLAS staging", job)
        return None
    for delay in (*BATCH_SCRIPT_RETRIES, None):
        text = facts.batch_script(env)
        if text is not None:
            return text
        if delay is None:
            break
        log.warning("job %s: scontrol write batch_script failed; asking again in %.0f s", job, delay)
        time.sleep(delay)
    raise SlurmUnavailable(
        f"job {job}: slurmctld did not give the job's batch script (scontrol write batch_script "
        f"failed {len(BATCH_SCRIPT_RETRIES) + 1} times), so its #ALLAS directives are unknown; "
        "not running without them"
    )


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

"""What allasrun learns from Slurm inside a job: its own batch script, and its end time.

The only module that runs Slurm commands. Every answer may be missing (not in a job, no
scontrol on PATH, an old Slurm): callers treat None as "no Slurm help here".
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Optional

TIMEOUT = 30


def node_name(env: Mapping[str, str]) -> str:
    """The name of the node we run on: Slurm's (SLURMD_NODENAME), else the host's."""
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def job_id(env: Mapping[str, str]) -> Optional[str]:
    """The job this process runs in, if any."""
    return env.get("SLURM_JOB_ID") or None


def batch_script(env: Mapping[str, str]) -> Optional[str]:
    """The job's own batch script, as slurmctld stored it at submission (22.05 and later)."""
    job = job_id(env)
    if job is None:
        return None
    return _run(["scontrol", "write", "batch_script", job, "-"], env)


def time_window(env: Mapping[str, str]) -> Optional[tuple[float, float]]:
    """The job's start and end (time limit) as POSIX seconds; re-read it, the limit can move.

    squeue knows the current ones (`%S %e`, local time without a zone). Slurm 23.02 and later
    also set SLURM_JOB_START_TIME and SLURM_JOB_END_TIME, but once, at the job's start: after
    `scontrol update TimeLimit=` they are stale, so they only stand in when squeue cannot answer.
    """
    job = job_id(env)
    if job is None:
        return None
    text = _run(["squeue", "-h", "-j", job, "-o", "%S %e"], env)
    try:
        first, second = (text or "").split()
        return _local(first), _local(second)
    except ValueError:  # failed, pending, unknown, N/A
        pass
    start, end = env.get("SLURM_JOB_START_TIME", ""), env.get("SLURM_JOB_END_TIME", "")
    if start.isdigit() and end.isdigit():
        return float(start), float(end)
    return None  # no deadline to keep


def signals_reach_whole_step(env: Mapping[str, str]) -> bool:
    """Whether slurmstepd signals every process of a step, whatever its process group.

    Every process tracker does (linuxproc by the process tree, cgroup by the cgroup) except
    proctrack/pgid, which signals the task's process group only. Read from the node's
    slurm.conf (no call to slurmctld at the moment a job is ended); Slurm's default, cgroup,
    when it cannot be read.
    """
    conf = Path(env.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    try:
        text = conf.read_text(errors="replace")
    except OSError:
        return True
    found = re.search(r"^\s*proctracktype\s*=\s*(\S+)", text, re.IGNORECASE | re.MULTILINE)
    return found is None or found.group(1).lower() != "proctrack/pgid"


def _local(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


def _run(command: list[str], env: Mapping[str, str]) -> Optional[str]:
    try:
        result = subprocess.run(
            command, env=dict(env), capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def job_active(job: str, env: Mapping[str, str], cluster: str = "") -> Optional[bool]:
    """Whether a job (or any task of an array) may still run; None when Slurm cannot say.

    Only an answer from slurmctld counts as "gone": the user's listing lacks the job, or
    every task of it has reached a final state. A failed or timed-out squeue, a cluster that
    cannot be asked, give None, and the caller keeps whatever the job may still need.
    """
    if cluster and cluster != cluster_name(env):  # another cluster: ask it by name (needs slurmdbd)
        text = _run([*_LISTING, f"--clusters={cluster}"], env)
    else:  # this one, even where -M cannot work (no slurmdbd)
        text = _run(_LISTING, {k: v for k, v in env.items() if k != "SLURM_CLUSTERS"})
    if text is None:
        return None
    states = [
        state
        for own, listed, state in (line.split("|") for line in text.splitlines() if line.count("|") == 2)
        if job in (own, re.split(r"[_+]", listed)[0])
    ]
    return any(state not in FINAL_STATES for state in states)


def cluster_name(env: Mapping[str, str]) -> Optional[str]:
    """The name of the cluster this host submits to by default, as `scontrol show config` says."""
    text = _run(["scontrol", "show", "config"], env) or ""
    found = re.search(r"^ClusterName\s*=\s*(\S+)", text, re.MULTILINE)
    return found.group(1) if found else None


# Every job of the user slurmctld still knows, whatever its state: `own id|id or array_task|state`.
_LISTING = ["squeue", "--noheader", "--me", "--states=all", "--format=%A|%i|%T"]
# States a job does not leave by itself (NODE_FAIL and PREEMPTED may requeue it: wait until it is purged).
FINAL_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "OUT_OF_MEMORY", "TIMEOUT"}
)

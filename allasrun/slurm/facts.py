"""What allasrun learns from Slurm inside a job: its own batch script, and its end time.

The only module that runs Slurm commands. Every answer may be missing (not in a job, no
scontrol on PATH, an old Slurm): callers treat None as "no Slurm help here".
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from datetime import datetime
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

    Slurm 23.02 and later set SLURM_JOB_START_TIME and SLURM_JOB_END_TIME; before that squeue
    knows them (`%S %e`, local time without a zone).
    """
    job = job_id(env)
    if job is None:
        return None
    start, end = env.get("SLURM_JOB_START_TIME", ""), env.get("SLURM_JOB_END_TIME", "")
    if start.isdigit() and end.isdigit():
        return float(start), float(end)
    text = _run(["squeue", "-h", "-j", job, "-o", "%S %e"], env)
    try:
        first, second = (text or "").split()
        return _local(first), _local(second)
    except ValueError:  # pending, unknown, N/A: no deadline to keep
        return None


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


def job_active(job: str, env: Mapping[str, str]) -> bool:
    """Whether a job (or any task of an array) is still pending or running."""
    text = _run(["squeue", "-h", "-j", job, "-o", "%T"], env)
    return bool(text and text.strip())

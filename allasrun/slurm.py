"""What allasrun learns from Slurm inside a job: its own batch script, and its end time.

The only module that runs Slurm commands. Every answer may be missing (not in a job, no
scontrol on PATH, an old Slurm): callers treat None as "no Slurm help here".
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from datetime import datetime
from typing import Optional

TIMEOUT = 30


def job_id(env: Mapping[str, str]) -> Optional[str]:
    """The job this process runs in, if any."""
    return env.get("SLURM_JOB_ID") or None


def batch_script(env: Mapping[str, str]) -> Optional[str]:
    """The job's own batch script, as slurmctld stored it at submission (22.05 and later)."""
    job = job_id(env)
    if job is None:
        return None
    return _run(["scontrol", "write", "batch_script", job, "-"], env)


def end_time(env: Mapping[str, str]) -> Optional[float]:
    """When the job's time limit ends, as POSIX seconds; re-read each time, the limit can change.

    SLURM_JOB_END_TIME exists from Slurm 23.02 on; before that squeue knows (`%e`, local time).
    """
    job = job_id(env)
    if job is None:
        return None
    given = env.get("SLURM_JOB_END_TIME")
    if given and given.isdigit():
        return float(given)
    text = _run(["squeue", "-h", "-j", job, "-o", "%e"], env)
    if not text or not text.strip() or text.strip() in ("N/A", "NONE", "Unknown"):
        return None
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _run(command: list[str], env: Mapping[str, str]) -> Optional[str]:
    try:
        result = subprocess.run(
            command, env=dict(env), capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None

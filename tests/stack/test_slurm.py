"""allasrun inside real Slurm jobs (stack/mini-slurm): directives found without --script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.stack.stackutil import Slurm, Stack, make_bucket, put_object, rclone, user_env, wait_for

JOB = """#!/bin/bash
#SBATCH --time=5 --job-name=upper
#ALLAS stage-in  slurm-data/in/words.txt
#ALLAS stage-out result.txt   slurm-data/out/%x-%j/
# One allasrun word around the work; the srun task inside reuses its keeper.
work='tr a-z A-Z < words.txt > result.txt; rclone lsf allas:slurm-data/in'
allasrun -- srun -n 1 allasrun -- sh -c "$work"
"""


def test_batch_job_stages_its_own_directives(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "slurm-data")
    put_object(stack, "slurm-data", "in/words.txt", b"hello allas\n")
    script = tmp_path / "job.sh"
    script.write_text(JOB)
    job_id = slurm.submit(script, user_env(stack, home))
    fields = slurm.wait(job_id)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), output
    assert (
        rclone(stack, tmp_path, "cat", f"ref:slurm-data/out/upper-{job_id}/result.txt").stdout
        == "HELLO ALLAS\n"
    )
    assert "words.txt" in output  # the inner rclone call worked with the outer keeper's files
    assert "reusing the token and files of the enclosing allasrun" in output
    assert output.count("authenticated ") == 1


DEADLINE_JOB = """#!/bin/bash
#SBATCH --time=1 --job-name=deadline
#ALLAS stage-out results/ slurm-data/deadline/%j/
#ALLAS option stage-out-lead=40 grace=5
mkdir -p results
exec allasrun -- sh -c 'echo "written before the limit" > results/a.txt; exec sleep 3600'
"""


def test_time_limited_job_stages_out_before_the_kill(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    make_bucket(stack, "slurm-data")
    script = tmp_path / "job.sh"
    script.write_text(DEADLINE_JOB)
    job_id = slurm.submit(script, user_env(stack, home))
    fields = slurm.wait(job_id, timeout=150)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    # allasrun stopped the command itself, half-way into the 1-minute limit (the lead is capped
    # at half the job's time), and uploaded: Slurm never had to kill the job.
    assert fields["JobState"] == "FAILED", output
    assert fields["ExitCode"] == "143:0", output
    assert "sending SIGTERM to the command" in output
    uploaded = rclone(stack, tmp_path, "cat", f"ref:slurm-data/deadline/{job_id}/a.txt").stdout
    assert uploaded == "written before the limit\n"


CANCELLED_JOB = """#!/bin/bash
#SBATCH --time=5
#ALLAS stage-out results/ slurm-data/cancelled/%j/
mkdir -p results
exec allasrun -- sh -c 'echo "partial result" > results/p.txt; touch started; exec sleep 3600'
"""


def test_scancelled_job_still_uploads(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "slurm-data")
    script = tmp_path / "job.sh"
    script.write_text(CANCELLED_JOB)
    job_id = slurm.submit(script, user_env(stack, home))
    wait_for((tmp_path / "started").exists, timeout=60, what="the job to start")
    subprocess.run(["scancel", job_id], env={**os.environ, **slurm.env}, check=True)
    fields = slurm.wait(job_id)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert fields["JobState"] == "CANCELLED", output
    assert "exited with status 143" in output
    uploaded = rclone(stack, tmp_path, "cat", f"ref:slurm-data/cancelled/{job_id}/p.txt").stdout
    assert uploaded == "partial result\n"


STAGE_IN_FAILS = """#!/bin/bash
#SBATCH --time=5
#ALLAS stage-in slurm-data/not-there.txt
exec allasrun -- touch ran
"""


def test_job_whose_stage_in_fails_never_runs_its_command(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    make_bucket(stack, "slurm-data")
    script = tmp_path / "job.sh"
    script.write_text(STAGE_IN_FAILS)
    job_id = slurm.submit(script, user_env(stack, home))
    fields = slurm.wait(job_id)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "74:0"), output
    assert f"job {job_id} batch script:3" in output and "no object matches" in output
    assert not (tmp_path / "ran").exists()

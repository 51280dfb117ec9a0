"""allasrun inside real Slurm jobs (stack/mini-slurm): directives found without --script."""

from __future__ import annotations

from pathlib import Path

from tests.stack.stackutil import Slurm, Stack, make_bucket, put_object, rclone, user_env

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

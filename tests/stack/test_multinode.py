"""Jobs on two nodes (two slurmd in their own network namespaces, each with its own $TMPDIR),
submitted and run by an ordinary user, as on the clusters.

Node-local directives (under $TMPDIR) are staged on each node, shared ones once per job; each
node keeps one token (one Keystone login per node); the deadline stops the command on every
node in time to upload what it wrote there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.stack.stackutil import (
    Job,
    OrdinaryUser,
    Slurm,
    Stack,
    allasrun,
    make_bucket,
    put_object,
    uploaded,
    wait_for,
)

STEP_JOB = """#!/bin/bash
#SBATCH -N 2 -n 4 --time=5 --job-name=twonodes
#ALLAS stage-in  {bucket}/in.txt       $TMPDIR/%j/
#ALLAS stage-in  {bucket}/shared.txt   ./
#ALLAS stage-out $TMPDIR/%j/out/       {bucket}/out/%j/%N/
#ALLAS stage-out 'result-*.txt'        {bucket}/result/%j/
# No allasrun around the batch step: the step's tasks share the work between the nodes. Two
# tasks per node: a leader and a follower on each.
srun -N 2 -n 4 allasrun -- sh -c '
  mkdir -p "$TMPDIR/$SLURM_JOB_ID/out"
  out="$TMPDIR/$SLURM_JOB_ID/out/$SLURM_PROCID.txt"
  cp "$TMPDIR/$SLURM_JOB_ID/in.txt" "$out" && echo "$SLURMD_NODENAME" >> "$out"
  sleep "$SLURM_NODEID"  # the second node ends later: the shared upload must wait for it
  cat shared.txt > "result-$SLURM_PROCID.txt"'
"""


def _bucket(stack: Stack) -> str:
    bucket = f"multi-{uuid.uuid4().hex[:10]}"
    make_bucket(stack, bucket)
    put_object(stack, bucket, "in.txt", b"node-local input\n")
    put_object(stack, bucket, "shared.txt", b"shared input\n")
    return bucket


@pytest.fixture
def user_job(stack: Stack, slurm2: Slurm, ordinary_user: OrdinaryUser) -> Callable[[str, str], Job]:
    """Submit a job script as the ordinary user from a fresh directory of its own.

    The user holds an application credential (no per-run credential to mint, so a login is one
    request), and no run directory is shared: each node keeps its files in its own $TMPDIR.
    """

    def submit(text: str, bucket: str) -> Job:
        workdir = ordinary_user.workdir()
        env = ordinary_user.env(stack, workdir)
        return Job(stack, slurm2, workdir, text, env, bucket, user=ordinary_user)

    return submit


@pytest.mark.exclusive  # counts Keystone logins
def test_a_two_node_step_stages_per_node_and_once_per_job(
    stack: Stack, user_job: Callable[[str, str], Job]
) -> None:
    bucket = _bucket(stack)
    logins = stack.allasrun_logins()
    job = user_job(STEP_JOB.format(bucket=bucket), bucket)
    fields, output = job.finish()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), output
    placed = {"0": "n1", "1": "n1", "2": "n2", "3": "n2"}  # Slurm's block distribution
    for task, node in placed.items():  # every task's node-local output, from its own node
        assert job.uploaded(f"out/{job.id}/{node}/{task}.txt") == f"node-local input\n{node}\n", output
    for task in placed:  # the shared outputs of every node, uploaded once by the first node
        assert job.uploaded(f"result/{job.id}/result-{task}.txt") == "shared input\n", output
    assert not (job.directory / "in.txt").exists()  # the node-local input went to each $TMPDIR only
    assert output.count("stage-in: 2 file(s)") == 1  # the first node: its $TMPDIR and the shared one
    assert output.count("stage-in: 1 file(s)") == 1  # the second: its own $TMPDIR
    assert output.count("stage-out: 6 file(s)") == 1  # the first node: its two, and the four shared
    assert output.count("stage-out: 2 file(s)") == 1  # the second: its own two
    # One keeper per node, and not even one login each: the second node's leader found the
    # first one's token in the token cache of the shared home (under its lock).
    assert output.count("authenticated ") == 2, output
    assert stack.allasrun_logins() - logins == 1, output


DEADLINE_JOB = """#!/bin/bash
#SBATCH -N 2 -n 2 --time=1 --job-name=twodeadline
#ALLAS stage-out $TMPDIR/progress.txt {bucket}/deadline/%j/%N.txt
#ALLAS option stage-out-lead=40 grace=5
srun -N 2 -n 2 allasrun -- sh -c '
  echo "$SLURMD_NODENAME started" > "$TMPDIR/progress.txt"; touch "started-$SLURM_NODEID"
  exec sleep 3600'
"""


def test_the_deadline_stops_the_command_on_both_nodes_and_each_uploads(
    stack: Stack, user_job: Callable[[str, str], Job]
) -> None:
    bucket = _bucket(stack)
    job = user_job(DEADLINE_JOB.format(bucket=bucket), bucket)
    wait_for((job.directory / "started-1").exists, timeout=60, what="both nodes to start")
    fields, output = job.finish(timeout=150)
    for node in ("n1", "n2"):
        assert job.uploaded(f"deadline/{job.id}/{node}.txt") == f"{node} started\n", output
    assert output.count("to stage out its results") == 2, output  # each node's deadline fired
    assert fields["JobState"] in ("COMPLETED", "FAILED"), output  # ended before the time limit


SBATCH_JOB = """#!/bin/bash
#SBATCH -N 2 -n 2 --time=5 --job-name=twobatch
#ALLAS stage-in  {bucket}/in.txt       $TMPDIR/
#ALLAS stage-in  {bucket}/shared.txt   ./
#ALLAS stage-out $TMPDIR/out.txt      {bucket}/batch/%j/%N.txt
#ALLAS stage-out result.txt           {bucket}/batch/%j/
# The batch step runs under allasrun (allasrun sbatch): it stages the shared directives and its
# node's; on the second node, the step's allasrun stages that node's.
work='cp "$TMPDIR/in.txt" "$TMPDIR/out.txt" && echo "$SLURMD_NODENAME" >> "$TMPDIR/out.txt"'
srun -N 2 -n 2 allasrun -- sh -c "$work"
cat shared.txt > result.txt
"""


def test_allasrun_sbatch_on_two_nodes_stages_each_nodes_scratch(
    stack: Stack, slurm2: Slurm, ordinary_user: OrdinaryUser
) -> None:
    bucket = _bucket(stack)
    workdir = ordinary_user.workdir()
    script = workdir / "job.sh"
    script.write_text(SBATCH_JOB.format(bucket=bucket))
    env = {**ordinary_user.env(stack, workdir), **slurm2.env}
    argv = ["sbatch", "--parsable", f"--output={workdir}/out.txt", str(script)]
    submitted = allasrun(argv, env, cwd=workdir, user=ordinary_user)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    fields = slurm2.wait(job_id)
    output = (workdir / "out.txt").read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), output
    for node in ("n1", "n2"):
        landed = uploaded(stack, workdir, bucket, f"batch/{job_id}/{node}.txt")
        assert landed == f"node-local input\n{node}\n", output
    assert uploaded(stack, workdir, bucket, f"batch/{job_id}/result.txt") == "shared input\n", output
    assert "reusing the token and files of the enclosing allasrun" in output  # on the first node

"""The deadline and Slurm's own signals reach the whole job, on the real Slurm (stack/mini-slurm).

Under `allasrun sbatch` the batch shell is allasrun's direct child and the work runs under it:
a grandchild. Stage-out must start only when nothing of the job is left writing, and a SIGTERM
that slurmstepd gave every process of the step must not arrive a second time from allasrun.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from pathlib import Path

import psutil

from tests.stack.stackutil import (
    ALLASRUN,
    Job,
    Slurm,
    Stack,
    allasrun,
    app_credential_env,
    make_bucket,
    uploaded,
    user_env,
    wait_for,
)

# The work is a loop under the batch shell that appends to a file until it is stopped, and
# writes a last line when it is (a checkpoint). The shell waits for it, as job scripts do.
TREE_JOB = """#!/bin/bash
#SBATCH --time=1 --job-name=tree
#ALLAS stage-out results/ {bucket}/tree/%j/
#ALLAS option stage-out-lead=40 grace=10
mkdir -p results
(
  trap 'echo "stopped" >> results/progress.txt; exit 0' TERM
  while :; do echo "tick $(date +%s.%N)" >> results/progress.txt; sleep 0.1; done
) &
wait
"""


def _submit(stack: Stack, slurm: Slurm, home: Path, workdir: Path, text: str) -> str:
    """`allasrun sbatch` a job script from its directory; the job id."""
    script = workdir / "job.sh"
    script.write_text(text)
    env = {**user_env(stack, home), **slurm.env}
    argv = ["sbatch", "--parsable", f"--output={workdir}/slurm-%j.out", str(script)]
    submitted = allasrun(argv, env, cwd=workdir)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def test_the_deadline_stops_a_grandchild_before_its_file_is_uploaded(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    bucket = f"tree-{uuid.uuid4().hex[:10]}"
    make_bucket(stack, bucket)
    job = _submit(stack, slurm, home, tmp_path, TREE_JOB.format(bucket=bucket))
    fields = slurm.wait(job, timeout=150)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert "sending SIGTERM to the command" in output, output
    progress = tmp_path / "results" / "progress.txt"
    on_disk = progress.read_text()
    time.sleep(1)
    assert progress.read_text() == on_disk, "the workload still writes after the job ended"
    assert on_disk.endswith("stopped\n"), on_disk[-200:]  # the loop had the deadline's TERM
    assert uploaded(stack, tmp_path, bucket, f"tree/{job}/progress.txt") == on_disk, output
    assert fields["JobState"] != "TIMEOUT", output  # allasrun was done before Slurm's kill


# Plain sbatch, no allasrun around the batch step: two tasks of one srun step, the second
# following the first (which leads: token, staging). Each task's work is a loop under its
# shell, as above; the deadline must stop both, the leader upload what both wrote.
STEP_JOB = """#!/bin/bash
#SBATCH --ntasks=2 --time=1 --job-name=steptree
#ALLAS stage-out results/ {bucket}/step/%j/
#ALLAS option stage-out-lead=40 grace=10
mkdir -p results
srun -n 2 allasrun -- bash -c '
  out=results/task-$SLURM_PROCID.txt
  (
    trap "echo stopped >> $out; exit 0" TERM
    while :; do echo "tick $(date +%s.%N)" >> $out; sleep 0.1; done
  ) &
  wait'
"""


def test_the_deadline_stops_every_task_of_a_step_before_stage_out(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    bucket = f"tree-{uuid.uuid4().hex[:10]}"
    job = Job(stack, slurm, tmp_path, STEP_JOB.format(bucket=bucket), user_env(stack, home), bucket)
    fields, output = job.finish(timeout=150)
    assert fields["JobState"] != "TIMEOUT", output  # the leader did not wait for ever
    assert output.count("to stage out its results") == 2, output  # the follower's deadline fired too
    for task in (0, 1):
        on_disk = (tmp_path / "results" / f"task-{task}.txt").read_text()
        assert on_disk.endswith("stopped\n"), (task, on_disk[-200:], output)
        assert job.uploaded(f"step/{job.id}/task-{task}.txt") == on_disk, output


# The job's work (the batch shell, exec'd) notes who sent each SIGTERM it gets, for a while
# after the first.
COUNTER = """import os, signal, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
open("started", "w").close()
first = None
while first is None or time.monotonic() < first + 2:
    info = signal.sigtimedwait({signal.SIGTERM}, 0.1)
    if info is not None:
        first = first or time.monotonic()
        try:
            sender = open(f"/proc/{info.si_pid}/comm").read().strip()
        except OSError:
            sender = "?"
        with open("terms.txt", "a") as terms:
            terms.write(f"{info.si_pid} {sender}\\n")
"""

COUNTED_JOB = """#!/bin/bash
#SBATCH --time=5 --job-name=terms
exec python3 counter.py
"""


def test_a_scancel_term_reaches_the_work_once(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    """slurmstepd sends SIGCONT and SIGTERM to every process of the step; allasrun adds none."""
    (tmp_path / "counter.py").write_text(COUNTER)
    job = _submit(stack, slurm, home, tmp_path, COUNTED_JOB)
    wait_for((tmp_path / "started").exists, timeout=60, what="the job to start")
    subprocess.run(["scancel", job], env={**user_env(stack, home), **slurm.env}, check=True)
    fields = slurm.wait(job, timeout=60)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    senders = (tmp_path / "terms.txt").read_text().splitlines()
    assert [line.split()[1] for line in senders] == ["slurmstepd"], (senders, output)
    assert "SIGTERM from Slurm reached the whole job; not sending it again" in output
    assert fields["JobState"] == "CANCELLED", output


def test_sigkill_of_allasrun_takes_the_grandchild_with_it(stack: Stack, home: Path, tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG reaches the direct child only; the rest of the job must not run on."""
    worker_file = tmp_path / "worker"
    work = f"sh -c 'echo $$ > {worker_file}; while :; do sleep 0.1; done' & wait"
    proc = subprocess.Popen(
        [*ALLASRUN, "--", "sh", "-c", work],
        env=app_credential_env(stack, home),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: worker_file.exists() and worker_file.read_text().strip(), timeout=60, what="the work")
    worker = psutil.Process(int(worker_file.read_text()))
    proc.kill()
    proc.wait(timeout=10)

    def gone() -> bool:
        try:
            return bool(worker.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    try:
        wait_for(gone, timeout=20, what=f"the grandchild (pid {worker.pid}) to die with allasrun")
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()

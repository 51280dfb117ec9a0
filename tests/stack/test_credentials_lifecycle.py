"""Job credentials on the real Keystone and Slurm: deleted only once no job can need them.

Every job here is submitted with `allasrun sbatch` as a user would, most of them held
(`--hold`) so that they stay queued for as long as the test needs; each test cancels what
it submitted. Keystone is asked directly whether a credential still exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allasrun import errors
from tests.stack.stackutil import (
    ALLASRUN,
    Slurm,
    Stack,
    allasrun,
    ec2_accesses,
    make_bucket,
    rclone,
    s3_endpoint,
    s3_env,
    user_env,
    wait_for,
)

HELD = "#!/bin/bash\n#SBATCH --time=5\ntrue\n"


@pytest.fixture
def submitted(slurm: Slurm) -> Iterator[list[str]]:
    """Job ids to cancel once the test is over, whatever happened."""
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *jobs], env={**os.environ, **slurm.env}, check=False)


def _env(stack: Stack, slurm: Slurm, home: Path, **extra: str) -> dict[str, str]:
    return {**user_env(stack, home, **extra), **slurm.env}


def _sbatch(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return allasrun(["sbatch", *args], env, cwd=cwd, timeout=timeout)


def _script(directory: Path, text: str = HELD, name: str = "job.sh") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def _records(home: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text()) for p in sorted((home / ".config" / "allasrun" / "jobs").glob("*.json"))
    ]


def _record_of(home: Path, job: str) -> dict[str, Any]:
    [found] = [r for r in _records(home) if r["job_id"] == job]
    return found


def _cancel(slurm: Slurm, *jobs: str) -> None:
    subprocess.run(["scancel", *jobs], env={**os.environ, **slurm.env}, check=True)
    for job in jobs:
        slurm.wait(job, timeout=60)


def _held_job(env: dict[str, str], cwd: Path, submitted: list[str], *args: str) -> str:
    result = _sbatch(env, cwd, "--hold", "--parsable", *args, str(_script(cwd)))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    submitted.append(job)
    return job


def test_a_failed_squeue_never_costs_a_queued_job_its_credential(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    job = _held_job(env, tmp_path, submitted)
    credential = _record_of(home, job)["id"]
    broken = tmp_path / "broken"
    broken.mkdir()
    squeue = broken / "squeue"
    squeue.write_text(
        "#!/bin/sh\necho 'squeue: error: Socket timed out on send/recv operation' >&2\nexit 1\n"
    )
    squeue.chmod(0o755)
    busy = _sbatch({**env, "PATH": f"{broken}:{env['PATH']}"}, tmp_path, "--hold", "--parsable", "job.sh")
    assert busy.returncode == 0, busy.stderr
    submitted.append(busy.stdout.strip())
    assert stack.app_credential_exists(credential)  # slurmctld did not answer: nothing is known
    _cancel(slurm, job)
    after = _sbatch(env, tmp_path, "--hold", "--parsable", "job.sh")
    submitted.append(after.stdout.strip())
    assert f"revoked application credential {credential} of finished job {job}" in after.stderr
    assert not stack.app_credential_exists(credential)


def test_a_job_of_another_cluster_keeps_its_credential(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    """Its id means nothing here (this cluster does not know it), and its cluster cannot be asked."""
    env = _env(stack, slurm, home)
    job = _held_job(env, tmp_path, submitted)
    path = next(p for p in (home / ".config" / "allasrun" / "jobs").glob("*.json") if job in p.read_text())
    elsewhere = {**json.loads(path.read_text()), "job_id": "987654", "cluster": "elsewhere"}
    path.write_text(json.dumps(elsewhere))  # as `allasrun sbatch -M elsewhere` records it
    _cancel(slurm, job)
    again = _sbatch(env, tmp_path, "--hold", "--parsable", "job.sh")
    assert again.returncode == 0, again.stderr
    submitted.append(again.stdout.strip())
    assert stack.app_credential_exists(elsewhere["id"])
    assert path.exists()


def test_quiet_sbatch_keeps_the_credential_of_its_job(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    result = _sbatch(env, tmp_path, "-Q", "--hold", str(_script(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # quiet, as sbatch -Q is
    [record] = _records(home)
    assert record["job_id"].isdigit()
    submitted.append(record["job_id"])
    assert slurm.job(record["job_id"])["JobState"] == "PENDING"
    assert stack.app_credential_exists(record["id"])


WAITED = """#!/bin/bash
#SBATCH --time=5
touch started
for i in $(seq 600); do [ -e release ] && break; sleep 0.1; done
"""


def test_wait_records_its_job_so_a_sweep_meanwhile_keeps_the_credential(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    script = _script(tmp_path, WAITED, "waited.sh")
    waiting = subprocess.Popen(
        [*ALLASRUN, "sbatch", "--wait", "--parsable", f"--output={tmp_path}/out.txt", str(script)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for((tmp_path / "started").exists, timeout=120, what="the waited-for job to start")
        [record] = _records(home)
        assert record["job_id"].isdigit()  # known while the job runs, not only after
        other = _sbatch(env, tmp_path, "--hold", "--parsable", str(_script(tmp_path)))  # sweeps
        submitted.append(other.stdout.strip())
        assert stack.app_credential_exists(record["id"])
    finally:
        (tmp_path / "release").touch()
        out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert out.strip() == record["job_id"]
    assert f"revoked application credential {record['id']}" in err
    assert not stack.app_credential_exists(record["id"])


def test_submissions_in_the_same_second_and_concurrent_sweeps(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    ended = [_held_job(env, tmp_path, submitted) for _ in range(3)]
    old = [_record_of(home, job)["id"] for job in ended]
    _cancel(slurm, *ended)
    argv = [*ALLASRUN, "sbatch", "--hold", "--parsable", str(_script(tmp_path))]
    both = [
        subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.communicate(timeout=120), p.returncode) for p in both]
    for (out, err), status in results:
        assert status == 0, err
        assert "Traceback" not in err
        submitted.append(out.strip())
    new = {_record_of(home, job)["id"] for job in submitted[-2:]}
    assert len(new) == 2  # two credentials, two names Keystone accepted
    assert not any(stack.app_credential_exists(credential) for credential in old)


CHAIN = """#!/bin/bash
#SBATCH --time=5
# Submits the next job with the credential it was handed: first as it is, then asking for less.
allasrun sbatch --hold child.sh > default.out 2> default.err; echo $? > default.rc
allasrun sbatch --queue-hours 0 --margin-hours 0 --parsable --hold child.sh > short.out 2> short.err
echo $? > short.rc
"""


def test_a_job_that_submits_another_neither_loses_nor_outlives_its_credential(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    _script(tmp_path, HELD, "child.sh")
    parent_run = _sbatch(
        env, tmp_path, "--queue-hours", "1", "--parsable", str(_script(tmp_path, CHAIN, "chain.sh"))
    )
    assert parent_run.returncode == 0, parent_run.stderr
    parent = parent_run.stdout.strip()
    submitted.append(parent)
    fields = slurm.wait(parent, timeout=180)
    output = (
        (tmp_path / f"slurm-{parent}.out").read_text() if (tmp_path / f"slurm-{parent}.out").exists() else ""
    )
    assert fields["ExitCode"] == "0:0", output
    # 72 h in the queue would outlive the parent's credential: refused, and nothing queued.
    assert (tmp_path / "default.rc").read_text().strip() == str(errors.EXIT_CONFIG)
    refusal = (tmp_path / "default.err").read_text()
    assert "before this job can end" in refusal and "Traceback" not in refusal
    assert (tmp_path / "default.out").read_text() == ""
    assert (tmp_path / "short.rc").read_text().strip() == "0", (tmp_path / "short.err").read_text()
    child = (tmp_path / "short.out").read_text().strip()
    submitted.append(child)
    parent_record, child_record = _record_of(home, parent), _record_of(home, child)
    assert parent_record["owned"] and not child_record["owned"]
    assert child_record["id"] == parent_record["id"]
    sweep = _sbatch(env, tmp_path, "--hold", "--parsable", "child.sh")  # the parent has ended
    submitted.append(sweep.stdout.strip())
    assert stack.app_credential_exists(parent_record["id"])  # the child holds it
    _cancel(slurm, child)
    last = _sbatch(env, tmp_path, "--hold", "--parsable", "child.sh")
    submitted.append(last.stdout.strip())
    assert not stack.app_credential_exists(parent_record["id"])
    assert (
        f"of finished job {child}, {parent}" in last.stderr
        or f"of finished job {parent}, {child}" in last.stderr
    )


def test_login_keeps_the_credential_a_queued_job_holds(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    first = allasrun(["login"], env)
    assert first.returncode == 0, first.stderr
    login_file = home / ".config" / "allasrun" / "credentials" / f"{env['OS_PROJECT_NAME']}.json"
    old = json.loads(login_file.read_text())["id"]
    job = _held_job(env, tmp_path, submitted)  # shares the login credential
    assert _record_of(home, job)["id"] == old
    second = allasrun(["login"], env)
    assert second.returncode == 0, second.stderr
    assert f"for job(s) {job}" in second.stdout
    assert stack.app_credential_exists(old)
    _cancel(slurm, job)
    third = allasrun(["login"], env)  # the job has ended: this login sweeps it
    assert third.returncode == 0, third.stderr
    assert not stack.app_credential_exists(old)
    assert _records(home) == []


def test_a_login_credential_that_ends_too_soon_is_refused(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    env = _env(stack, slurm, home)
    assert allasrun(["login", "--days", "1"], env).returncode == 0
    refused = _sbatch(env, tmp_path, "--hold", "--time=2-0", str(_script(tmp_path)))
    assert refused.returncode == errors.EXIT_CONFIG
    [line] = refused.stderr.splitlines()
    assert "before this job can end" in line and "allasrun login" in line
    assert refused.stdout == "" and _records(home) == []


STAGED = """#!/bin/bash
#SBATCH --time=5
#ALLAS stage-out result.txt {bucket}/%j/
echo "under allasrun: ${{ALLASRUN_DIR:+yes}}" > result.txt
"""


@pytest.mark.parametrize("how", ["export-none", "inherited-run"])
def test_the_job_runs_under_allasrun_and_stages_out(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str], how: str
) -> None:
    """`--export=NONE`, or submitted from a shell under allasrun: the job still gets its credential."""
    bucket = f"cred-life-{uuid.uuid4().hex[:10]}"
    make_bucket(stack, bucket)
    outer = tmp_path / "outer-run"  # an allasrun on the login node, not on the compute node
    inherited = {
        "ALLASRUN_DIR": str(outer),
        "ALLASRUN_ENV_FILE": str(outer / "env"),
        "ALLASRUN_NODE": "login-node",
        "RCLONE_CONFIG": str(outer / "rclone.conf"),
    }
    env = _env(stack, slurm, home, **(inherited if how == "inherited-run" else {}))
    options = ["--export=NONE"] if how == "export-none" else []
    script = _script(tmp_path, STAGED.format(bucket=bucket))
    result = _sbatch(env, tmp_path, "--parsable", *options, str(script))
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    submitted.append(job)
    fields = slurm.wait(job, timeout=180)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert fields["ExitCode"] == "0:0", output
    assert rclone(stack, tmp_path, "cat", f"ref:{bucket}/{job}/result.txt").stdout == "under allasrun: yes\n"


def test_an_s3_job_gets_keys_of_its_own_gone_when_the_wait_ends(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    """`allasrun sbatch --wait` with the password: the job stages over S3 with keys made for it
    alone (it writes the access id it was given into its result); once it is over they are deleted."""
    bucket = f"s3-job-{uuid.uuid4().hex[:8]}"
    make_bucket(stack, bucket)
    env = _env(stack, slurm, home, AWS_ENDPOINT_URL=s3_endpoint(stack))
    text = (
        f"#!/bin/bash\n#SBATCH --time=5\n#ALLAS stage-out out.txt s3allas:{bucket}/out.txt\n"
        'echo "$AWS_ACCESS_KEY_ID" > out.txt\n'
    )
    result = _sbatch(
        env, tmp_path, "--wait", "--parsable", f"--output={tmp_path}/slurm.txt", str(_script(tmp_path, text))
    )
    assert result.returncode == 0, result.stderr + (tmp_path / "slurm.txt").read_text()
    access = (tmp_path / "out.txt").read_text().strip()
    assert f"created S3 keys {access} for the job" in result.stderr
    assert f"deleted S3 keys {access}" in result.stderr
    assert rclone(stack, tmp_path, "cat", f"ref:{bucket}/out.txt").stdout.strip() == access
    assert access not in ec2_accesses(stack) and _records(home) == []


def test_a_lumi_o_job_whose_keys_die_before_its_time_limit_is_warned_at_submit(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, submitted: list[str]
) -> None:
    """LUMI-O keys cannot be renewed: sbatch says so before the queue wait, and still submits."""
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    env = {**s3_env(stack, home, keystone=False), **slurm.env}
    text = (
        f"#!/bin/bash\n#SBATCH --time=2:00:00\n#ALLAS stage-out out.txt lumi-o:lumi-results/out.txt\n"
        f"#ALLAS option keys-expire={expires}\ntrue\n"
    )
    result = _sbatch(env, tmp_path, "--hold", "--parsable", str(_script(tmp_path, text)))
    assert result.returncode == 0, result.stderr
    submitted.append(result.stdout.strip().split(";")[0])
    assert f"the S3 keys expire at {expires}" in result.stderr
    assert "before the job's time limit of 2h00m is over even if it starts now" in result.stderr
    undeclared = _script(tmp_path, text.replace(f"#ALLAS option keys-expire={expires}\n", ""), "plain.sh")
    again = _sbatch(env, tmp_path, "--hold", "--parsable", str(undeclared))
    assert again.returncode == 0, again.stderr
    submitted.append(again.stdout.strip().split(";")[0])
    assert "LUMI-O keys cannot be renewed, and allasrun cannot see when yours expire" in again.stderr

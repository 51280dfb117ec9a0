"""allasrun inside real Slurm jobs (stack/mini-slurm): directives found without --script."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from allasrun import errors
from tests.stack.stackutil import (
    Job,
    Slurm,
    Stack,
    allasrun,
    app_credential_env,
    make_bucket,
    put_object,
    rclone,
    secrets_of,
    user_env,
)

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
    job = Job(stack, slurm, tmp_path, JOB, user_env(stack, home))
    fields, output = job.finish()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), output
    assert job.uploaded(f"out/upper-{job.id}/result.txt") == "HELLO ALLAS\n"
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
    job = Job(stack, slurm, tmp_path, DEADLINE_JOB, user_env(stack, home))
    fields, output = job.finish(timeout=150)
    # allasrun stopped the command itself, half-way into the 1-minute limit (the lead is capped
    # at half the job's time), and uploaded: Slurm never had to kill the job.
    assert fields["JobState"] == "FAILED", output
    assert fields["ExitCode"] == "143:0", output
    assert "sending SIGTERM to the command" in output
    uploaded = job.uploaded(f"deadline/{job.id}/a.txt")
    assert uploaded == "written before the limit\n"


CANCELLED_JOB = """#!/bin/bash
#SBATCH --time=5
#ALLAS stage-out results/ slurm-data/cancelled/%j/
mkdir -p results
exec allasrun -- sh -c 'echo "partial result" > results/p.txt; touch started; exec sleep 3600'
"""


def test_scancelled_job_still_uploads(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    job = Job(stack, slurm, tmp_path, CANCELLED_JOB, user_env(stack, home))
    job.scancel()
    fields, output = job.finish()
    assert fields["JobState"] == "CANCELLED", output
    assert "exited with status 143" in output
    uploaded = job.uploaded(f"cancelled/{job.id}/p.txt")
    assert uploaded == "partial result\n"


STAGE_IN_FAILS = """#!/bin/bash
#SBATCH --time=5
#ALLAS stage-in slurm-data/not-there.txt
exec allasrun -- touch ran
"""


def test_job_whose_stage_in_fails_never_runs_its_command(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    job = Job(stack, slurm, tmp_path, STAGE_IN_FAILS, user_env(stack, home))
    fields, output = job.finish()
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "74:0"), output
    assert f"job {job.id} batch script:3" in output and "no object matches" in output
    assert not (tmp_path / "ran").exists()


def jobs_in_queue(slurm: Slurm, script: Path) -> list[str]:
    """Jobs of this script (by its name): other test files' jobs come and go meanwhile."""
    listing = subprocess.run(
        ["squeue", "-h", "-o", "%i", "--name", script.name],
        env={**os.environ, **slurm.env},
        capture_output=True,
        text=True,
        check=True,
    )
    return listing.stdout.split()


def sbatch(stack: Stack, slurm: Slurm, home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return allasrun(["sbatch", *args], {**user_env(stack, home), **slurm.env}, cwd=cwd)


def test_sbatch_refuses_a_bad_script(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/bin/bash\n#SBATCH --time=5\n#ALLAS stage-out results/\necho never\n")
    before = jobs_in_queue(slurm, script)
    result = sbatch(stack, slurm, home, tmp_path, "--parsable", str(script))
    assert result.returncode == errors.EXIT_USAGE
    assert f"{script}:3: stage-out takes SOURCE DESTINATION, got 1 argument(s)" in result.stderr
    assert result.stdout == ""
    assert jobs_in_queue(slurm, script) == before


def test_sbatch_refuses_missing_inputs(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "slurm-data")
    script = tmp_path / "needs.sh"
    script.write_text("#!/bin/bash\n#ALLAS stage-in slurm-data/not/there/\ntrue\n")
    before = jobs_in_queue(slurm, script)
    result = sbatch(stack, slurm, home, tmp_path, str(script))
    assert result.returncode == errors.EXIT_STAGE_IN
    assert f"{script}:2: stage-in allas:slurm-data/not/there/: no object matches" in result.stderr
    assert jobs_in_queue(slurm, script) == before


WRAPPED_JOB = """#!/bin/bash
#SBATCH --time=5
#ALLAS stage-in  slurm-data/in/words.txt
#ALLAS stage-out result.txt slurm-data/sbatch/%x-%j/
#ALLAS stage-out result.txt ${FRESH_BUCKET}/
# No allasrun word here: `allasrun sbatch` runs this batch step under allasrun.
env > job-env.txt
stat -c %a "$ALLASRUN_CREDENTIALS" > cred-mode.txt
sed -n 's/^ *"id": "\\(.*\\)",$/\\1/p' "$ALLASRUN_CREDENTIALS" > cred-id.txt
tr a-z A-Z < words.txt > result.txt
"""


def test_sbatch_hands_over_a_credential_not_a_password(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    make_bucket(stack, "slurm-data")
    put_object(stack, "slurm-data", "in/words.txt", b"hello allas\n")
    script = tmp_path / "job.sh"
    script.write_text(WRAPPED_JOB)
    fresh = f"fresh-{uuid.uuid4().hex[:12]}"
    submitted = allasrun(
        ["sbatch", "--parsable", f"--output={tmp_path}/out-%j.txt", str(script)],
        {**user_env(stack, home, FRESH_BUCKET=fresh), **slurm.env},
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert f"bucket {fresh} does not exist yet; stage-out will create it" in submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.isdigit()
    fields = slurm.wait(job_id)
    output = (tmp_path / f"out-{job_id}.txt").read_text()
    assert (fields["JobState"], fields["ExitCode"], fields["JobName"]) == ("COMPLETED", "0:0", "job.sh"), (
        output
    )
    uploaded = rclone(stack, tmp_path, "cat", f"ref:slurm-data/sbatch/job.sh-{job_id}/result.txt").stdout
    assert uploaded == "HELLO ALLAS\n"
    assert rclone(stack, tmp_path, "cat", f"ref:{fresh}/result.txt").stdout == "HELLO ALLAS\n"
    job_env = (tmp_path / "job-env.txt").read_text()
    assert "OS_PASSWORD" not in job_env
    for secret in secrets_of(stack):
        assert secret not in job_env and secret not in output
    assert (tmp_path / "cred-mode.txt").read_text().strip() == "600"
    credential = (tmp_path / "cred-id.txt").read_text().strip()
    assert stack.app_credential_exists(credential)  # the job ended; the next submission sweeps it
    wrap = ["--parsable", f"--output={tmp_path}/wrap-%j.txt", "--wrap", "rclone lsf allas:slurm-data/in"]
    again = sbatch(stack, slurm, home, tmp_path, *wrap)
    assert again.returncode == 0, again.stderr
    assert f"revoked application credential {credential} of finished job {job_id}" in again.stderr
    assert not stack.app_credential_exists(credential)
    wrap_job = again.stdout.strip()
    assert slurm.wait(wrap_job)["ExitCode"] == "0:0"
    assert "words.txt" in (tmp_path / f"wrap-{wrap_job}.txt").read_text()


MANY_TASKS = """#!/bin/bash
#SBATCH --ntasks=2 --time=5
#ALLAS stage-in  slurm-data/in/words.txt
#ALLAS stage-out out/ slurm-data/srun/%j/
mkdir -p out
out='out/task-$SLURM_PROCID.txt'
work="rclone lsf allas:slurm-data/in > $out; cat words.txt >> $out"
work="$work; echo \\$ST_AUTH > auth-\\$SLURM_PROCID.txt"
srun -n 2 allasrun -- sh -c "$work"
"""


@pytest.mark.exclusive
def test_srun_tasks_share_one_keeper_and_stage_once(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    make_bucket(stack, "slurm-data")
    put_object(stack, "slurm-data", "in/words.txt", b"hello allas\n")
    before = stack.allasrun_logins()
    job = Job(stack, slurm, tmp_path, MANY_TASKS, app_credential_env(stack, home))
    fields, output = job.finish()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), output
    assert stack.allasrun_logins() - before == 1, output  # one login for the node, not one per task
    assert output.count("stage-in:") == 1 and output.count("stage-out:") == 1, output
    for rank in (0, 1):
        uploaded = job.uploaded(f"srun/{job.id}/task-{rank}.txt")
        assert uploaded == "words.txt\nhello allas\n", output
    # The follower re-authenticates at the leader's token service.
    services = {(tmp_path / f"auth-{rank}.txt").read_text() for rank in (0, 1)}
    assert len(services) == 1 and services.pop().startswith("http://127.0.0.1:"), output


WARNED_JOB = """#!/bin/bash
#SBATCH --time=10
#ALLAS stage-out results/ slurm-data/warned/%j/
#ALLAS option grace=5
mkdir -p results
exec allasrun -- sh -c 'trap "" USR1; echo "checkpoint" > results/c.txt; touch started; exec sleep 3600'
"""


def test_slurm_warning_signal_starts_stage_out(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    job = Job(stack, slurm, tmp_path, WARNED_JOB, user_env(stack, home))
    # What `--signal=B:USR1@N` sends near the time limit, delivered now.
    job.scancel("--signal=USR1", "--batch")
    fields, output = job.finish(timeout=60)
    assert "SIGUSR1 from Slurm" in output
    assert fields["ExitCode"] == "143:0", output  # the command ignores USR1: allasrun's TERM ended it
    assert job.uploaded(f"warned/{job.id}/c.txt") == "checkpoint\n"


def test_sbatch_password_env_keeps_the_seeds_way(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    make_bucket(stack, "slurm-data")
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH --time=5\n#ALLAS stage-out r.txt slurm-data/pwenv/%j/\n"
        'echo "${ALLASRUN_CREDENTIALS:-none}" > r.txt\n'
    )
    submitted = sbatch(stack, slurm, home, tmp_path, "--password-env", "--parsable", str(script))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    fields = slurm.wait(job_id)
    output = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert fields["ExitCode"] == "0:0", output
    assert "with password from OS_PASSWORD" in output  # the job authenticated with the password
    assert rclone(stack, tmp_path, "cat", f"ref:slurm-data/pwenv/{job_id}/r.txt").stdout == "none\n"
    assert not list((home / ".config" / "allasrun" / "jobs").glob("*.json"))


CREDENTIAL_CHECK = """#!/bin/bash
#SBATCH --time=5
# The job looks its own credential up in Keystone (a restricted credential may read itself).
id=$(sed -n 's/.*"id": "\\(.*\\)".*/\\1/p' "$ALLASRUN_CREDENTIALS")
echo "$id" > cred-id.txt
. "$ALLASRUN_ENV_FILE"
curl -s -o /dev/null -w '%{http_code}\\n' -H "X-Auth-Token: $OS_AUTH_TOKEN" \\
  "$OS_AUTH_URL/users/$USER_ID/application_credentials/$id" > during.txt
"""


def test_sbatch_wait_revokes_the_credential_when_the_job_ends(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_text(CREDENTIAL_CHECK)
    env = {**user_env(stack, home, USER_ID=stack.env["MINI_ALLAS_USER_ID"]), **slurm.env}
    result = allasrun(["sbatch", "--wait", "--parsable", str(script)], env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    credential = (tmp_path / "cred-id.txt").read_text().strip()
    assert credential
    assert (tmp_path / "during.txt").read_text().strip() == "200"  # it existed while the job ran
    assert f"revoked application credential {credential}" in result.stderr
    assert not stack.app_credential_exists(credential)  # and is gone once the job has ended


def test_sbatch_takes_the_project_from_the_script(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    """No OS_PROJECT_NAME, only `#ALLAS option project=`: the password authenticates for it."""
    make_bucket(stack, "slurm-data")
    put_object(stack, "slurm-data", "in/words.txt", b"hello allas\n")
    script = tmp_path / "project.sh"
    script.write_text(
        f"#!/bin/bash\n#ALLAS option project={stack.env['OS_PROJECT_NAME']}\n"
        "#ALLAS stage-in slurm-data/in/words.txt\ncat words.txt\n"
    )
    env = {**user_env(stack, home), **slurm.env}
    del env["OS_PROJECT_NAME"]
    result = allasrun(
        ["sbatch", "--wait", "--parsable", f"--output={tmp_path}/out.txt", str(script)],
        env,
        cwd=tmp_path,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").read_text().count("hello allas") == 1

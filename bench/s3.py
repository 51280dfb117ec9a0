"""allasrun's S3 staging against rclone's S3 backend, the aws CLI (and s5cmd, if on PATH) and curl.

Issue 12's targets, the same cases as `bench/staging.py`: (a) 2,000 files of 16 KiB: <= 0.8x the
best peer's time in each direction; (b) one 1 GiB file: <= 1.5x a plain curl in each direction,
allasrun verifying as always. Every tool uses the stack's EC2 keys and S3 endpoint (Swift's
s3api, or radosgw's with MINI_ALLAS_ENV pointing at mini-rgw's env), `THREADS` transfers at a
time, and writes to a fresh prefix or an empty directory. allasrun runs on S3 keys alone, as a
Roihu user would: no Keystone at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from allasrun.staging.s3 import S3Store
from bench.staging import THREADS, complete, purge, run_cases, tested_code, timed
from tests.stack.stackutil import ALLASRUN, Stack, s3_endpoint

UNSIGNED = "x-amz-content-sha256: UNSIGNED-PAYLOAD"


class S3Tools:
    """How each tool uploads a directory (or file) and downloads a prefix (or object) over S3."""

    def __init__(self, stack: Stack, work: Path) -> None:
        self.work = work
        self.endpoint = s3_endpoint(stack)
        self.access, self.secret = stack.env["MINI_ALLAS_EC2_ACCESS"], stack.env["MINI_ALLAS_EC2_SECRET"]
        (work / "rclone.conf").write_text(
            f"[s3]\ntype = s3\nprovider = Ceph\nenv_auth = false\naccess_key_id = {self.access}\n"
            f"secret_access_key = {self.secret}\nendpoint = {self.endpoint}\nforce_path_style = true\n"
        )
        (work / "aws-config").write_text(
            f"[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n"
            f"    max_concurrent_requests = {THREADS}\n"
        )
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(work),
            "AWS_ACCESS_KEY_ID": self.access,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "S3_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": str(work / "aws-config"),
            "ALLASRUN_CACHE_DIR": str(work / "no-cache"),
            **tested_code(),
        }
        self.store = S3Store(self.endpoint, self.access, self.secret)

    def clean(self) -> None:
        purge(self.work / "rclone.conf", self.env, ["s3:bench-s3-a", "s3:bench-s3-b"])

    def bucket(self, name: str) -> str:
        self.store.ensure_bucket(name)
        return name

    def allasrun(self, header: str, name: str) -> float:
        script = self.work / f"{name}.sh"
        script.write_text(f"#!/bin/sh\n{header}\ntrue\n")  # allasrun's own number at a time
        return timed([*ALLASRUN, "run", str(script)], self.env, self.work)

    def rclone(self, source: str, target: str) -> float:
        flags = ["--transfers", str(THREADS), "--checkers", str(THREADS)]
        config = str(self.work / "rclone.conf")
        return timed(["rclone", "--config", config, "copy", *flags, source, target], self.env, self.work)

    def aws(self, *args: str) -> float:
        return timed(["aws", "--endpoint-url", self.endpoint, "s3", *args], self.env, self.work)

    def s5cmd(self, *args: str) -> float:
        return timed(["s5cmd", "--numworkers", str(THREADS), *args], self.env, self.work)

    def curl(self, *args: str) -> float:
        sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{self.access}:{self.secret}"]
        return timed(["curl", "-sf", *sigv4, "-H", UNSIGNED, *args], self.env, self.work)


def many_files(tools: S3Tools, count: int) -> list[tuple[str, float]]:
    data = tools.work / "many"
    data.mkdir()
    for n in range(count):
        (data / f"f{n:05d}.bin").write_bytes(os.urandom(16 * 1024))
    bucket = tools.bucket("bench-s3-a")
    rows = [
        ("upload allasrun", tools.allasrun(f"#ALLAS stage-out many/ s3allas:{bucket}/allasrun/", "out-a")),
        ("upload rclone", tools.rclone(str(data), f"s3:{bucket}/rclone")),
        ("upload aws", tools.aws("cp", "--recursive", "--quiet", str(data), f"s3://{bucket}/aws/")),
    ]
    if shutil.which("s5cmd"):
        rows.append(("upload s5cmd", tools.s5cmd("cp", f"{data}/", f"s3://{bucket}/s5cmd/")))
    rows += [
        (
            "download allasrun",
            tools.allasrun(f"#ALLAS stage-in s3allas:{bucket}/rclone/ in-allasrun/", "in-a"),
        ),
        ("download rclone", tools.rclone(f"s3:{bucket}/rclone", str(tools.work / "in-rclone"))),
        ("download aws", tools.aws("cp", "--recursive", "--quiet", f"s3://{bucket}/rclone/", "in-aws/")),
    ]
    if shutil.which("s5cmd"):
        rows.append(("download s5cmd", tools.s5cmd("cp", f"s3://{bucket}/rclone/*", "in-s5cmd/")))
    complete(
        tools.work,
        count,
        ["in-allasrun", "in-rclone", "in-aws", *(["in-s5cmd"] if shutil.which("s5cmd") else [])],
    )
    return rows


def one_big(tools: S3Tools, size: int) -> list[tuple[str, float]]:
    big = tools.work / "big"
    big.mkdir()
    with open(big / "big.bin", "wb") as out:
        for _ in range(size // (64 * 1024 * 1024)):
            out.write(os.urandom(64 * 1024 * 1024))
    bucket = tools.bucket("bench-s3-b")
    url = f"{tools.endpoint}/{bucket}"
    return [
        (
            "upload allasrun",
            tools.allasrun(f"#ALLAS stage-out big/big.bin s3allas:{bucket}/allasrun/", "out-b"),
        ),
        ("upload rclone", tools.rclone(str(big / "big.bin"), f"s3:{bucket}/rclone")),
        ("upload aws", tools.aws("cp", "--quiet", str(big / "big.bin"), f"s3://{bucket}/aws/big.bin")),
        ("upload curl", tools.curl("-T", str(big / "big.bin"), f"{url}/curl/big.bin")),
        ("download allasrun", tools.allasrun(f"#ALLAS stage-in s3allas:{bucket}/curl/big.bin in-b/", "in-b")),
        ("download rclone", tools.rclone(f"s3:{bucket}/curl/big.bin", str(tools.work / "in-rclone-b"))),
        ("download aws", tools.aws("cp", "--quiet", f"s3://{bucket}/curl/big.bin", "aws-big.bin")),
        ("download curl", tools.curl("-o", "curl-big.bin", f"{url}/curl/big.bin")),
    ]


def main() -> None:
    peers = "rclone,aws,s5cmd" if shutil.which("s5cmd") else "rclone,aws"
    targets = (
        {"upload": (peers, 0.8), "download": (peers, 0.8)},
        {"upload": ("curl", 1.5), "download": ("curl", 1.5)},
    )
    endpoints = ("MINI_RGW_S3_URL", "MINI_ALLAS_SWIFT_URL")  # s3_endpoint's, either back end
    run_cases(__doc__ or "", S3Tools, many_files, one_big, targets, endpoints, " over S3")


if __name__ == "__main__":
    main()

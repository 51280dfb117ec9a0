"""Objects other tools leave in Allas stage in, each verified as far as the server vouches for it.

Uploaded the way the real tools do: a folder marker PUT (the Allas web UI's "create folder"),
`rclone copyto --swift-chunk-size` (a DLO: a zero-byte manifest with `X-Object-Manifest` and
segments in `<bucket>_segments`), `swift upload --use-slo`, and on radosgw an S3 multipart
upload (rclone's s3 backend), whose ETag is `md5-N`. And a stalled connection: a SIGTERM during
stage-in ends allasrun within seconds and leaves no `.part` file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, urlparse

import pytest

from allasrun import errors
from tests.stack.corruptproxy import CorruptingProxy
from tests.stack.stackutil import ALLASRUN, Stack, make_bucket, put_object, rclone, user_env, wait_for
from tests.stack.test_staging import job, run_job

BUCKET = "foreign-objects"
MIB = 1024 * 1024


def put_marker(stack: Stack, name: str, content_type: Optional[str]) -> None:
    """A zero-byte `name/` object, as the web UI, Horizon or Cyberduck make a folder."""
    session = stack.user_session()
    headers = {"X-Auth-Token": session.get_token() or ""}
    if content_type:
        headers["Content-Type"] = content_type
    response = session.put(f"{stack.env['OS_STORAGE_URL']}/{BUCKET}/{quote(name)}", data=b"", headers=headers)
    assert response.status_code == 201, response.text


def swift_cli(stack: Stack, cwd: Path, *args: str) -> None:
    env = {**os.environ, **{k: v for k, v in stack.env.items() if k.startswith("OS_")}}
    subprocess.run(["/usr/bin/swift", *args], env=env, cwd=cwd, check=True, capture_output=True, timeout=300)


def s3_multipart(stack: Stack, workdir: Path, source: Path, name: str) -> None:
    """Upload through radosgw's S3 API in 5 MiB parts (rclone's s3 backend, the EC2 keys)."""
    conf = workdir / "s3-rclone.conf"
    conf.write_text(
        "[s3]\ntype = s3\nprovider = Ceph\n"
        f"access_key_id = {stack.env['MINI_ALLAS_EC2_ACCESS']}\n"
        f"secret_access_key = {stack.env['MINI_ALLAS_EC2_SECRET']}\n"
        f"endpoint = {stack.env['MINI_RGW_S3_URL']}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 refuses a CA bundle
    subprocess.run(
        [
            "rclone",
            "--config",
            str(conf),
            "copyto",
            "--s3-upload-cutoff",
            "5M",
            "--s3-chunk-size",
            "5M",
            str(source),
            f"s3:{BUCKET}/{name}",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


class Uploaded:
    """What the module's fixture put in the bucket, under a prefix of its own."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root, self.prefix = root, prefix

    def local(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


@pytest.fixture(scope="module")
def uploaded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    """Folder markers, a DLO, an SLO, a plain object and (radosgw) an S3 multipart object."""
    root = tmp_path_factory.mktemp("foreign")
    prefix = uuid.uuid4().hex[:10]  # each xdist worker and each run its own objects
    make_bucket(stack, BUCKET)
    data = {name: os.urandom(size) for name, size in [("dlo.bin", 3 * MIB + 4321), ("slo.bin", 3 * MIB + 99)]}
    data["plain.txt"] = b"plain\n"
    data["a.txt"], data["x.txt"] = b"in a folder\n", b"in a subfolder\n"
    data["mp.bin"] = os.urandom(11 * MIB + 777)
    for name, content in data.items():
        (root / name).write_bytes(content)
    put_marker(stack, f"{prefix}/folder/", "application/directory")  # the web UI's
    put_marker(stack, f"{prefix}/folder/sub/", None)  # an S3 console's: no content type
    put_object(stack, BUCKET, f"{prefix}/folder/a.txt", data["a.txt"])
    put_object(stack, BUCKET, f"{prefix}/folder/sub/x.txt", data["x.txt"])
    put_marker(stack, f"{prefix}/empty/", "application/directory")
    put_object(stack, BUCKET, f"{prefix}/objects/plain.txt", data["plain.txt"])
    rclone(
        stack,
        root,
        "copyto",
        "--swift-chunk-size",
        "1M",
        str(root / "dlo.bin"),
        f"ref:{BUCKET}/{prefix}/objects/dlo.bin",
    )
    swift_cli(
        stack,
        root,
        "upload",
        "--use-slo",
        "-S",
        "1048576",
        "--object-name",
        f"{prefix}/objects/slo.bin",
        BUCKET,
        "slo.bin",
    )
    if stack.backend == "rgw":
        s3_multipart(stack, root, root / "mp.bin", f"{prefix}/objects/mp.bin")
    return Uploaded(root, prefix)


def report(workdir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return document


def by_name(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["source"].rpartition("/")[2]: t for t in document["transfers"]}


def test_folder_markers_are_skipped(stack: Stack, home: Path, tmp_path: Path, uploaded: Uploaded) -> None:
    p = uploaded.prefix
    script = job(
        tmp_path,
        f"""
#ALLAS stage-in {BUCKET}/{p}/folder/ in/
#ALLAS stage-in {BUCKET}/{p}/folder  whole/
#ALLAS stage-in {BUCKET}/{p}/empty/  empty/
#ALLAS option report=report.json
""",
        "test -d empty && touch ran",
    )
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran").exists()
    for top in ("in", "whole"):
        assert (tmp_path / top / "a.txt").read_bytes() == uploaded.local("a.txt")
        assert (tmp_path / top / "sub" / "x.txt").read_bytes() == uploaded.local("x.txt")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == []
    transfers = report(tmp_path)["transfers"]
    assert sorted(t["source"].rpartition("/")[2] for t in transfers) == ["a.txt", "a.txt", "x.txt", "x.txt"]
    assert {t["verified"] for t in transfers} == {"md5"}


def test_large_and_foreign_objects_are_verified(
    stack: Stack, home: Path, tmp_path: Path, uploaded: Uploaded
) -> None:
    script = job(
        tmp_path,
        f"#ALLAS stage-in {BUCKET}/{uploaded.prefix}/objects/ in/\n#ALLAS option report=report.json",
    )
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    expected = {"plain.txt": "md5", "dlo.bin": "md5 per segment", "slo.bin": "md5 per segment"}
    if stack.backend == "rgw":
        expected["mp.bin"] = "md5 per part"  # S3 multipart: ETag md5-3, parts of 5 MiB
    rows = by_name(report(tmp_path))
    assert {name: row["verified"] for name, row in rows.items()} == expected
    for name in expected:
        content = uploaded.local(name)
        assert (tmp_path / "in" / name).read_bytes() == content
        assert (rows[name]["bytes"], rows[name]["md5"]) == (len(content), hashlib.md5(content).hexdigest())
    # A re-run finds each one identical, by the same check.
    again = run_job(stack, home, script)
    assert again.returncode == 0, again.stderr
    rows = by_name(report(tmp_path))
    assert {name: (row["status"], row["verified"]) for name, row in rows.items()} == {
        name: ("skipped", how) for name, how in expected.items()
    }


def test_a_damaged_dlo_segment_is_caught(
    stack: Stack, home: Path, tmp_path: Path, uploaded: Uploaded
) -> None:
    storage = urlparse(stack.env["OS_STORAGE_URL"])
    assert storage.port is not None
    with CorruptingProxy(storage.port, b"objects/dlo.bin") as proxy:
        script = job(
            tmp_path,
            f"#ALLAS stage-in {BUCKET}/{uploaded.prefix}/objects/dlo.bin got/\n#ALLAS option retries=2",
        )
        result = run_job(stack, home, script, "--storage-url", f"http://127.0.0.1:{proxy.port}{storage.path}")
    assert proxy.hits == 2, result.stderr  # both attempts were damaged, and both were caught
    assert result.returncode == errors.EXIT_STAGE_IN, result.stderr
    assert "dlo.bin: segment 0 has MD5" in result.stderr
    assert not (tmp_path / "ran").exists()
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "got" / "dlo.bin").exists()


@pytest.mark.parametrize("stall", ["listing", "download"])
def test_sigterm_during_a_stalled_stage_in(
    stack: Stack, home: Path, tmp_path: Path, uploaded: Uploaded, stall: str
) -> None:
    """The server stops answering, mid-listing or mid-body; Slurm's SIGTERM still ends the run at once."""
    name = f"{uploaded.prefix}/stall/big.bin"
    put_object(stack, BUCKET, name, os.urandom(4 * MIB))
    storage = urlparse(stack.env["OS_STORAGE_URL"])
    assert storage.port is not None
    marker, stall_after = (BUCKET.encode(), 0) if stall == "listing" else (b"stall/big.bin", MIB)
    with CorruptingProxy(storage.port, marker, stall_after=stall_after) as proxy:
        script = job(tmp_path, f"#ALLAS stage-in {BUCKET}/{name} in/\n#ALLAS option report=report.json")
        run = subprocess.Popen(
            [*ALLASRUN, "run", "--storage-url", f"http://127.0.0.1:{proxy.port}{storage.path}", str(script)],
            env=user_env(stack, home),
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(proxy.stalled.is_set, timeout=60, what="the proxy to stall a response")
        if stall == "download":
            wait_for(lambda: list(tmp_path.rglob("*.part")), timeout=30, what="a partial download")
        time.sleep(0.5)  # well inside the stall
        run.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            _, stderr = run.communicate(timeout=60)
        finally:
            if run.poll() is None:  # it hung: leave no process behind
                run.kill()
                run.wait()
        took = time.monotonic() - signalled
    assert took < 20, f"{took:.1f} s after SIGTERM"  # a hang would be the read timeout, minutes
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert "stage-in interrupted by signal 15" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "ran").exists()
    assert not list(tmp_path.rglob("*.part"))
    assert [t["status"] for t in report(tmp_path)["transfers"]] == ["cancelled"]


def test_a_put_metadata_companions_stay_out_unless_asked(stack: Stack, home: Path, tmp_path: Path) -> None:
    """What a-put leaves: `<object>_ameta` beside each object; a file merely named `*_ameta` is data."""
    make_bucket(stack, BUCKET)
    prefix = f"aput-{uuid.uuid4().hex[:8]}"
    ameta = b"user: someone\nhost: puhti-login11\ninput: results\ncompression: none\n"
    objects = {"results.tar": b"tar", "results.tar_ameta": ameta, "notes_ameta": b"mine\n", "r.txt": b"r\n"}
    for name, data in objects.items():
        put_object(stack, BUCKET, f"{prefix}/{name}", data)
    script = job(
        tmp_path,
        f"#ALLAS stage-in {BUCKET}/{prefix}/ plain/\n"
        f"#ALLAS stage-in {BUCKET}/{prefix}/ asked/ --ameta\n"
        f"#ALLAS stage-in {BUCKET}/{prefix}/*_ameta globbed/\n"
        f"#ALLAS stage-in {BUCKET}/{prefix}/results.tar_ameta named/",
    )
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr

    def got(folder: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (tmp_path / folder).iterdir()}

    assert got("plain") == {k: v for k, v in objects.items() if k != "results.tar_ameta"}
    assert got("asked") == objects
    assert got("globbed") == {"results.tar_ameta": ameta, "notes_ameta": b"mine\n"}
    assert got("named") == {"results.tar_ameta": ameta}
    assert f"allas:{BUCKET}/{prefix}/: 1 a-put metadata object(s) (*_ameta) left out" in result.stderr

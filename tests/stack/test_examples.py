"""Every script in slurm-examples/, submitted with `allasrun sbatch` to the real Slurm."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Optional

import pytest

from tests.stack.stackutil import (
    ROOT,
    Slurm,
    Stack,
    allasrun,
    make_bucket,
    put_object,
    rclone,
    s3_env,
    user_env,
)

BUCKET = "examples-bucket"
DATA = b"pear\napple\nfig\n"


@pytest.fixture(scope="module")
def inputs(stack: Stack) -> None:
    make_bucket(stack, BUCKET)
    put_object(stack, BUCKET, "dataset34/data2.txt", DATA)
    archive = io.BytesIO()  # as `a-put dataset34` stores it: members under dataset34/
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("dataset34/data2.txt")
        info.size = len(DATA)
        tar.addfile(info, io.BytesIO(DATA))
    put_object(stack, BUCKET, "dataset34.tar", archive.getvalue())
    listing = "-rw-r--r-- 1 someone pr 15 Dec  1 12:00 dataset34/data2.txt\n"
    put_object(
        stack, BUCKET, "dataset34.tar_ameta", f"input: dataset34\ncompression: none\n{listing}".encode()
    )
    for task in (1, 2, 3):
        put_object(stack, BUCKET, f"slices/{task}/input.txt", b"line\n" * task)


def submit(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path, name: str, env: Optional[dict[str, str]] = None
) -> str:
    script = tmp_path / name
    shutil.copy(ROOT / "slurm-examples" / name, script)
    env = {**(env or user_env(stack, home)), "BUCKET": BUCKET, **slurm.env}
    result = allasrun(["sbatch", "--parsable", name], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    slurm.wait_gone(job, timeout=150)
    return job


def cat(stack: Stack, tmp_path: Path, name: str) -> str:
    return rclone(stack, tmp_path, "cat", f"ref:{BUCKET}/{name}").stdout


def untar(stack: Stack, tmp_path: Path, name: str, into: Path) -> None:
    """An a-put object restored as a-get does: `rclone cat | [zstdmt -d |] tar -x -o`."""
    data = subprocess.run(
        ["rclone", "--config", str(tmp_path / "test-rclone.conf"), "cat", f"ref:{BUCKET}/{name}"],
        capture_output=True,
        check=True,
    ).stdout
    if name.endswith(".zst"):
        data = subprocess.run(["zstdmt", "-d"], input=data, capture_output=True, check=True).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-o"], input=data, cwd=into, check=True)


@pytest.mark.usefixtures("inputs")
def test_a_commands_example(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    """With stand-ins for a-get and a-put on PATH (tests/stack/a-commands: CI cannot fetch the real ones)."""
    env = user_env(stack, home)
    env["PATH"] = f"{ROOT / 'tests' / 'stack' / 'a-commands'}:{env['PATH']}"
    job = submit(stack, slurm, home, tmp_path, "a-commands.sh", env)
    assert "compression: none" in cat(stack, tmp_path, f"results34-{job}.tar_ameta"), _logs(tmp_path)
    untar(stack, tmp_path, f"results34-{job}.tar", tmp_path / "restored")
    assert (tmp_path / "restored" / "results34" / "sorted.txt").read_text() == "apple\nfig\npear\n"


@pytest.mark.usefixtures("inputs")
def test_pack_unpack_example(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    job = submit(stack, slurm, home, tmp_path, "pack-unpack.sh")
    log = _logs(tmp_path)
    assert "the 1 file(s) dataset34.tar_ameta lists arrived whole" in log, log
    assert "compression: zstd" in cat(stack, tmp_path, f"packed/{job}/results34.tar.zst_ameta"), log
    untar(stack, tmp_path, f"packed/{job}/results34.tar.zst", tmp_path / "restored")
    assert (tmp_path / "restored" / "results34" / "sorted.txt").read_text() == "apple\nfig\npear\n"


@pytest.mark.usefixtures("inputs")
def test_rclone_style_example(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    job = submit(stack, slurm, home, tmp_path, "rclone-style.sh")
    assert cat(stack, tmp_path, f"rclone-results34/{job}/sorted.txt") == "apple\nfig\npear\n", _logs(tmp_path)


@pytest.mark.usefixtures("inputs")
def test_array_example_stages_three_slices(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    job = submit(stack, slurm, home, tmp_path, "array.sh")
    for task in (1, 2, 3):
        assert cat(stack, tmp_path, f"slices-out/{job}_{task}/lines.txt").strip() == str(task), _logs(
            tmp_path
        )


@pytest.mark.usefixtures("inputs")
def test_many_tasks_example(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    job = submit(stack, slurm, home, tmp_path, "many-tasks.sh")
    for rank in (0, 1):
        assert cat(stack, tmp_path, f"tasks/{job}/part-{rank}.txt") == "3\ndata2.txt\n", _logs(tmp_path)
    log = next(tmp_path.glob("tasks_*.txt")).read_text()
    assert log.count("stage-in:") == 1 and log.count("stage-out:") == 1, log


@pytest.mark.usefixtures("inputs")
def test_deadline_example_uploads_before_the_limit(
    stack: Stack, slurm: Slurm, home: Path, tmp_path: Path
) -> None:
    job = submit(stack, slurm, home, tmp_path, "deadline.sh")
    assert cat(stack, tmp_path, f"deadline/{job}/latest.txt").startswith("state after step "), _logs(tmp_path)
    assert "sending SIGTERM to the command" in next(tmp_path.glob("deadline_*.txt")).read_text()


@pytest.mark.usefixtures("inputs")
def test_s3_roihu_example_needs_no_keystone(stack: Stack, slurm: Slurm, home: Path, tmp_path: Path) -> None:
    """Only S3 keys, in the ~/.s3cfg allas-conf writes (the lab's endpoint by AWS_ENDPOINT_URL)."""
    (home / ".s3cfg").write_text(
        f"[allas-project_2000178]\naccess_key = {stack.env['MINI_ALLAS_EC2_ACCESS']}\n"
        f"secret_key = {stack.env['MINI_ALLAS_EC2_SECRET']}\nhost_base = a3s.fi\nuse_https = True\n"
    )
    env = s3_env(stack, home, keystone=False)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    job = submit(stack, slurm, home, tmp_path, "s3-roihu.sh", env)
    assert cat(stack, tmp_path, f"s3-results34/{job}/sorted.txt") == "apple\nfig\npear\n", _logs(tmp_path)
    assert cat(stack, tmp_path, f"s3-results34/{job}/listing.txt") == "data2.txt\n", _logs(tmp_path)
    assert "authenticated" not in _logs(tmp_path)


def _logs(directory: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(directory.glob("*.txt")))

"""One rclone copy longer than a token: it survives with an application credential.

With only a pinned token (a password with --no-job-credential, or OS_AUTH_TOKEN) rclone
cannot re-authenticate, and the copy fails once the token it started with expires: the
second run shows that, side by side with the first, so the README's claim is tested.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.stack.stackutil import ALLASRUN, Stack, make_bucket, rclone, user_env

FILES = 10
SIZE = 1024 * 1024
RATE = "100k"  # 10 MiB at 100 KiB/s: about 100 s, longer than the stack's 90 s token


def copy_command(source: Path, prefix: str, run: str) -> list[str]:
    return [
        *ALLASRUN,
        *(["--no-job-credential"] if prefix == "pinned" else []),
        "--",
        "rclone",
        "copy",
        "--bwlimit",
        RATE,
        "--transfers",
        "1",
        "--checkers",
        "1",
        "--retries",
        "1",
        "--low-level-retries",
        "2",
        str(source),
        f"allas:copy-bucket/{run}/{prefix}",
    ]


def test_long_copy_survives_with_application_credential(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "copy-bucket")
    source = tmp_path / "data"
    source.mkdir()
    for n in range(FILES):
        (source / f"part-{n:02d}.bin").write_bytes(bytes([n]) * SIZE)
    run = uuid.uuid4().hex  # a fresh destination: rclone would skip what an earlier run left
    homes = {prefix: home / prefix for prefix in ("renewing", "pinned")}
    for path in homes.values():
        path.mkdir()
    runs = {
        prefix: subprocess.Popen(
            copy_command(source, prefix, run),
            env=user_env(stack, homes[prefix]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for prefix in homes
    }
    outputs = {prefix: proc.communicate(timeout=600)[0] for prefix, proc in runs.items()}

    assert runs["renewing"].returncode == 0, outputs["renewing"]
    copied = rclone(stack, tmp_path, "lsf", f"ref:copy-bucket/{run}/renewing").stdout.split()
    assert copied == [f"part-{n:02d}.bin" for n in range(FILES)]

    # The pinned copy got going, then failed once its token expired (Swift answers 401, or
    # closes the connection mid-upload, which rclone reports as EOF).
    assert runs["pinned"].returncode != 0, outputs["pinned"]
    pinned = rclone(stack, tmp_path, "lsf", f"ref:copy-bucket/{run}/pinned").stdout.split()
    assert 0 < len(pinned) < FILES, outputs["pinned"]

"""Small files out in tar bundles, through the real Swift (or radosgw) bulk upload.

A stage-out of many small files sends them as tars that the server unpacks into objects
(`PUT <container>/<folder>?extract-archive=tar`). What is checked here is what a user would
check: every object is there under its own name with the file's bytes, read back by Debian's
rclone; a second run skips them all as identical; and each way bundling can go wrong ends with
every file stored anyway, one by one, and the reason in the log. The wrongs are real: a relay
between allasrun and the store hides the bulk middleware (the query renamed, so the server
takes the request for a plain container update) or spoils one member's bytes inside a bundle;
a name the tar cannot carry and a name the server refuses are the servers' own answers.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from urllib.parse import urlparse

from tests.stack.stackutil import Stack, allasrun, rclone, user_env
from tests.stack.tcpproxy import Relay, close_write, forward, recv, send

BUCKET = "bundles"
FILES = 120  # small files: with 8 threads, 8 bundles of 15
LONG = "l" * 120  # a name over the 100 bytes of a tar header's name field
SPOIL = b"SPOIL-THIS-MEMBER"  # in one file's bytes: the relay flips them inside its bundle


class RewritingRelay(Relay):
    """Forwards to the store, replacing `old` by `new` (same length) in what allasrun sends.

    At most `times` replacements (None: all). A run of bytes that may be the start of `old` is
    held back until the next read shows whether it is; nothing else is delayed.
    """

    def __init__(self, upstream_port: int, old: bytes, new: bytes, times: int | None = None) -> None:
        super().__init__(upstream_port)
        assert len(old) == len(new)
        self.old, self.new, self.left = old, new, times
        self.replaced = 0
        self._count = threading.Lock()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
        threading.Thread(target=forward, args=(server, client), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket) -> None:
        held = b""
        while data := recv(source):
            data = self._replace(held + data)
            keep = next((n for n in range(len(self.old) - 1, 0, -1) if data.endswith(self.old[:n])), 0)
            data, held = data[: len(data) - keep], data[len(data) - keep :]
            if not send(target, data):
                return
        send(target, held)
        close_write(target)

    def _replace(self, data: bytes) -> bytes:
        with self._count:
            while self.old in data and (self.left is None or self.left > 0):
                data = data.replace(self.old, self.new, 1)
                self.replaced += 1
                if self.left is not None:
                    self.left -= 1
        return data


def results(workdir: Path, count: int = FILES) -> dict[str, str]:
    """Small files (in two folders, one UTF-8 name), one larger than a bundle takes, one long name."""
    contents = {
        f"f{n:03d}.dat" if n % 4 else f"sub/f{n:03d}.txt": str(n).encode() * (n * 37 % 900 + 1)
        for n in range(count)
    }
    contents["sub/äö 1.txt"] = "ä\n".encode() * 50
    contents["large.bin"] = bytes(range(256)) * 1200  # 300 KiB: over the 256 KiB a bundle takes
    contents[LONG] = b"a name a tar header cannot hold\n"
    for name, data in contents.items():
        path = workdir / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}


def job(workdir: Path, prefix: str) -> Path:
    script = workdir / "job.sh"
    script.write_text(
        f"#!/bin/sh\n#ALLAS stage-out results/ {BUCKET}/{prefix}\n#ALLAS option threads=8\ntrue\n"
    )
    script.chmod(0o755)
    return script


def run(stack: Stack, home: Path, script: Path, storage: str = "") -> subprocess.CompletedProcess[str]:
    args = ["run", *(["--storage-url", storage] if storage else []), str(script)]
    return allasrun(args, user_env(stack, home), timeout=300, cwd=script.parent)


def landed(stack: Stack, workdir: Path, prefix: str) -> dict[str, str]:
    """Every object under the prefix, read back by Debian's rclone (not allasrun): name -> MD5."""
    copy = workdir / f"landed-{uuid.uuid4().hex[:6]}"
    rclone(stack, workdir, "copy", f"ref:{BUCKET}/{prefix}", str(copy))
    return {
        p.relative_to(copy).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in copy.rglob("*")
        if p.is_file()
    }


def bucket_names(stack: Stack, workdir: Path) -> list[str]:
    """Every object in the bucket: a bundle leaves nothing else behind (no object named as a folder)."""
    return rclone(stack, workdir, "lsf", "-R", "--files-only", f"ref:{BUCKET}").stdout.splitlines()


def through(stack: Stack, relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}{urlparse(stack.env['OS_STORAGE_URL']).path}"


def store_port(stack: Stack) -> int:
    port = urlparse(stack.env["OS_STORAGE_URL"]).port
    assert port is not None
    return port


def test_small_files_go_in_bundles_and_land_as_if_put_one_by_one(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    sums = results(tmp_path)
    prefix = f"run-{uuid.uuid4().hex[:10]}/"
    first = run(stack, home, job(tmp_path, prefix))
    assert first.returncode == 0, first.stderr
    went = re.search(r"stage-out: (\d+) small file\(s\) went in (\d+) tar bundle\(s\)", first.stderr)
    assert went, first.stderr
    assert int(went.group(1)) == FILES + 1 and int(went.group(2)) == 8  # all but large.bin and LONG
    assert f"{LONG} goes alone: its name below the bundle's folder is over the 100 bytes" in first.stderr
    assert f"({FILES + 3} done, 0 skipped as identical, 0 failed)" in first.stderr
    assert landed(stack, tmp_path, prefix) == sums
    again = run(stack, home, job(tmp_path, prefix))
    assert again.returncode == 0, again.stderr
    assert f"(0 done, {FILES + 3} skipped as identical, 0 failed)" in again.stderr
    assert "tar bundle" not in again.stderr


def test_a_server_without_the_bulk_middleware_gets_every_file_alone(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    sums = results(tmp_path, 40)
    prefix = f"nobulk-{uuid.uuid4().hex[:10]}/"
    with RewritingRelay(store_port(stack), b"extract-archive=", b"extract-archivX=") as relay:
        result = run(stack, home, job(tmp_path, prefix), through(stack, relay))
    assert result.returncode == 0, result.stderr
    assert relay.replaced == 1  # the empty tar that asks, and no bundle after it
    assert "small files go one by one, not in tar bundles: it does not unpack them (HTTP 202" in result.stderr
    assert "went in" not in result.stderr
    assert landed(stack, tmp_path, prefix) == sums
    assert not [name for name in bucket_names(stack, tmp_path) if name.rstrip("/") == prefix.rstrip("/")]


def test_a_member_spoilt_in_its_bundle_is_sent_again_alone(stack: Stack, home: Path, tmp_path: Path) -> None:
    sums = results(tmp_path)
    victim = tmp_path / "results" / "f005.dat"
    victim.write_bytes(b"before " + SPOIL + b" after\n")
    sums["f005.dat"] = hashlib.md5(victim.read_bytes()).hexdigest()
    prefix = f"spoilt-{uuid.uuid4().hex[:10]}/"
    with RewritingRelay(store_port(stack), SPOIL, SPOIL.lower(), times=1) as relay:
        result = run(stack, home, job(tmp_path, prefix), through(stack, relay))
    assert result.returncode == 0, result.stderr
    assert relay.replaced == 1
    said = re.search(
        r"f005\.dat goes alone: stored from its bundle as \d+ bytes, ETag (\w+); read as MD5 (\w+)",
        result.stderr,
    )
    assert said and said.group(1) != said.group(2) == sums["f005.dat"], result.stderr
    assert f"stage-out: {FILES} small file(s) went in 8 tar bundle(s)" in result.stderr
    assert landed(stack, tmp_path, prefix) == sums


def test_a_bundle_the_server_stores_in_part_leaves_the_rest_to_be_tried_alone(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """A container quota of 5 objects: bulk stores 5 of a bundle of 12 and refuses 7 (413 each).

    Tried alone, those 7 are refused again by the quota and reported (exit 75); the 5 stored are
    verified as they are.
    """
    bucket = f"bundle-quota-{uuid.uuid4().hex[:8]}"
    token = stack.user_session().get_token() or ""
    quota = {"X-Auth-Token": token, "X-Container-Meta-Quota-Count": "5"}
    answer = stack.user_session().put(f"{stack.env['OS_STORAGE_URL']}/{bucket}", headers=quota)
    assert answer.status_code in (201, 202), answer.text
    for n in range(12):
        (tmp_path / "results").mkdir(exist_ok=True)
        (tmp_path / "results" / f"f{n:02d}").write_bytes(b"%d\n" % n)
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/sh\n#ALLAS stage-out results/ {bucket}/run/\n#ALLAS option threads=1 retries=1\ntrue\n"
    )
    result = run(stack, home, script)
    assert result.returncode == 75, result.stderr
    assert result.stderr.count("goes alone: the server refused it in its bundle (413") == 7, result.stderr
    assert "stage-out: 5 small file(s) went in 1 tar bundle(s)" in result.stderr
    assert "(5 done, 0 skipped as identical, 7 failed)" in result.stderr
    stored = rclone(stack, tmp_path, "lsf", f"ref:{bucket}/run/").stdout.split()
    assert len(stored) == 5
    for name in stored:
        assert rclone(stack, tmp_path, "cat", f"ref:{bucket}/run/{name}").stdout == f"{int(name[1:])}\n"


def test_names_over_1024_bytes_go_alone_and_are_refused_as_one_by_one(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """radosgw would store such a member, as an object no request could read; so none is bundled."""
    folder = "d" * 1000 + "/"
    for n in range(20):
        path = tmp_path / "results" / f"{'x' * 90}{n:02d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % n)
    script = tmp_path / "job.sh"
    script.write_text(
        f"#!/bin/sh\n#ALLAS stage-out results/ {BUCKET}/{folder}\n#ALLAS option threads=2 retries=1\ntrue\n"
    )
    result = run(stack, home, script)
    assert result.returncode == 75, result.stderr
    assert result.stderr.count("goes alone: its name is over the 1024 bytes an object name may have") == 20
    assert "(0 done, 0 skipped as identical, 20 failed)" in result.stderr
    assert "went in" not in result.stderr

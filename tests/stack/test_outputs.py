"""Stage-out of an output tree that is not still, through the real Swift (or radosgw).

A link to a private file outside the tree is refused; a file that vanishes or changes while the
stage-out runs is reported (exit 75, the file named) and every other file lands. The races are
made deterministic by a proxy between allasrun and the store that holds one chosen request
until the test has changed the file: the moment is the request, not a sleep.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from allasrun import errors
from tests.stack.stackutil import ALLASRUN, Stack, allasrun, make_bucket, rclone, user_env
from tests.stack.tcpproxy import Relay, close_write, forward, recv, send

BUCKET = "h3-outputs"


class HoldingProxy(Relay):
    """Forwards TCP to the store; holds the first `method` request whose path ends with `suffix`.

    The held request is not forwarded at all until `release` is set, so allasrun is inside
    that call (it has listed, opened and measured the file) and cannot go on before the test
    has acted.
    """

    def __init__(self, upstream_port: int, method: bytes, suffix: bytes) -> None:
        super().__init__(upstream_port)
        self.method, self.suffix = method, suffix
        self.holding = threading.Event()
        self.release = threading.Event()

    def close(self) -> None:
        self.release.set()
        super().close()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
        threading.Thread(target=forward, args=(server, client), daemon=True).start()

    def _requests(self, source: socket.socket, target: socket.socket) -> None:
        while data := recv(source):
            if self._chosen(data):
                self.holding.set()
                self.release.wait(60)
            if not send(target, data):
                break
        close_write(target)

    def _chosen(self, data: bytes) -> bool:
        method, _, rest = data.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?")[0]
        return not self.holding.is_set() and method == self.method and path.endswith(self.suffix)


@pytest.fixture
def run_key() -> str:
    """A prefix of this test's own in the shared bucket: other runs' objects are not ours."""
    return f"run-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """results/a.txt, results/sub/b.txt, results/c.txt: what must land whatever else happens."""
    (tmp_path / "results" / "sub").mkdir(parents=True)
    for name in ("a.txt", "sub/b.txt", "c.txt"):
        (tmp_path / "results" / name).write_text(f"{name}\n")
    return tmp_path / "results"


def job(workdir: Path, key: str) -> Path:
    script = workdir / "job.sh"
    script.write_text(f"#!/bin/sh\n#ALLAS stage-out results/ {BUCKET}/{key}\ntouch ran\n")
    script.chmod(0o755)
    return script


def landed(stack: Stack, workdir: Path, key: str) -> list[str]:
    """What is under the prefix, as Debian's rclone lists it (not allasrun)."""
    return sorted(rclone(stack, workdir, "lsf", "-R", "--files-only", f"ref:{BUCKET}/{key}").stdout.split())


@contextlib.contextmanager
def held(stack: Stack, method: bytes, suffix: str) -> Iterator[tuple[HoldingProxy, str]]:
    """A holding proxy in front of the store, and the storage URL that goes through it."""
    store = urlparse(stack.env["OS_STORAGE_URL"])
    assert store.port is not None
    with HoldingProxy(store.port, method, suffix.encode()) as proxy:
        yield proxy, f"http://127.0.0.1:{proxy.port}{store.path}"


def run_held(
    stack: Stack, home: Path, script: Path, proxy: HoldingProxy, storage: str, meanwhile: Callable[[], None]
) -> subprocess.CompletedProcess[str]:
    """`allasrun run` through the proxy; `meanwhile` runs while the chosen request is held."""
    process = subprocess.Popen(
        [*ALLASRUN, "run", "--storage-url", storage, str(script)],
        env=user_env(stack, home),
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.holding.wait(120), "the chosen request never came"
        meanwhile()
    finally:
        proxy.release.set()
        stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_link_to_a_private_file_outside_is_refused_and_the_rest_lands(
    stack: Stack, home: Path, tmp_path: Path, results: Path, run_key: str
) -> None:
    make_bucket(stack, BUCKET)
    private = home / ".ssh" / "id_ed25519"
    private.parent.mkdir(mode=0o700)
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    private.chmod(0o600)
    (results / "ref").symlink_to(private)
    (results / "latest.txt").symlink_to("sub/b.txt")  # inside the tree: uploaded under its name
    result = allasrun(["run", str(job(tmp_path, run_key))], user_env(stack, home), timeout=300, cwd=tmp_path)
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert f"stage-out refused: {tmp_path / 'job.sh'}:2: {results / 'ref'} -> " in result.stderr
    assert f"a symbolic link to {private}, outside {results}" in result.stderr
    assert "Traceback" not in result.stderr
    assert landed(stack, tmp_path, run_key) == ["a.txt", "c.txt", "latest.txt", "sub/b.txt"]
    latest = rclone(stack, tmp_path, "cat", f"ref:{BUCKET}/{run_key}latest.txt").stdout
    assert latest == "sub/b.txt\n"


def test_a_file_that_vanishes_after_the_listing_is_named_and_the_rest_lands(
    stack: Stack, home: Path, tmp_path: Path, results: Path, run_key: str
) -> None:
    """The review's probe: a `scratch.tmp` renamed away by its writer between listing and upload."""
    make_bucket(stack, BUCKET)
    (results / "scratch.tmp").write_text("partial\n")
    with held(stack, b"GET", f"/{BUCKET}") as (proxy, storage):  # the bucket's listing
        result = run_held(
            stack, home, job(tmp_path, run_key), proxy, storage, (results / "scratch.tmp").unlink
        )
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert f"{results / 'scratch.tmp'} vanished after it was listed" in result.stderr
    assert "stage-out failed for 1 file(s)" in result.stderr and "Traceback" not in result.stderr
    assert landed(stack, tmp_path, run_key) == ["a.txt", "c.txt", "sub/b.txt"]


def test_a_file_appended_while_it_is_uploaded_is_named_and_the_rest_lands(
    stack: Stack, home: Path, tmp_path: Path, results: Path, run_key: str
) -> None:
    """A writer still appending to a large result: the upload would not be the file on disk."""
    make_bucket(stack, BUCKET)
    big = results / "big.bin"
    big.write_bytes(b"line of output\n" * 300_000)  # 4.3 MiB: many reads, one object

    def append() -> None:
        with open(big, "ab") as out:
            out.write(b"one more line\n")

    with held(stack, b"PUT", f"/{BUCKET}/{run_key}big.bin") as (proxy, storage):
        result = run_held(stack, home, job(tmp_path, run_key), proxy, storage, append)
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert f"{big} changed while it was uploaded (4500000 -> 4500014 bytes)" in result.stderr
    assert "stage-out failed for 1 file(s)" in result.stderr and "Traceback" not in result.stderr
    assert landed(stack, tmp_path, run_key) == ["a.txt", "c.txt", "sub/b.txt"]  # big.bin removed again


def test_a_file_needing_over_1000_segments_gets_larger_ones(
    stack: Stack, home: Path, tmp_path: Path, run_key: str
) -> None:
    """Swift and radosgw take at most 1000 segments per manifest: 1K segments would need 1001 here."""
    make_bucket(stack, BUCKET)
    data = bytes(range(256)) * 4000 + b"x"  # 1000 KiB and a byte
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "big.bin").write_bytes(data)
    script = job(tmp_path, run_key)
    script.write_text(script.read_text().replace("touch ran", "#ALLAS option segment-size=1K\ntouch ran"))
    result = allasrun(["run", str(script)], user_env(stack, home), timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1024-byte segments would be 1001, over the 1000 a large object may have" in result.stderr
    # Checked by HEAD, not by downloading: Swift serves a large object's segments after the
    # tenth at one a second. Its ETag is the MD5 of its segments' MD5s: 1025-byte ones here.
    session = stack.user_session()
    head = session.head(
        f"{stack.env['OS_STORAGE_URL']}/{BUCKET}/{run_key}big.bin",
        headers={"X-Auth-Token": session.get_token() or ""},
    )
    parts = "".join(hashlib.md5(data[i : i + 1025]).hexdigest() for i in range(0, len(data), 1025))
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Etag"].strip('"') == hashlib.md5(parts.encode()).hexdigest()

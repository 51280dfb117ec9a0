"""Swift down or throttling during stage-out, through the real Swift (or radosgw).

A relay between allasrun and the store stands in for the outage: while it is down it cuts
every connection as it arrives (what a client sees of a dead proxy or a restarted server), and
it can answer chosen requests itself with 503, 429 or 498, with or without `Retry-After`, before
forwarding the rest. The store behind it is never stopped: other tests share it.

A short outage is ridden out by the retries; a long one ends in exit 75 with every file named
and a report, and `allasrun stage-out REPORT` uploads those files once the store is back, to the
names the job gave them (its `%j`), checked byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import pytest

from allasrun import errors
from tests.stack.stackutil import Stack, allasrun, make_bucket, rclone, user_env
from tests.stack.tcpproxy import Relay, close_write, forward, recv, send

BUCKET = "fault-swift-out"
JOB = "4242"  # the job's id: `%j` in the directives


class FaultRelay(Relay):
    """Forwards to the store, except while `down` and for the first `count` matching requests.

    Down: each connection is cut (RST) as it arrives, and `outage` seconds after the first such
    cut the relay comes back by itself (None: only `restore` brings it back). With `down_after`,
    it goes down for good at the first request after that many PUTs went through. A matching request
    (`method`, a path containing `marker`) is read whole and answered by the relay with `status`
    and, if given, `Retry-After`; `answered` keeps when each arrived.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        outage: Optional[float] = None,
        method: bytes = b"",
        marker: bytes = b"",
        status: int = 0,
        count: int = 0,
        retry_after: Optional[str] = None,
        down_after: Optional[int] = None,
    ) -> None:
        super().__init__(upstream_port)
        self.down_after, self.puts = down_after, 0
        self.down = outage is not None
        self.outage, self.cuts = outage, 0
        self.method, self.marker, self.status, self.count, self.retry_after = (
            method,
            marker,
            status,
            count,
            retry_after,
        )
        self.answered: list[float] = []
        self._state = threading.Lock()

    def go_down(self) -> None:
        """From now on (until `restore`), cut every connection."""
        with self._state:
            self.down, self.outage = True, None

    def restore(self) -> None:
        with self._state:
            self.down = False

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        if self._cut_now():
            _reset(client, server)
            return
        threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
        threading.Thread(target=forward, args=(server, client), daemon=True).start()

    def _cut_now(self) -> bool:
        with self._state:
            if not self.down:
                return False
            self.cuts += 1
            if self.cuts == 1 and self.outage is not None:
                threading.Timer(self.outage, self.restore).start()
            return True

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """Request by request: forward it, or answer it here and end the connection."""
        buffer = b""
        while True:
            request, buffer = _one_request(client, buffer)
            if request is None:
                close_write(server)
                return
            if self._outage_begins(request):
                _reset(client, server)
                return
            if self._throttled(request):
                extra = f"Retry-After: {self.retry_after}\r\n" if self.retry_after is not None else ""
                send(
                    client,
                    f"HTTP/1.1 {self.status} Throttled\r\n{extra}Content-Length: 0\r\n"
                    "Connection: close\r\n\r\n".encode(),
                )
                for sock in (client, server):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            if not send(server, request):
                return

    def _outage_begins(self, request: bytes) -> bool:
        """Whether `down_after` PUTs went through before this request: then down for good."""
        with self._state:
            if self.down_after is None:
                return False
            if self.puts >= self.down_after:
                self.down, self.outage = True, None
                return True
            self.puts += request.startswith(b"PUT ")
            return False

    def _throttled(self, request: bytes) -> bool:
        method, _, rest = request.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?")[0]
        with self._state:
            if method != self.method or self.marker not in path or len(self.answered) >= self.count:
                return False
            self.answered.append(time.monotonic())
            return True


def _reset(*sockets: socket.socket) -> None:
    """Close with a reset (RST), as a dead server's host answers."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _one_request(sock: socket.socket, buffer: bytes) -> tuple[Optional[bytes], bytes]:
    """The next whole request (head and Content-Length body) and what follows it; None at the end."""
    while b"\r\n\r\n" not in buffer:
        data = recv(sock)
        if not data:
            return None, b""
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" not in head.lower(), head
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(rest) < length:
        data = recv(sock)
        if not data:
            return None, b""
        rest += data
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@contextlib.contextmanager
def relayed(stack: Stack, **fault: Any) -> Iterator[tuple[FaultRelay, str]]:
    """A fault relay in front of the store, and the storage URL that goes through it."""
    store = urlparse(stack.env["OS_STORAGE_URL"])
    assert store.port is not None
    with FaultRelay(store.port, **fault) as proxy:
        yield proxy, f"http://127.0.0.1:{proxy.port}{store.path}"


@pytest.fixture
def key() -> str:
    """This test's own prefix in the shared bucket."""
    return f"run-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def results(tmp_path: Path) -> dict[str, str]:
    """The job's results: small files and one that goes as segments; name -> MD5."""
    (tmp_path / "results" / "sub").mkdir(parents=True)
    contents = {
        "a.txt": b"alpha\n",
        "sub/b.txt": b"bee\n" * 1000,
        "big.bin": bytes(range(256)) * 40,  # 10 KiB: 3 segments of 4 KiB
    }
    for name, data in contents.items():
        (tmp_path / "results" / name).write_bytes(data)
    return {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}


def job(workdir: Path, key: str, retries: int) -> Path:
    script = workdir / "job.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"#ALLAS stage-out results/ {BUCKET}/{key}/%j/\n"
        f"#ALLAS option retries={retries} segment-size=4K\n"
        "touch ran\n"
    )
    script.chmod(0o755)
    return script


def run(stack: Stack, home: Path, script: Path, storage: str) -> subprocess.CompletedProcess[str]:
    env = user_env(stack, home, SLURM_JOB_ID=JOB)
    return allasrun(["run", "--storage-url", storage, str(script)], env, timeout=300, cwd=script.parent)


def landed(stack: Stack, workdir: Path, prefix: str) -> dict[str, str]:
    """Every object under the prefix, downloaded with Debian's rclone (not allasrun): name -> MD5."""
    copy = workdir / f"downloaded-{uuid.uuid4().hex[:6]}"
    rclone(stack, workdir, "copy", f"ref:{BUCKET}/{prefix}", str(copy))
    return {
        p.relative_to(copy).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(copy.rglob("*"))
        if p.is_file()
    }


def local_state(results: Path) -> dict[str, tuple[str, int]]:
    """Each result's MD5 and mtime: stage-out must change neither."""
    return {
        p.relative_to(results).as_posix(): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(results.rglob("*"))
        if p.is_file()
    }


def test_a_short_outage_during_stage_out_is_ridden_out(
    stack: Stack, home: Path, tmp_path: Path, key: str, results: dict[str, str]
) -> None:
    """Down for 2 s from stage-out's first request: retries=2 waits 1 + 2 s per request."""
    make_bucket(stack, BUCKET)
    with relayed(stack, outage=2.0) as (relay, storage):
        result = run(stack, home, job(tmp_path, key, retries=2), storage)
    assert result.returncode == 0, result.stderr
    assert relay.cuts >= 1 and "retrying in 1 s" in result.stderr
    assert "Traceback" not in result.stderr
    assert landed(stack, tmp_path, f"{key}/{JOB}") == results
    print(f"short outage: {relay.cuts} connection(s) cut, exit 0, {len(results)} of {len(results)} landed")


def test_a_long_outage_ends_in_75_and_allasrun_stage_out_finishes_it(
    stack: Stack, home: Path, tmp_path: Path, key: str, results: dict[str, str]
) -> None:
    """Down for longer than every retry: each file named, nothing local touched, a report to finish with.

    The finish runs outside the job (another SLURM_JOB_ID, or none): the report's names, not a
    new `%j`, say where the files go.
    """
    make_bucket(stack, BUCKET)
    before = local_state(tmp_path / "results")
    script = job(tmp_path, key, retries=1)
    script.write_text(script.read_text().replace("retries=1", "retries=1 threads=1"))
    with relayed(stack, down_after=1) as (relay, storage):  # down once the first file is in
        result = run(stack, home, script, storage)
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert "Traceback" not in result.stderr
    first = landed(stack, tmp_path, f"{key}/{JOB}")
    assert len(first) == 1 and first.items() <= results.items()
    for name in results:
        source, target = tmp_path / "results" / name, f"allas:{BUCKET}/{key}/{JOB}/{name}"
        named = f"stage-out failed: {tmp_path / 'job.sh'}:2: {source} -> {target}: " in result.stderr
        assert named == (name not in first), (name, result.stderr)
    failed = len(results) - 1
    assert f"stage-out failed for {failed} file(s); the command's exit status was 0" in result.stderr
    found = re.search(
        r"did not land; upload them when Allas is back: allasrun stage-out (\S+)", result.stderr
    )
    assert found, result.stderr
    report = Path(found.group(1))
    assert report.parent == tmp_path and local_state(tmp_path / "results") == before

    later = allasrun(["stage-out", str(report)], user_env(stack, home, SLURM_JOB_ID="9999"), timeout=300)
    assert later.returncode == 0, later.stderr
    assert landed(stack, tmp_path, f"{key}/{JOB}") == results  # every byte, where the job meant it
    assert local_state(tmp_path / "results") == before
    record = json.loads(report.read_text())
    assert {t["status"] for t in record["transfers"]} == {"done"} and record["exit_status"] == 0
    again = allasrun(["stage-out", str(report)], user_env(stack, home), timeout=300)
    assert again.returncode == 0 and "0 file(s)" in again.stderr, again.stderr
    print(f"long outage: {relay.cuts} connection(s) cut, exit 75, {failed} named, then all landed")


@pytest.mark.parametrize(
    ("status", "retry_after", "least_gap"),
    [(503, None, 1.0), (429, "3", 3.0), (498, "3", 3.0), (498, None, 1.0)],
)
def test_throttled_uploads_wait_and_land(
    stack: Stack,
    home: Path,
    tmp_path: Path,
    key: str,
    results: dict[str, str],
    status: int,
    retry_after: Optional[str],
    least_gap: float,
) -> None:
    """The first two PUTs of a.txt are answered by the relay; the waits between them honour Retry-After."""
    make_bucket(stack, BUCKET)
    fault = {"method": b"PUT", "marker": f"/{key}/{JOB}/a.txt".encode(), "status": status, "count": 2}
    with relayed(stack, **fault, retry_after=retry_after) as (relay, storage):
        result = run(stack, home, job(tmp_path, key, retries=3), storage)
    assert result.returncode == 0, result.stderr
    assert len(relay.answered) == 2 and f"HTTP {status}" in result.stderr
    assert relay.answered[1] - relay.answered[0] >= least_gap
    assert landed(stack, tmp_path, f"{key}/{JOB}") == results


def test_a_name_the_store_refuses_is_reported_at_once(
    stack: Stack, home: Path, tmp_path: Path, key: str, results: dict[str, str]
) -> None:
    """A name over the store's 1,024 bytes is refused (HTTP 400) and reported without retry sleeps.

    retries=5 would sleep 1 + 2 + 4 + 8 s before the same refusal; the other files still land.
    """
    make_bucket(stack, BUCKET)
    deep = tmp_path / "results" / "/".join(["d" * 200] * 5)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"too deep\n")
    started = time.monotonic()
    result = allasrun(
        ["run", str(job(tmp_path, key, retries=5))],
        user_env(stack, home, SLURM_JOB_ID=JOB),
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert "retrying" not in result.stderr and "Traceback" not in result.stderr
    assert "HTTP 400" in result.stderr and "f.txt" in result.stderr
    assert landed(stack, tmp_path, f"{key}/{JOB}") == results
    print(f"refused name: exit {result.returncode} after {time.monotonic() - started:.1f} s, no retries")

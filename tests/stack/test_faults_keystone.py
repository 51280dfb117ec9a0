"""Keystone down or slow in the middle of a job: the job's clients never notice (issue 11, items 1-2).

Swift keeps validating tokens against the real Keystone; only allasrun's own traffic goes
through a relay in front of it, so what is tested is the keeper alone: a valid token in hand
means working clients, however Keystone behaves towards the keeper. Each test is one job of
about one token lifetime calling rclone and swift in a loop through the run's token service.
"""

from __future__ import annotations

import calendar
import contextlib
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from tests.stack.stackutil import ALLASRUN, Stack, app_credential_env, make_bucket, swift_round_only, wait_for
from tests.stack.tcpproxy import Relay, forward, recv, send

# The job: rclone and swift in turn until DURATION seconds after it started (touching STARTED),
# every failure's time and message appended to ERRORS; its last line counts both.
JOB = """
touch "$STARTED"
end=$(( $(date +%s) + DURATION ))
ok=0; failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  if rclone lsf "allas:$BUCKET" >/dev/null 2>>"$ERRORS"; then ok=$((ok+1));
    else failed=$((failed+1)); date +%s >>"$ERRORS"; fi
  if ( . "$ALLASRUN_ENV_FILE" && swift list "$BUCKET" >/dev/null 2>>"$ERRORS" ); then ok=$((ok+1));
    else failed=$((failed+1)); date +%s >>"$ERRORS"; fi
  sleep 1
done
echo "ok=$ok failed=$failed"
"""

LOG_TIME = re.compile(r"^allasrun: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)$", re.MULTILINE)


@dataclass
class Job:
    """allasrun running JOB in the background, with what it printed once it has ended."""

    root: Path
    process: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def start(
        cls,
        stack: Stack,
        root: Path,
        bucket: str,
        duration: float,
        auth_url: str,
        prefix: tuple[str, ...] = (),
    ) -> Job:
        """Start `allasrun -v -- sh -c JOB` (under `prefix`, e.g. faketime) with Keystone at `auth_url`."""
        make_bucket(stack, bucket)
        (root / "home").mkdir(parents=True)
        env = app_credential_env(stack, root / "home")
        env.update(
            OS_AUTH_URL=auth_url,
            BUCKET=bucket,
            DURATION=str(int(duration)),
            STARTED=str(root / "started"),
            ERRORS=str(root / "errors.txt"),
        )
        argv = [*prefix, *ALLASRUN, "-v", "--", "sh", "-c", JOB]
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return cls(root, process)

    def wait_started(self) -> float:
        """Wait until the command runs; the moment it did."""
        wait_for((self.root / "started").exists, timeout=90, what="the job's command to start")
        return time.time()

    def finish(self, timeout: float) -> Job:
        """Wait for allasrun to end; fail unless it and every client call succeeded."""
        self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        assert "Traceback" not in self.stderr, self.stderr
        assert self.process.returncode == 0, self.stderr
        errors = self.root / "errors.txt"
        failures = errors.read_text() if errors.exists() else ""
        assert self.counts()["failed"] == 0, f"{failures}\n{self.stderr}"
        return self

    def counts(self) -> dict[str, int]:
        """The job's own tally: client calls that worked (`ok`) and that failed."""
        return {name: int(value) for name, value in re.findall(r"(ok|failed)=(\d+)", self.stdout)}

    def logged(self, needle: str) -> list[float]:
        """When (POSIX seconds, by allasrun's clock) each log line containing `needle` was written."""
        return [
            float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
            for stamp, message in LOG_TIME.findall(self.stderr)
            if needle in message
        ]


class FaultyKeystone(Relay):
    """A relay to Keystone that can be taken down (`down`: every connection reset at once) or
    made slow (`delay`: each answer held a random time in that range before it is passed on).

    It counts the requests waiting for their answer at once (`most_waiting`): overlapping
    renewals, or a pile-up of connections, show there.
    """

    def __init__(self, auth_url: str, delay: Optional[tuple[float, float]] = None) -> None:
        parsed = urlparse(auth_url)
        assert parsed.port is not None
        super().__init__(parsed.port)
        self.url = parsed._replace(netloc=f"127.0.0.1:{self.port}").geturl()
        self.delay = delay
        self.is_down = False
        self.connections = 0
        self.waiting = 0
        self.most_waiting = 0
        self._count = threading.Lock()
        self.start()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Keystone unreachable for the duration of the block: each connection reset on arrival."""
        self.is_down = True
        try:
            yield
        finally:
            self.is_down = False

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        if self.is_down:
            for sock in (client, server):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            return
        threading.Thread(target=forward, args=(client, server), daemon=True).start()
        threading.Thread(target=self._answer, args=(server, client), daemon=True).start()

    def _answer(self, server: socket.socket, client: socket.socket) -> None:
        """Pass Keystone's answer on, `delay` late (Keystone keeps its own time: its idle
        connections time out, so the request itself goes through at once)."""
        self._waiting(+1)
        try:
            first = recv(server)
            if self.delay is not None:
                time.sleep(random.uniform(*self.delay))
        finally:
            self._waiting(-1)
        if send(client, first):
            forward(server, client)

    def _waiting(self, change: int) -> None:
        with self._count:
            self.connections += change > 0
            self.waiting += change
            self.most_waiting = max(self.most_waiting, self.waiting)


def test_keystone_down_for_two_thirds_of_a_token_life(stack: Stack, tmp_path: Path) -> None:
    """Down from 15 s after the start until 75 s, across the renewal point (~41-45 s): the
    token issued at the start lasts until ~90 s, so renewal must come between 75 and 90 s."""
    swift_round_only(stack, "Keystone and the keeper only")
    outage = stack.ttl * 2 / 3
    with FaultyKeystone(stack.env["OS_AUTH_URL"]) as keystone:
        job = Job.start(stack, tmp_path, "fault-keystone-down", stack.ttl + 5, keystone.url)
        started = job.wait_started()
        time.sleep(max(started + 15 - time.time(), 0))
        with keystone.down():
            time.sleep(outage)
        back = time.time()
        job.finish(timeout=stack.ttl + 60)
    attempts = job.logged("renewal attempt")
    renewed = job.logged("renewed token (")
    print(
        f"keystone down {outage:.0f} s: {job.counts()['ok']} client calls, 0 failed, "
        f"{len(attempts)} failed renewal attempts, renewed {min(renewed) - back:+.0f} s after its return"
    )
    assert len(job.logged("cannot renew the token")) == 1, job.stderr  # the outage, once
    assert len(job.logged("renewed the token again after")) == 1, job.stderr  # its end, once
    assert len(attempts) >= 3, job.stderr  # countable in debug
    gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
    assert max(gaps) <= stack.ttl / 10, job.stderr  # bounded: a renewal comes in time
    assert len(renewed) == 1 and 0 <= renewed[0] - back <= 15, job.stderr  # within seconds of the return


def test_slow_keystone_neither_overlaps_renewals_nor_piles_up(stack: Stack, tmp_path: Path) -> None:
    """Every request to Keystone takes 5-20 s (keystoneauth's own timeout is 30 s)."""
    swift_round_only(stack, "Keystone and the keeper only")
    with FaultyKeystone(stack.env["OS_AUTH_URL"], delay=(5.0, 20.0)) as keystone:
        job = Job.start(stack, tmp_path, "fault-keystone-slow", stack.ttl * 0.6, keystone.url)
        job.finish(timeout=stack.ttl + 120)
    renewed = job.logged("renewed token (")
    print(
        f"keystone slow: {job.counts()['ok']} client calls, 0 failed, {keystone.connections} requests, "
        f"at most {keystone.most_waiting} at once, {len(renewed)} renewal(s)"
    )
    assert keystone.most_waiting == 1, job.stderr  # one request at a time: no overlap, no pile-up
    assert len(renewed) >= 1, job.stderr
    assert keystone.connections == 1 + len(renewed), job.stderr  # the login, then one per renewal
    assert not job.logged("renewal attempt"), job.stderr

"""The node's clock 10 minutes ahead of and behind Keystone's (issue 11, item 8).

allasrun and its job run under libfaketime while Keystone and Swift keep the real clock.
Only the wall clock is skewed (FAKETIME_DONT_FAKE_MONOTONIC): a node whose clock is set wrong
still counts seconds right. Both skews run at once, each a job of two token lifetimes.

The token cache lives in the home, which every node of a cluster shares: a run on a node
behind Keystone must not take a token another node (or this one) cached for fresh when
Keystone holds it expired. "Another node" is allasrun told its host is `node-a`.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.stack.stackutil import ALLASRUN, Stack, app_credential_env, make_bucket, swift_round_only
from tests.stack.tcpproxy import Relay, forward, recv, send
from tests.stack.test_faults_keystone import Job

FAKETIME = pytest.mark.skipif(
    shutil.which("faketime") is None, reason="libfaketime's faketime is not installed"
)
SKEWED = ("env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f")
BEHIND = (*SKEWED, "-10m", *ALLASRUN)  # allasrun on a node 10 minutes behind Keystone
NODE_A = (  # allasrun on another node of the cluster, whose clock is right
    sys.executable,
    "-c",
    "import runpy, socket; socket.gethostname = lambda: 'node-a'; "
    "runpy.run_module('allasrun', run_name='__main__')",
)
BUCKET = "fault-clock-cache"
# The job of a run that takes a cached token: rclone and swift through the token service, then
# the seconds of life the service tells a client the token has.
READER = """
rclone lsf "allas:$BUCKET" >/dev/null || exit 11
( . "$ALLASRUN_ENV_FILE" && swift list "$BUCKET" >/dev/null ) || exit 12
. "$ALLASRUN_ENV_FILE"
curl -sS -D - -o /dev/null -H "X-Auth-User: $ST_USER" -H "X-Auth-Key: $ST_KEY" "$ST_AUTH" |
  tr -d '\\r' | sed -n 's/^X-Auth-Token-Expires: //p'
"""

NAMES = {"+10m": "ahead", "-10m": "behind"}


@FAKETIME
def test_skewed_clock_renews_at_half_life(stack: Stack, tmp_path: Path) -> None:
    """Ahead, every token looks due at once (a loop); behind, not due until long after it expired."""
    swift_round_only(stack, "Keystone and the keeper only")
    duration = 2 * stack.ttl + 5
    jobs = {
        skew: Job.start(
            stack,
            tmp_path / skew,
            f"fault-clock-{NAMES[skew]}",
            duration,
            stack.env["OS_AUTH_URL"],
            (*SKEWED, skew),
        )
        for skew in NAMES
    }
    for skew, job in jobs.items():
        job.finish(timeout=duration + 120)  # every client call worked: never an expired token
        start = job.logged("authenticated ")
        renewed = job.logged("renewed token (")
        gaps = [later - earlier for earlier, later in zip(start + renewed, renewed)]
        calls = job.counts()["ok"]
        print(f"clock {skew}: {calls} client calls, 0 failed, {len(renewed)} renewals {gaps} s apart")
        assert 3 <= len(renewed) <= 5, job.stderr  # ~every 41-45 s: neither a loop nor none
        half_life = (stack.ttl * 0.35, stack.ttl * 0.6)
        assert all(half_life[0] <= gap <= half_life[1] for gap in gaps), job.stderr


@FAKETIME
def test_a_token_another_node_cached_is_judged_by_keystones_clock(stack: Stack, tmp_path: Path) -> None:
    """node-a caches a token; 10 minutes behind, the next run asks Keystone (dated by a web
    server in front) instead of logging in, and tells clients the token's life by Keystone's clock."""
    swift_round_only(stack, "Keystone and the token cache only")
    make_bucket(stack, BUCKET)
    with DatingKeystone(stack.env["OS_AUTH_URL"]) as keystone:
        env = _env(stack, tmp_path / "home", keystone.url)
        (writer,) = _runs((NODE_A, env, "true"))
        cached = _cached_token(writer.home)
        (reader,) = _runs((BEHIND, env, READER))
    reader.check()
    offset = re.search(
        r"Keystone accepts the token cached by node-a; this node's clock is ([-+]\d+) s off", reader.stderr
    )
    assert offset is not None and -602 <= int(offset.group(1)) <= -598, reader.stderr
    assert _cached_token(reader.home)["value"] == cached["value"]  # no login replaced it
    print(
        f"cached on node-a, read 10 min behind: validated, offset {offset.group(1)} s, "
        "0 logins, 0 client failures"
    )


@FAKETIME
def test_a_token_keystone_expired_is_never_handed_to_clients_by_a_clock_behind(
    stack: Stack, tmp_path: Path
) -> None:
    """Cached by node-a, or by a run on this node that stored its offset, then left until Keystone
    holds it expired: 10 minutes behind, it looks fresh for 9 more minutes, yet must not be used."""
    swift_round_only(stack, "Keystone and the token cache only")
    make_bucket(stack, BUCKET)
    auth_url = stack.env["OS_AUTH_URL"]
    other, here = _env(stack, tmp_path / "other", auth_url), _env(stack, tmp_path / "here", auth_url)
    writers = _runs((NODE_A, other, "true"), (BEHIND, here, "true"))
    expiry = max(float(_cached_token(run.home)["expires_at"]) for run in writers)
    time.sleep(max(expiry + 1 - time.time(), 0.0))  # expired by Keystone's clock (the real one)
    from_other, from_here = _runs((BEHIND, other, READER), (BEHIND, here, READER))
    for run in (from_other, from_here):
        run.check()
    assert "not using the token cached by node-a: Keystone refused" in from_other.stderr
    assert "cached by" not in from_here.stderr  # judged by the stored offset: Keystone not asked
    print(
        "expired by Keystone, 10 min behind: cached on node-a: validated (404), logged in; "
        "cached here: judged by the stored offset, logged in; 0 client failures"
    )


class DatingKeystone(Relay):
    """Keystone as behind a web server that dates its answers (`Date`, by the real clock, which
    is Keystone's): uwsgi alone sends none; Apache or a load balancer in front of Keystone does."""

    def __init__(self, auth_url: str) -> None:
        parsed = urlparse(auth_url)
        assert parsed.port is not None
        super().__init__(parsed.port)
        self.url = parsed._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=forward, args=(client, server), daemon=True).start()
        threading.Thread(target=self._dated, args=(server, client), daemon=True).start()

    def _dated(self, server: socket.socket, client: socket.socket) -> None:
        """Pass the answer on with a Date header after its status line."""
        head = b""
        while b"\r\n" not in head and (chunk := recv(server)):
            head += chunk
        status, newline, rest = head.partition(b"\r\n")
        date = f"Date: {formatdate(time.time(), usegmt=True)}\r\n".encode() if newline else b""
        if send(client, status + newline + date + rest):
            forward(server, client)


@dataclass(frozen=True)
class Run:
    """One `allasrun -v -- sh -c SCRIPT` that has ended; `began` and `ended` by the real clock."""

    home: Path
    returncode: int
    stdout: str
    stderr: str
    began: float
    ended: float

    def check(self) -> None:
        """Every client call worked, and clients were told the token's life by Keystone's clock.

        Told N seconds, at a moment between the start and the end: Keystone's expiry minus N
        lies there too (N is cut to whole seconds, hence the second more).
        """
        assert "Traceback" not in self.stderr, self.stderr
        assert self.returncode == 0, self.stderr
        told = float(_cached_token(self.home)["expires_at"]) - int(self.stdout.split()[-1])
        assert self.began <= told <= self.ended + 1, (told - self.began, self.stderr)


def _env(stack: Stack, home: Path, auth_url: str) -> dict[str, str]:
    home.mkdir(parents=True)
    env = app_credential_env(stack, home)
    env.update(OS_AUTH_URL=auth_url, BUCKET=BUCKET)
    return env


def _runs(*runs: tuple[tuple[str, ...], dict[str, str], str]) -> list[Run]:
    """Start each (allasrun command line, environment, job script) at once; wait for all."""
    began = time.time()
    processes = [
        subprocess.Popen(
            [*command, "-v", "--", "sh", "-c", script],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command, env, script in runs
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    ended = time.time()
    return [
        Run(Path(env["HOME"]), process.returncode, out, err, began, ended)
        for (_, env, _), process, (out, err) in zip(runs, processes, outputs)
    ]


def _cached_token(home: Path) -> dict[str, Any]:
    """The one token in the home's cache (an entry holds it beside its host; an older one is it)."""
    (entry,) = (home / ".cache" / "allasrun" / "tokens").glob("*.json")
    data: dict[str, Any] = json.loads(entry.read_text())
    token: dict[str, Any] = data.get("token", data)
    return token

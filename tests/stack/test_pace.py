"""More transfers in flight where round trips are what bounds them, through the real store.

A relay puts the store 100 ms of round trip away, far more than the servers' own time per small
object on this machine, so each doubling of the transfers in flight nearly doubles the files
staged per second, and the stager must keep doubling: the log shows 32 at a time being reached,
which takes the doubling from 16 having paid. Every file must arrive whole all the same.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from tests.stack.stackutil import Stack, allasrun, user_env
from tests.stack.tcpproxy import LatencyRelay
from tests.stack.test_bundles import store_port, through

FILES = 700  # at 100 ms, about 1 s at 8 at a time, 1 s at 16 and 1 s at 32


def test_small_files_over_a_long_round_trip_get_more_transfers_in_flight(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    source = tmp_path / "results"
    source.mkdir()
    sums = {}
    for n in range(FILES):
        data = f"file {n}\n".encode() * (n % 50 + 1)
        (source / f"f{n:04d}.txt").write_bytes(data)
        sums[f"f{n:04d}.txt"] = hashlib.md5(data).hexdigest()
    prefix = f"pace-{uuid.uuid4().hex[:8]}/"
    out = tmp_path / "out.sh"
    out.write_text(f"#!/bin/sh\n#ALLAS stage-out results/ pace/{prefix}\ntrue\n")
    put = allasrun(["run", str(out)], user_env(stack, home), timeout=300, cwd=tmp_path)
    assert put.returncode == 0, put.stderr

    fetch = tmp_path / "in.sh"
    fetch.write_text(f"#!/bin/sh\n#ALLAS stage-in pace/{prefix} got/\ntrue\n")
    with LatencyRelay(store_port(stack), rtt=0.1) as relay:
        got = allasrun(
            ["run", "-v", "--storage-url", through(stack, relay), str(fetch)],
            user_env(stack, home),
            timeout=300,
            cwd=tmp_path,
        )
    assert got.returncode == 0, got.stderr
    assert "; 16 at a time from now" in got.stderr, got.stderr
    assert "; 32 at a time from now" in got.stderr, got.stderr
    arrived = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (tmp_path / "got").iterdir()}
    assert arrived == sums

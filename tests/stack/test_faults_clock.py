"""The node's clock 10 minutes ahead of and behind Keystone's (issue 11, item 8).

allasrun and its job run under libfaketime while Keystone and Swift keep the real clock.
Only the wall clock is skewed (FAKETIME_DONT_FAKE_MONOTONIC): a node whose clock is set wrong
still counts seconds right. Both skews run at once, each a job of two token lifetimes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.stack.stackutil import Stack, swift_round_only
from tests.stack.test_faults_keystone import Job

NAMES = {"+10m": "ahead", "-10m": "behind"}


@pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime's faketime is not installed")
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
            ("env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", skew),
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

"""Start-up overhead of `allasrun -- true` and the keeper's cost over a long idle job.

Targets (issue 2): <= 100 ms added with a valid cached token; <= 40 MB RSS; the keeper sleeps
between renewals (its wake-ups are counted, not timed). Needs MINI_ALLAS_ENV (bench/run).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.stack.stackutil import ALLASRUN, Stack, read_env_file


def environment(stack: Stack, home: Path) -> dict[str, str]:
    """A user holding the stack's application credential (so runs are served by the cache)."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "OS_AUTH_URL": stack.env["OS_AUTH_URL"],
        "OS_APPLICATION_CREDENTIAL_ID": stack.env["MINI_ALLAS_APP_CRED_ID"],
        "OS_APPLICATION_CREDENTIAL_SECRET": stack.env["MINI_ALLAS_APP_CRED_SECRET"],
    }


def timed(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of each of `runs` runs of `command`."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return samples


def startup(stack: Stack, home: Path, runs: int) -> list[tuple[str, str]]:
    env = environment(stack, home)
    subprocess.run([*ALLASRUN, "-q", "--", "true"], env=env, check=True)  # fill the token cache
    baseline = statistics.median(timed(["true"], env, runs))
    wrapped = statistics.median(timed([*ALLASRUN, "-q", "--", "true"], env, runs))
    cold = statistics.median(timed([*ALLASRUN, "-q", "--no-cache", "--", "true"], env, max(runs // 4, 3)))
    return [
        ("`true` alone (median)", f"{baseline * 1000:.1f} ms"),
        ("`allasrun -- true`, cached token (median)", f"{wrapped * 1000:.1f} ms"),
        ("added by allasrun, cached token", f"**{(wrapped - baseline) * 1000:.1f} ms** (target <= 100 ms)"),
        ("`allasrun --no-cache -- true` (authenticates)", f"{cold * 1000:.1f} ms"),
    ]


def idle(stack: Stack, home: Path, seconds: int) -> list[tuple[str, str]]:
    env = environment(stack, home)
    proc = subprocess.Popen(
        [*ALLASRUN, "--", "sleep", str(seconds)], env=env, stderr=subprocess.PIPE, text=True
    )
    process = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
            cpu = process.cpu_times()
            switches = process.num_ctx_switches().voluntary
        except psutil.NoSuchProcess:
            break
        time.sleep(1)
    _, stderr = proc.communicate()
    renewals = len(re.findall(r"renewed token", stderr))
    return [
        ("idle job length", f"{seconds} s ({seconds / stack.ttl:.1f} token lifetimes)"),
        ("renewals", str(renewals)),
        ("allasrun peak RSS", f"**{peak / 2**20:.1f} MiB** (target <= 40 MB)"),
        ("allasrun CPU time over the job", f"{cpu.user + cpu.system:.2f} s"),
        (
            "voluntary context switches (wake-ups)",
            f"{switches} ({switches / max(renewals, 1):.0f} per renewal)",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle-seconds", type=int, default=300)
    args = parser.parse_args()
    stack = Stack(read_env_file(Path(os.environ["MINI_ALLAS_ENV"])))
    with tempfile.TemporaryDirectory() as home:
        rows = startup(stack, Path(home), args.runs) + idle(stack, Path(home), args.idle_seconds)
    print("| measure | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

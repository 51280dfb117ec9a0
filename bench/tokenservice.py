"""The run's token service (issue 10): what it saves Keystone, what an auth call costs, its RSS.

Targets: no Keystone token request per client call (only the keeper's logins and renewals);
well under a millisecond of server time per auth call; the keeper under 40 MB RSS with the
service running. The user holds a password, so each run mints its own application credential,
as in the issue. Needs MINI_ALLAS_ENV (bench/run).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import psutil

from allasrun.auth import Token
from allasrun.job import TokenService
from allasrun.job.tokenservice import USER, Access
from tests.stack.stackutil import ALLASRUN, Stack, allasrun, make_bucket, read_env_file, user_env, wait_for

BUCKET = "bench-tokenservice"
LATENCY_REQUESTS = 10_000
RSS_REQUESTS = 2_000
RSS_CLIENT_CALLS = 5  # each of `rclone lsf` and `rclone copyto`, after the bench's own requests

# A third each of the client calls the issue counted, four at a time as a job's loop might run
# them. A failed call is counted, not fatal. Each runs under sh, not bash: bash would read
# BASH_ENV and hand swift the current token, which a job's direct calls do not get.
CLIENT_CALLS = """
call='"$@" > /dev/null 2>&1 || echo "$1 $2" >> "$FAILED"'
seq "$LSF" | xargs -P 4 -I{} sh -c "$call" sh rclone lsf "allas:$BUCKET/$RUN/"
seq "$COPY" | xargs -P 4 -I{} sh -c "$call" sh rclone copyto "$DATA" "allas:$BUCKET/$RUN/copy-{}"
seq "$LIST" | xargs -P 4 -I{} sh -c "$call" sh swift list "$BUCKET" --prefix "$RUN/"
"""

# Hands the bench the service's address and key (0600, whole or not at all), waits until the
# bench has made its requests, then lets rclone authenticate there too.
RSS_JOB = """
set -e
umask 077
printf '%s\\n%s\\n' "$ST_AUTH" "$ST_KEY" > "$HANDOFF.part"
mv "$HANDOFF.part" "$HANDOFF"
while [ ! -e "$GO" ]; do sleep 0.1; done
for n in $(seq "$N"); do
  rclone lsf "allas:$BUCKET/$RUN/" > /dev/null
  rclone copyto "$DATA" "allas:$BUCKET/$RUN/rss-$n"
done
"""

SERVICE_LINE = r"token service: (\d+) answer\(s\), (\d+) refusal\(s\), (\d+) µs each"


@dataclass(frozen=True)
class Cost:
    """What one run of client calls cost Keystone, from its log and the run's own stderr."""

    total: int
    ours: int  # allasrun's own logins, by its User-Agent; renewals among them
    renewals: int
    answers: str  # by the token service, from its line at stop; "-" without it
    seconds: float
    failed: Counter[str]  # client calls by kind
    everything: int  # every /auth/tokens line: also Swift's checks of new tokens and its own logins


def logged(pattern: str, stderr: str) -> Optional[re.Match[str]]:
    """The last match in a run's stderr: the summary lines come at the end."""
    matches = list(re.finditer(pattern, stderr))
    return matches[-1] if matches else None


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    """The run's stderr; a failed run is no measurement, so it stops the bench."""
    if result.returncode != 0:
        raise RuntimeError(f"allasrun exited {result.returncode}:\n{result.stderr}")
    return result.stderr


def client_env(stack: Stack, work: Path, name: str, **extra: str) -> dict[str, str]:
    """A fresh user with a password (an empty token cache: each run starts as a new user's)."""
    home = work / name
    home.mkdir()
    data = work / "small.txt"
    data.write_text("one small file\n")
    return user_env(stack, home, BUCKET=BUCKET, DATA=str(data), RUN=uuid.uuid4().hex, **extra)


def thirds(calls: int) -> dict[str, str]:
    """`calls` split into the three kinds, the remainder going to the first."""
    each, rest = divmod(calls, 3)
    return {kind: str(each + (n < rest)) for n, kind in enumerate(("LSF", "COPY", "LIST"))}


def everything(stack: Stack) -> int:
    """Keystone's whole token traffic: each new token also costs a check by Swift's middleware."""
    return stack.keystone_requests("/auth/tokens")


def keystone_cost(stack: Stack, work: Path, name: str, options: Sequence[str], calls: int) -> Cost:
    failed = work / f"{name}.failed"
    failed.touch()
    env = client_env(stack, work, name, FAILED=str(failed), **thirds(calls))
    before, ours_before, all_before = stack.keystone_requests(), stack.allasrun_logins(), everything(stack)
    start = time.perf_counter()
    stderr = succeeded(allasrun([*options, "--", "bash", "-c", CLIENT_CALLS], env, timeout=3600))
    seconds = time.perf_counter() - start
    renewals, service = logged(r"after (\d+) renewal\(s\)", stderr), logged(SERVICE_LINE, stderr)
    return Cost(
        total=stack.keystone_requests() - before,
        ours=stack.allasrun_logins() - ours_before,
        renewals=int(renewals[1]) if renewals else 0,
        answers=service[1] if service else "-",
        seconds=seconds,
        failed=Counter(failed.read_text().splitlines()),
        everything=everything(stack) - all_before,
    )


def failures(cost: Cost) -> str:
    kinds = ", ".join(f"{count} {kind}" for kind, count in cost.failed.items())
    return f"{sum(cost.failed.values())} ({kinds})" if cost.failed else "0"


def keystone_rows(stack: Stack, work: Path, calls: int) -> list[tuple[str, ...]]:
    before = keystone_cost(stack, work, "home-before", ["--no-token-service"], calls)
    after = keystone_cost(stack, work, "home-after", [], calls)
    split = " / ".join(thirds(calls).values())
    shown: dict[str, Callable[[Cost], str]] = {
        "client calls (rclone lsf / rclone copyto / swift list)": lambda _: split,
        "Keystone token requests, total": lambda cost: f"**{cost.total}**",
        "by rclone and swift": lambda cost: str(cost.total - cost.ours),
        "by allasrun (logins; renewals among them)": lambda cost: f"{cost.ours} ({cost.renewals})",
        "total per 1,000 client calls": lambda cost: f"{1000 * cost.total / calls:.1f}",
        "failed client calls": failures,
        "auth answers by the token service": lambda cost: cost.answers,
        "every `/auth/tokens` request (with Swift's checks of new tokens)": lambda cost: str(cost.everything),
        "wall time of the run": lambda cost: f"{cost.seconds:.0f} s",
    }
    return [(name, show(before), show(after)) for name, show in shown.items()]


def authenticate(access: Access) -> float:
    """Seconds of one Swift v1 auth over a fresh connection, as swift and rclone make them."""
    parts = urlsplit(access.url)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", parts.path, headers={"X-Auth-User": access.user, "X-Auth-Key": access.key})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    if response.status != 200 or not response.getheader("X-Auth-Token"):
        raise RuntimeError(f"token service answered {response.status} {response.reason}")
    return seconds


def round_trips(samples: list[float]) -> tuple[str, str]:
    """Median and p99, in µs."""
    return (
        f"{1e6 * statistics.median(samples):.0f} µs",
        f"{1e6 * statistics.quantiles(samples, n=100)[98]:.0f} µs",
    )


def latency_rows() -> list[tuple[str, ...]]:
    now = time.time()  # a token of a Fernet token's length, valid throughout
    token = Token("t" * 183, now, now + 8 * 3600, "http://127.0.0.1:9/v1/AUTH_bench", "project", "user")
    service = TokenService.open(lambda: token)
    if service is None:
        raise RuntimeError("the token service could not listen on 127.0.0.1")
    with service:
        samples = [authenticate(service.access) for _ in range(LATENCY_REQUESTS)]
    median, p99 = round_trips(samples)
    server = 1e6 * service.tally.busy_seconds / service.tally.answered
    return [
        ("sequential auth requests, fresh connection each", f"{service.tally.answered:,}"),
        ("client round trip, median", median),
        ("client round trip, p99", p99),
        ("server time per request (parse and answer)", f"**{server:.0f} µs** (target well under 1 ms)"),
    ]


def peak_rss(proc: subprocess.Popen[str]) -> int:
    """Highest RSS of the allasrun process (keeper and service; not its command) until it ends."""
    process, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    return peak


def handed_over(path: Path) -> Optional[Access]:
    if not path.exists():
        return None
    url, key = path.read_text().split()
    return Access(url, USER, key)


def rss_rows(stack: Stack, work: Path) -> list[tuple[str, ...]]:
    handoff, go = work / "access", work / "go"
    env = client_env(stack, work, "home-rss", HANDOFF=str(handoff), GO=str(go), N=str(RSS_CLIENT_CALLS))
    command = [*ALLASRUN, "--", "bash", "-c", RSS_JOB]
    with ThreadPoolExecutor(1) as pool:
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        peak = pool.submit(peak_rss, proc)
        access = wait_for(lambda: handed_over(handoff), timeout=120, what="the command's handoff file")
        try:
            samples = [authenticate(access) for _ in range(RSS_REQUESTS)]
        finally:
            go.touch()  # or the command, and this bench with it, would wait for ever
        _, stderr = proc.communicate()
    succeeded(subprocess.CompletedProcess(command, proc.returncode, "", stderr))
    median, p99 = round_trips(samples)
    service = logged(SERVICE_LINE, stderr)
    return [
        (
            "auth requests to the run's service",
            f"{RSS_REQUESTS:,} by the bench, then {2 * RSS_CLIENT_CALLS} rclone calls",
        ),
        ("client round trip, median / p99", f"{median} / {p99}"),
        ("service at stop: answers, server time each", f"{service[1]}, {service[3]} µs" if service else "-"),
        ("allasrun peak RSS", f"**{peak.result() / 2**20:.1f} MiB** (target <= 40 MB)"),
    ]


def print_table(title: str, header: Sequence[str], rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}\n\n| {' | '.join(header)} |\n|{' --- |' * len(header)}")
    for row in rows:
        print(f"| {' | '.join(row)} |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="client calls per run (default 1000)")
    args = parser.parse_args()
    stack = Stack(read_env_file(Path(os.environ["MINI_ALLAS_ENV"])))
    make_bucket(stack, BUCKET)
    with tempfile.TemporaryDirectory() as work:
        print_table(
            f"(a) Keystone token requests for {args.calls} client calls",
            ["measure", "before (`--no-token-service`)", "after (token service)"],
            keystone_rows(stack, Path(work), args.calls),
        )
        print_table("(b) latency per auth call, in process", ["measure", "result"], latency_rows())
        print_table("(c) keeper with the service running", ["measure", "result"], rss_rows(stack, Path(work)))


if __name__ == "__main__":
    main()

"""allasrun's stager against rclone, swift and curl on the same data.

rclone and swift move THREADS files at a time (rclone's default is 4); allasrun as it runs for
a user, choosing its own number (staging/pace.py), and once more with THREADS for downloads.

Issue 13's targets: (a) 2,000 files of 16 KiB: up at least 5x faster than rclone (<= 0.2x; tar
bundles), down in <= 0.5x the best of rclone and swift; (b) one 1 GiB file: <= 1.2x curl in each
direction, with verification on. Every tool starts cold (authenticates itself with the stack's
application credential) and writes to a fresh prefix or an empty directory. Needs MINI_ALLAS_ENV
(bench/run); PYTHONPATH, if set, is the allasrun that runs (`tested_code`). `--latency MS` puts
the object store MS milliseconds of round trip away (a relay, `LatencyRelay`), as Allas is from
a compute node: the lab's loopback has none, and round trips are what bundles and concurrency save.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, Protocol, TypeVar
from urllib.parse import urlsplit

from tests.stack.stackutil import ALLASRUN, Stack, read_env_file, reference_remote
from tests.stack.tcpproxy import LatencyRelay

THREADS = 8


def timed(command: Sequence[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one run of `command`; one that fails ends the benchmark, saying why."""
    start = time.perf_counter()
    done = subprocess.run(
        list(command),
        check=False,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode:
        tail = "\n".join(done.stderr.splitlines()[-5:])
        raise SystemExit(
            f"bench: {command[0]} exited {done.returncode}: {' '.join(command[1:4])} ...\n{tail}"
        )
    return time.perf_counter() - start


class Tools:
    """How each tool uploads a directory (or file) and downloads a prefix (or object)."""

    def __init__(self, stack: Stack, work: Path) -> None:
        self.stack = stack
        self.work = work
        self.rclone_conf = work / "rclone.conf"
        self.storage_url = stack.env["OS_STORAGE_URL"]  # every tool is given it: it may be a relay's
        self.rclone_conf.write_text(f"{reference_remote(stack)}storage_url = {self.storage_url}\n")
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(work),
            "OS_AUTH_URL": stack.env["OS_AUTH_URL"],
            "OS_AUTH_TYPE": "v3applicationcredential",
            "OS_APPLICATION_CREDENTIAL_ID": stack.env["MINI_ALLAS_APP_CRED_ID"],
            "OS_APPLICATION_CREDENTIAL_SECRET": stack.env["MINI_ALLAS_APP_CRED_SECRET"],
            "OS_IDENTITY_API_VERSION": "3",
            "OS_REGION_NAME": stack.env["OS_REGION_NAME"],
            "ALLASRUN_CACHE_DIR": str(work / "no-cache"),
            **tested_code(),
        }

    def allasrun(self, header: str, name: str, threads: Optional[int] = None) -> float:
        """allasrun as a user runs it: its own number of transfers at a time, unless `threads`."""
        script = self.work / f"{name}.sh"
        fixed = f"#ALLAS option threads={threads}\n" if threads else ""
        script.write_text(f"#!/bin/sh\n{header}\n{fixed}true\n")
        command = [*ALLASRUN, "run", "--no-cache", "--storage-url", self.storage_url, str(script)]
        return timed(command, self.env, self.work)

    def rclone(self, source: str, target: str) -> float:
        flags = ["--transfers", str(THREADS), "--checkers", str(THREADS)]
        return timed(
            ["rclone", "--config", str(self.rclone_conf), "copy", *flags, source, target], self.env, self.work
        )

    def swift(self, *args: str) -> float:
        """The swift CLI, told the storage URL: with an application credential it takes the
        catalog's first object store whatever OS_REGION_NAME says (on the radosgw round it
        reached Swift, measured), so its radosgw figures before 2026-12-01 were Swift's."""
        storage = ["--os-storage-url", self.storage_url]
        return timed(["/usr/bin/swift", *storage, *args], self.env, self.work)

    def clean(self) -> None:
        purge(self.rclone_conf, self.env, [f"ref:{b}" for b in ("bench-a", "bench-b", "bench-b_segments")])


def purge(config: Path, env: dict[str, str], remotes: Sequence[str]) -> None:
    """`rclone purge` each of `remotes`; one that is not there is fine."""
    for remote in remotes:
        subprocess.run(
            ["rclone", "--config", str(config), "purge", remote], env=env, check=False, capture_output=True
        )


def many_files(tools: Tools, count: int) -> list[tuple[str, float]]:
    data = tools.work / "many"
    data.mkdir()
    for n in range(count):
        (data / f"f{n:05d}.bin").write_bytes(os.urandom(16 * 1024))
    rows = [
        ("upload allasrun", tools.allasrun("#ALLAS stage-out many/ bench-a/allasrun/", "out-a")),
        ("upload rclone", tools.rclone(str(data), "ref:bench-a/rclone")),
        (
            "upload swift",
            tools.swift(
                "upload", "--object-threads", str(THREADS), "--object-name", "swift", "bench-a", str(data)
            ),
        ),
        ("download allasrun", tools.allasrun("#ALLAS stage-in bench-a/rclone/ in-allasrun/", "in-a")),
        (
            f"download allasrun, {THREADS} at a time",
            tools.allasrun("#ALLAS stage-in bench-a/rclone/ in-fixed/", "in-fixed", THREADS),
        ),
        ("download rclone", tools.rclone("ref:bench-a/rclone", str(tools.work / "in-rclone"))),
        (
            "download swift",
            tools.swift(
                "download",
                "--object-threads",
                str(THREADS),
                "--prefix",
                "rclone/",
                "-D",
                "in-swift",
                "bench-a",
            ),
        ),
    ]
    complete(tools.work, count, ["in-allasrun", "in-fixed", "in-rclone", "in-swift"])
    return rows


def complete(work: Path, count: int, folders: Sequence[str]) -> None:
    """Each tool's download holds every file: a time for half the files is no time at all.

    (A stage-in from radosgw once got 1,000 of 2,000 objects, and its time looked good.)
    """
    for folder in folders:
        got = sum(1 for path in (work / folder).rglob("*") if path.is_file())
        if got != count:
            raise SystemExit(f"bench: {folder} holds {got} files, not {count}: that download is incomplete")


def one_big(tools: Tools, size: int) -> list[tuple[str, float]]:
    big = tools.work / "big"
    big.mkdir()
    with open(big / "big.bin", "wb") as out:
        for _ in range(size // (64 * 1024 * 1024)):
            out.write(os.urandom(64 * 1024 * 1024))
    curl = tools.work / "curl.sh"
    credential = {
        "id": tools.env["OS_APPLICATION_CREDENTIAL_ID"],
        "secret": tools.env["OS_APPLICATION_CREDENTIAL_SECRET"],
    }
    identity = {"methods": ["application_credential"], "application_credential": credential}
    (tools.work / "auth.json").write_text(json.dumps({"auth": {"identity": identity}}))
    curl.write_text(  # curl authenticates by itself too: one POST, then the transfer
        "set -e\n"
        'token=$(curl -si -X POST -H "Content-Type: application/json" -d @auth.json '
        '"$OS_AUTH_URL/auth/tokens" | tr -d "\\r" | sed -n "s/^[Xx]-[Ss]ubject-[Tt]oken: //p")\n'
        'auth="X-Auth-Token: $token"\n'
        'if [ "$1" = put ]; then curl -sf -X PUT -H "$auth" -T big/big.bin "$URL/bench-b/curl/x"\n'
        'else curl -sf -H "$auth" -o curl-big.bin "$URL/bench-b/rclone/big.bin"; fi\n'
    )
    env = {**tools.env, "URL": tools.storage_url}
    tools.swift("post", "bench-b")
    return [
        ("upload allasrun", tools.allasrun("#ALLAS stage-out big/big.bin bench-b/allasrun/", "out-b")),
        ("upload rclone", tools.rclone(str(big / "big.bin"), "ref:bench-b/rclone")),
        (
            "upload swift",
            tools.swift("upload", "--object-name", "swift/big.bin", "bench-b", str(big / "big.bin")),
        ),
        ("upload curl", timed(["sh", str(curl), "put"], env, tools.work)),
        ("download allasrun", tools.allasrun("#ALLAS stage-in bench-b/rclone/big.bin in-b/", "in-b")),
        ("download rclone", tools.rclone("ref:bench-b/rclone/big.bin", str(tools.work / "in-rclone-b"))),
        ("download swift", tools.swift("download", "-o", "swift-big.bin", "bench-b", "rclone/big.bin")),
        ("download curl", timed(["sh", str(curl), "get"], env, tools.work)),
    ]


Targets = dict[str, tuple[str, float]]  # direction -> (the tools compared with, the ratio to meet)


def table(title: str, rows: list[tuple[str, float]], targets: Targets) -> None:
    """Each tool's time and its ratio to the best of the direction's reference tools."""
    print(f"\n**{title}**\n\n| tool | seconds | ratio |\n| --- | --- | --- |")
    times = dict(rows)
    for direction, (reference, target) in targets.items():
        others = [
            times[f"{direction} {tool}"] for tool in reference.split(",") if f"{direction} {tool}" in times
        ]
        best = min(others)
        for name, seconds in rows:
            if name.startswith(direction):
                mark = f" (target <= {target}x)" if name.endswith("allasrun") else ""
                print(f"| {name} | {seconds:.1f} | {seconds / best:.2f}x of best {reference}{mark} |")


Rows = list[tuple[str, float]]


class Cleaned(Protocol):
    """Tools that can remove what the benchmark stored: the lab's radosgw has a 32 GiB disk."""

    def clean(self) -> None:
        """Delete every bucket the cases wrote to, and what is in it."""


T = TypeVar("T", bound=Cleaned)


def run_cases(
    description: str,
    make: Callable[[Stack, Path], T],
    many: Callable[[T, int], Rows],
    big: Callable[[T, int], Rows],
    targets: tuple[Targets, Targets],
    relayed: Sequence[str],
    over: str = "",
) -> None:
    """The cases `--repeat` times, each time with fresh tools in a fresh directory; the tables give
    each tool's median against `targets` (many files, one big file). The lab shares 2 cores with
    its servers: one run of a case can be 1.5x another's. With `--latency`, the stack's URLs named
    by `relayed` (its env file's variables) lead through a LatencyRelay."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cases", default="a,b", help="a: many small files, b: one big file")
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS", help="round trip to the store")
    args = parser.parse_args()
    with contextlib.ExitStack() as relays:
        env = dict(read_env_file(Path(os.environ["MINI_ALLAS_ENV"])))
        if args.latency:
            over += f", {args.latency:g} ms round trip"
            for name in (name for name in relayed if name in env):
                env[name] = relayed_url(env[name], args.latency / 1000, relays)
        run_all(Stack(env), args, make, many, big, targets, over)


def relayed_url(url: str, rtt: float, relays: contextlib.ExitStack) -> str:
    """`url` with its port replaced by that of a new LatencyRelay in front of it."""
    parts = urlsplit(url)
    relay = relays.enter_context(LatencyRelay(parts.port or 80, rtt))
    return parts._replace(netloc=f"127.0.0.1:{relay.port}").geturl()


def run_all(
    stack: Stack,
    args: argparse.Namespace,
    make: Callable[[Stack, Path], T],
    many: Callable[[T, int], Rows],
    big: Callable[[T, int], Rows],
    targets: tuple[Targets, Targets],
    over: str,
) -> None:
    cases = set(args.cases.split(","))
    a_runs: list[Rows] = []
    b_runs: list[Rows] = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as work:
            tools = make(stack, Path(work))
            try:
                if "a" in cases:
                    a_runs.append(many(tools, args.files))
                if "b" in cases:
                    b_runs.append(big(tools, args.big_mib * 1024 * 1024))
            finally:
                tools.clean()
    runs = f", median of {args.repeat} runs" if args.repeat > 1 else ""
    print(f"\nback end: {stack.backend}")
    if a_runs:
        title = f"(a) {args.files} files of 16 KiB{over}, {THREADS} transfers at a time but allasrun's{runs}"
        table(title, medians(a_runs), targets[0])
    if b_runs:
        table(f"(b) one {args.big_mib} MiB file{over}{runs}", medians(b_runs), targets[1])


def tested_code() -> dict[str, str]:
    """PYTHONPATH, when set, for allasrun's runs: a benchmark of a snapshot of the code while the
    working tree changes (an editable install would run whatever is there at each moment)."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def medians(runs: Sequence[Rows]) -> Rows:
    """Each row's median over the runs, in the rows' order."""
    return [(name, statistics.median(dict(run)[name] for run in runs)) for name, _ in runs[0]]


def main() -> None:
    run_cases(
        __doc__ or "",
        Tools,
        many_files,
        one_big,
        (
            {"upload": ("rclone", 0.2), "download": ("rclone,swift", 0.5)},
            {"upload": ("curl", 1.2), "download": ("curl", 1.2)},
        ),
        ("OS_STORAGE_URL",),
    )


if __name__ == "__main__":
    main()

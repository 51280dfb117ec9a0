"""allasrun's peak memory against the number of files it moves (issue 13: under 150 MB at 100,000).

A stage-out of `--files` small files (64 bytes each: the count is what is measured, not the
bytes) to a fresh prefix, then a stage-in of that prefix into an empty directory, each one
`allasrun run` under GNU time, whose maximum resident set size (`%M`) is allasrun's own peak:
the job's command is `true`, and allasrun is the process time waits for. A smaller count is run
first, so that the table shows how the peak grows with the count. Needs MINI_ALLAS_ENV
(bench/run); PYTHONPATH, if set, is the allasrun that runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.staging import Tools, complete
from tests.stack.stackutil import ALLASRUN, Stack, read_env_file

TARGET_MB = 150


def peak(tools: Tools, header: str, name: str) -> tuple[float, float]:
    """Peak RSS in MB and wall seconds of one `allasrun run` of a script with `header`."""
    script = tools.work / f"{name}.sh"
    script.write_text(f"#!/bin/sh\n{header}\ntrue\n")  # allasrun's own transfers at a time
    measured = tools.work / f"{name}.rss"
    start = time.perf_counter()
    subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(measured), *ALLASRUN, "run", "--no-cache", str(script)],
        env=tools.env,
        cwd=tools.work,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seconds = time.perf_counter() - start
    return int(measured.read_text().split()[-1]) / 1024, seconds


def one_count(tools: Tools, count: int) -> list[tuple[str, float, float]]:
    """Stage-out of `count` files, then stage-in of them: (case, MB, seconds) each."""
    data = tools.work / f"many-{count}"
    data.mkdir()
    for n in range(count):
        (data / f"f{n:06d}.txt").write_bytes(os.urandom(32).hex().encode())
    prefix = f"bench-m/{count}/"
    out = peak(tools, f"#ALLAS stage-out {data.name}/ {prefix}", f"out-{count}")
    back = peak(tools, f"#ALLAS stage-in {prefix} in-{count}/", f"in-{count}")
    complete(tools.work, count, [f"in-{count}"])
    return [(f"stage-out of {count:,} files", *out), (f"stage-in of {count:,} objects", *back)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--smaller", type=int, default=10_000, help="a first, smaller count (0: none)")
    args = parser.parse_args()
    stack = Stack(read_env_file(Path(os.environ["MINI_ALLAS_ENV"])))
    print(f"\nback end: {stack.backend}\n\n| case | peak RSS | seconds |\n| --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as work:
        tools = Tools(stack, Path(work))
        try:
            for count in [c for c in (args.smaller, args.files) if c]:
                for case, megabytes, seconds in one_count(tools, count):
                    print(
                        f"| {case} | {megabytes:.0f} MB (target < {TARGET_MB} MB) | {seconds:.1f} |",
                        flush=True,
                    )
        finally:  # the swift CLI deletes in bulk (10,000 a request), rclone one by one
            tools.swift("delete", "bench-m")


if __name__ == "__main__":
    main()

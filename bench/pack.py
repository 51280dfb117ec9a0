"""`--pack` and `--unpack` against rclone and a-put/a-get on 2,000 files of 16 KiB (issue 14).

Up: allasrun `--pack` (one `.tar` and its `_ameta`), `--pack --compress`, allasrun's file-by-file
stage-out (tar bundles), rclone copy, and a-put when `A_COMMANDS` names a folder holding CSC's
a-commands (allas-cli-utils; CI cannot fetch them, so they are run only where they are at hand).
Down: `--unpack` of the pack, allasrun's and rclone's file-by-file download, and a-get. a-put
and a-get run inside `allasrun run`, as a job runs them (they need its `allas:` remote), so their
times include allasrun's start (about 0.3 s here), as allasrun's own rows do. The data is random,
which zstd cannot shrink: `--compress` shows its cost, not its gain. Needs MINI_ALLAS_ENV (bench/run);
PYTHONPATH, if set, is the allasrun that runs; `--latency MS` as in bench/staging.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from bench.staging import THREADS, Rows, Tools, complete, medians, purge, relayed_url, timed
from tests.stack.stackutil import ALLASRUN, Stack, read_env_file

BUCKET = "bench-pack"


def a_command(tools: Tools, folder: Path, name: str, line: str) -> float:
    """One a-command, in a job script run by allasrun, from `folder`."""
    script = tools.work / f"{name}.sh"
    script.write_text(f"#!/bin/bash\nset -e\ncd {folder}\n{line} > /dev/null\n")
    script.chmod(0o755)
    env = {**tools.env, "PATH": f"{os.environ['A_COMMANDS']}:{tools.env['PATH']}"}
    command = [*ALLASRUN, "run", "--no-cache", "--storage-url", tools.storage_url, str(script)]
    return timed(command, env, tools.work)


def cases(tools: Tools, count: int) -> Rows:
    data = tools.work / "many"
    data.mkdir()
    for n in range(count):
        (data / f"f{n:05d}.bin").write_bytes(os.urandom(16 * 1024))
    rows = [
        ("upload allasrun --pack", tools.allasrun(f"#ALLAS stage-out many {BUCKET}/pack/ --pack", "pack")),
        (
            "upload allasrun --pack --compress",
            tools.allasrun(f"#ALLAS stage-out many {BUCKET}/zst/ --pack --compress", "zst"),
        ),
        ("upload allasrun, file by file", tools.allasrun(f"#ALLAS stage-out many/ {BUCKET}/files/", "files")),
        ("upload rclone", tools.rclone(str(data), f"ref:{BUCKET}/rclone")),
    ]
    if os.environ.get("A_COMMANDS"):
        line = f"a-put -s -b {BUCKET}/aput many"
        rows.append(("upload a-put", a_command(tools, tools.work, "a-put", line)))
    rows += [
        (
            "download allasrun --unpack",
            tools.allasrun(f"#ALLAS stage-in {BUCKET}/pack/many.tar in-unpack/ --unpack", "unpack"),
        ),
        (
            "download allasrun --unpack (.tar.zst)",
            tools.allasrun(f"#ALLAS stage-in {BUCKET}/zst/many.tar.zst in-unzst/ --unpack", "unzst"),
        ),
        (
            "download allasrun, file by file",
            tools.allasrun(f"#ALLAS stage-in {BUCKET}/files/ in-files/", "in"),
        ),
        ("download rclone", tools.rclone(f"ref:{BUCKET}/rclone", str(tools.work / "in-rclone"))),
    ]
    folders = ["in-unpack/many", "in-unzst/many", "in-files", "in-rclone"]
    if os.environ.get("A_COMMANDS"):
        (tools.work / "in-aget").mkdir()
        line = f"a-get {BUCKET}/aput/many.tar || true"  # it exits 1 after a good download: `complete` checks
        rows.append(("download a-get", a_command(tools, tools.work / "in-aget", "a-get", line)))
        folders.append("in-aget/many")
    complete(tools.work, count, folders)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS", help="round trip to the store")
    args = parser.parse_args()
    over = f", {args.latency:g} ms round trip" if args.latency else ""
    runs: list[Rows] = []
    with contextlib.ExitStack() as relays:
        env = dict(read_env_file(Path(os.environ["MINI_ALLAS_ENV"])))
        if args.latency:
            env["OS_STORAGE_URL"] = relayed_url(env["OS_STORAGE_URL"], args.latency / 1000, relays)
        stack = Stack(env)
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as work:
                tools = Tools(stack, Path(work))
                try:
                    runs.append(cases(tools, args.files))
                finally:
                    purge(tools.rclone_conf, tools.env, [f"ref:{BUCKET}", f"ref:{BUCKET}_segments"])
    rows = medians(runs)
    best = {
        direction: min(s for n, s in rows if n == f"{direction} rclone")
        for direction in ("upload", "download")
    }
    repeat = f", median of {args.repeat} runs" if args.repeat > 1 else ""
    print(f"\nback end: {stack.backend}\n")
    print(f"**{args.files} files of 16 KiB{over}, rclone {THREADS} at a time{repeat}**\n")
    print("| tool | seconds | ratio to rclone |\n| --- | --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / best[name.split()[0]]:.2f}x |")


if __name__ == "__main__":
    main()

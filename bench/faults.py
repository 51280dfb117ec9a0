"""The kill soak: allasrun SIGKILLed at N random moments of stage-in and stage-out, each followed by a re-run.

Issue 11, item 7 asks for 20 kills; CI runs 4 (FAULT_KILLS) to stay in its time budget, so the
20 run here. This runs the test itself (tests/stack/test_faults_transfers.py::
test_sigkill_at_random_moments_then_a_rerun, every assertion of it) once per back end, on the
stack of MINI_ALLAS_ENV and on radosgw's when MINI_RGW_ENV is set (bench/run starts both), and
prints what the test recorded (FAULT_SOAK_REPORT), not what it is expected to find. A failure
prints the seed that replays it (--seed, or FAULT_SEED for the test alone) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tests.stack.stackutil import ROOT, Stack, read_env_file

TEST = "tests/stack/test_faults_transfers.py::test_sigkill_at_random_moments_then_a_rerun"
NAMES = {"swift": "OpenStack Swift", "rgw": "Ceph radosgw"}


@dataclass(frozen=True)
class SoakRun:
    """One back end's run: what the test recorded, how pytest ended, and how long it took."""

    backend: str
    report: dict[str, Any]
    status: int
    output: str
    wall: float

    @property
    def kills(self) -> list[dict[str, Any]]:
        """The kills that happened (a failed round stops the test: the later ones never ran)."""
        return [kill for kill in self.report.get("kills", []) if kill["phase"]]

    @property
    def failures(self) -> int:
        """Kills whose round did not pass every check; a run that failed outside a round counts one."""
        failed = sum(1 for kill in self.kills if not kill["files_checked"])
        return failed or int(self.status != 0)


def soak(env_file: Path, kills: int, seed: Optional[int]) -> SoakRun:
    """Run the kill test against the stack of `env_file` and read what it recorded."""
    backend = Stack(read_env_file(env_file)).backend
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "soak.json"
        env = {
            **os.environ,
            "MINI_ALLAS_ENV": str(env_file),
            "FAULT_KILLS": str(kills),
            "FAULT_SOAK_REPORT": str(report),
        }
        if seed is not None:
            env["FAULT_SEED"] = str(seed)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST],
            check=False,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wall = time.monotonic() - started
        found = json.loads(report.read_text()) if report.exists() else {}
    return SoakRun(backend, found, done.returncode, done.stdout, wall)


def moment(kill: dict[str, Any], files: int) -> str:
    """Where a kill struck, as far as what it left shows."""
    if kill["phase"] == "stage-in":
        if kill["parts"]:
            return "stage-in, a file half written"
        if kill["landed"] == 0:
            return "stage-in, before the first file"
        return "stage-in, between files" if kill["landed"] < files else "stage-in, all files in"
    if kill["landed"] == 0:
        return "stage-out, segments only" if kill["segments"] else "stage-out, nothing stored yet"
    return "stage-out, some stored" if kill["landed"] < files else "stage-out, all stored"


def total(kills: list[dict[str, Any]], key: str) -> str:
    """The sum of one figure over the kills; `?` when a round did not get as far as measuring it."""
    values = [kill[key] for kill in kills]
    return "?" if any(value is None for value in values) else str(sum(values))


def summary(runs: list[SoakRun]) -> None:
    print(
        "| back end | kills | at which moments | re-runs | files | bytes checked | failures "
        "| temporary files left | orphaned segments left | processes left | wall time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        files, kills = run.report.get("files", 0), run.kills
        moments = Counter(moment(kill, files) for kill in kills)
        where = "; ".join(f"{count} {name}" for name, count in sorted(moments.items()))
        reruns = sum(1 for kill in kills if kill["rerun"] is not None)
        checked = sum(kill["files_checked"] for kill in kills)
        size = sum(kill["bytes_checked"] for kill in kills)
        print(
            f"| {NAMES.get(run.backend, run.backend)} | {len(kills)} | {where} | {reruns} "
            f"| {files} per run, {checked} copies compared | {size / 2**20:.1f} MiB | {run.failures} "
            f"| {total(kills, 'parts_left')} | {total(kills, 'orphans_left')} "
            f"| {total(kills, 'processes_left')} | {run.wall:.0f} s |"
        )


def details(run: SoakRun) -> None:
    report = run.report
    whole, staged_in = report.get("whole_run", 0), report.get("staged_in", 0)
    print(
        f"\n**{NAMES.get(run.backend, run.backend)}**: FAULT_SEED={report.get('seed', '?')}, "
        f"an unkilled run {whole:.1f} s, its stage-in over at {staged_in:.1f} s\n"
    )
    print(
        "| kill | at | moment | processes at the kill | .part | segments | re-run exit "
        "| .part / orphaned segments / processes after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for number, kill in enumerate(run.kills, 1):
        after = f"{kill['parts_left']} / {kill['orphans_left']} / {kill['processes_left']}"
        at = f"{kill['delay']:.2f} s" + (" after stage-in" if kill.get("after_stage_in") else "")
        print(
            f"| {number} | {at} | {moment(kill, report['files'])} ({kill['landed']} landed) "
            f"| {kill['processes']} | {kill['parts']} | {kill['segments']} | {kill['rerun']} | {after} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, help="replay a run (the seed a report printed)")
    args = parser.parse_args()
    env_files = [os.environ[name] for name in ("MINI_ALLAS_ENV", "MINI_RGW_ENV") if os.environ.get(name)]
    runs = [soak(Path(env_file), args.kills, args.seed) for env_file in env_files]
    print(f"**allasrun SIGKILLed at {args.kills} random moments, each followed by a re-run**\n")
    summary(runs)
    for run in runs:
        details(run)
        if run.failures:
            print(f"\nFAILED on {run.backend} (replay: --seed {run.report.get('seed', '?')}):\n")
            print(run.output[-4000:])
    sys.exit(1 if any(run.failures for run in runs) else 0)


if __name__ == "__main__":
    main()

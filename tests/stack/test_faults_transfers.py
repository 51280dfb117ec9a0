"""Faults in the middle of a transfer: connections cut, a full disk, allasrun SIGKILLed.

Each is injected between allasrun and the real store (Swift or radosgw), never by stopping a
shared service: a relay that cuts connections at random byte offsets (`CuttingRelay`), a
1 MiB tmpfs (MINI_FULL_DIR), SIGKILL at a random moment of a run. What must hold: every file
lands intact or is reported; no object in the store differs from its source (checked with
Debian's rclone through the direct storage URL, not allasrun); no final local name holds a
partial or corrupt file; after a re-run, no `.part` file and no orphaned segment.

The randomness is seeded and the seed printed (pytest shows it for a failing test); set
FAULT_SEED to replay one. Threads decide which connection comes first, so a replay repeats
the same cut offsets, not always on the same requests. FAULT_KILLS sets how many times allasrun
is killed (CI: 4, to stay in its time budget; the issue's 20: FAULT_KILLS=20); with
FAULT_SOAK_REPORT, that test writes what each kill and re-run left there as JSON (bench/faults.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import psutil
import pytest

from allasrun import errors
from tests.stack.stackutil import ALLASRUN, Stack, allasrun, app_credential_env, make_bucket, rclone, wait_for
from tests.stack.tcpproxy import Relay, close_write, recv, send

MIB = 1024 * 1024
SEGMENT = MIB
ERROR_LINE = re.compile(r"^allasrun: (?:\S+ )?error: .*$", re.MULTILINE)
REQUEST_LINE = re.compile(rb"^(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")
KILLS = int(os.environ.get("FAULT_KILLS", "4"))


def seed() -> int:
    """FAULT_SEED, or a new one; printed, so that a failure can be replayed."""
    chosen = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"FAULT_SEED={chosen}")
    return chosen


# ---------------------------------------------------------------- a relay that cuts


@dataclass(frozen=True)
class Cut:
    """One connection cut: which way, after how many bytes of that way, how, and in which request."""

    connection: int
    direction: str  # "request" (allasrun to the store) or "response"
    offset: int
    how: str  # "reset" (RST) or "truncate" (FIN: the bytes so far look like all there is)
    request: str
    targeted: bool


class _Wire:
    """One relayed connection: bytes passed each way, where it is to be cut, its last request."""

    def __init__(self, number: int, client: socket.socket, server: socket.socket) -> None:
        self.number, self.client, self.server = number, client, server
        self.passed = {"request": 0, "response": 0}
        self.cut_at: dict[str, int] = {}
        self.targeted = {"request": False, "response": False}
        self.request = ""
        self.response_targeted = False  # the next response is a targeted GET's: cut in its body
        self.done = threading.Event()


class CuttingRelay(Relay):
    """Cuts a share (`rate`) of connections at a random byte offset (below `span`) of one direction,
    by a reset or a truncation; and the first request whose path contains each `targets` marker
    in its body: a PUT's request body, a GET's response body (mid-segment, for a segment or a
    large object). Every cut is recorded in `cuts`. A pause of `pace` s after each chunk of a
    response slows downloads, so that a kill can find one half written."""

    def __init__(
        self, upstream_port: int, seed: int, rate: float, targets: tuple[str, ...], pace: float
    ) -> None:
        super().__init__(upstream_port)
        self.span, self.pace = 3 * MIB, pace
        self.rng = random.Random(seed)
        self.rate = rate
        self.targets = [target.encode() for target in targets]
        self.cuts: list[Cut] = []
        self._count = 0
        self._draw = threading.Lock()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        with self._draw:
            self._count += 1
            wire = _Wire(self._count, client, server)
            if self.rng.random() < self.rate:
                wire.cut_at[self.rng.choice(("request", "response"))] = self.rng.randrange(self.span)
        threading.Thread(target=self._pump, args=(wire, "request", client, server), daemon=True).start()
        threading.Thread(target=self._pump, args=(wire, "response", server, client), daemon=True).start()

    def _pump(self, wire: _Wire, direction: str, source: socket.socket, target: socket.socket) -> None:
        while data := recv(source):
            if wire.done.is_set():
                return  # the other way was cut: no FIN from here
            start = wire.passed[direction]
            self._aim(wire, direction, data)
            at = wire.cut_at.get(direction)
            if at is not None and start + len(data) > at:
                send(target, data[: max(at - start, 0)])
                self._cut(wire, direction, at)
                return
            wire.passed[direction] += len(data)
            if not send(target, data):
                break
            if direction == "response":
                time.sleep(self.pace)
        if not wire.done.is_set():
            close_write(target)

    def _aim(self, wire: _Wire, direction: str, data: bytes) -> None:
        """Note each request; aim a cut inside the body of a targeted one."""
        if direction == "request" and (line := REQUEST_LINE.match(data)):
            wire.request = f"{line[1].decode()} {line[2].decode(errors='replace')}"
            whole = line[1] in (b"GET", b"PUT") and b"?" not in line[2]  # a body, not a manifest
            marker = next((m for m in self.targets if whole and m in line[2]), None)
            if marker is None:
                return
            with self._draw:
                self.targets.remove(marker)
            if line[1] == b"PUT":
                self._aim_body(wire, "request", data)
            else:
                wire.response_targeted = True
        elif direction == "response" and wire.response_targeted and data.startswith(b"HTTP/1."):
            wire.response_targeted = False
            self._aim_body(wire, "response", data)

    def _aim_body(self, wire: _Wire, direction: str, data: bytes) -> None:
        head = data.find(b"\r\n\r\n") + 4
        length = re.search(rb"(?i)\r\ncontent-length: *([0-9]+)", data[:head])
        if head < 4 or not length or int(length[1]) < 2:
            return
        with self._draw:
            wire.cut_at[direction] = wire.passed[direction] + head + self.rng.randrange(1, int(length[1]))
        wire.targeted[direction] = True

    def _cut(self, wire: _Wire, direction: str, at: int) -> None:
        """Reset or truncate both sides.

        shutdown first: a socket another thread is blocked reading from is not released (and
        sends no RST) by close alone. SHUT_RD wakes that reader and sends nothing; SHUT_RDWR
        sends the FIN of a truncation.
        """
        with self._draw:
            how = self.rng.choice(("reset", "truncate"))
            self.cuts.append(Cut(wire.number, direction, at, how, wire.request, wire.targeted[direction]))
        wire.done.set()
        for sock in (wire.client, wire.server):
            with contextlib.suppress(OSError):
                if how == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD if how == "reset" else socket.SHUT_RDWR)
            sock.close()


@contextlib.contextmanager
def cutting(
    stack: Stack, seed: int, targets: tuple[str, ...], rate: float = 0.5, pace: float = 0.0
) -> Iterator[tuple[CuttingRelay, str]]:
    """A cutting relay in front of the store, and the storage URL through it."""
    store = urlparse(stack.env["OS_STORAGE_URL"])
    assert store.port is not None
    with CuttingRelay(store.port, seed, rate, targets, pace) as relay:
        yield relay, f"http://127.0.0.1:{relay.port}{store.path}"
    print(f"{len(relay.cuts)} cut(s):", *relay.cuts, sep="\n  ")


# ---------------------------------------------------------------- sources and what landed


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_sources(directory: Path, rng: random.Random) -> dict[str, str]:
    """Small files of random sizes and one of 2.5 segments (an SLO): relative name -> MD5."""
    sizes = {f"small-{n}.bin": rng.randrange(0, 300_000) for n in range(5)}
    sizes["sub/large.bin"] = 2 * SEGMENT + SEGMENT // 2
    sums = {}
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
        sums[name] = md5(data)
    return sums


def local_sums(directory: Path) -> dict[str, str]:
    """Every file under `directory` (hidden ones too): relative name -> MD5."""
    return {
        p.relative_to(directory).as_posix(): md5(p.read_bytes()) for p in directory.rglob("*") if p.is_file()
    }


def stored_sums(stack: Stack, workdir: Path, location: str) -> dict[str, str]:
    """Every object under `bucket/prefix/`, read whole through the direct storage URL: name -> MD5."""
    copy = workdir / f"stored-{uuid.uuid4().hex[:8]}"
    rclone(stack, workdir, "copy", f"ref:{location}", str(copy))
    return local_sums(copy) if copy.exists() else {}


def listed(stack: Stack, workdir: Path, location: str) -> list[str]:
    """The objects under `location` (`bucket/prefix/`), listed through the direct storage URL."""
    return rclone(stack, workdir, "lsf", "-R", "--files-only", f"ref:{location}").stdout.split()


def segments_of(stack: Stack, workdir: Path, bucket: str, name: str) -> list[str]:
    """The objects under `<bucket>_segments/<name>/`: the large object's segments, and any orphan."""
    return listed(stack, workdir, f"{bucket}_segments/{name}/")


def intact_or_reported(sums: dict[str, str], got: dict[str, str], stderr: str) -> None:
    """Every source's copy equals it; one that is absent is named in the log."""
    for name, expected in sums.items():
        if name in got:
            assert got[name] == expected, f"{name}: a corrupt copy\n{stderr}"
        else:
            assert name in stderr, f"{name}: neither landed nor reported\n{stderr}"
    assert set(got) <= set(sums), f"unexpected files {set(got) - set(sums)}"


def script(directory: Path, header: str, body: str = "true") -> Path:
    path = directory / "job.sh"
    path.write_text(f"#!/bin/sh\n{header.strip()}\n{body}\n")
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------- 5: connections cut


def test_connections_cut_at_random_points(stack: Stack, home: Path, tmp_path: Path) -> None:
    """Stage-out, then stage-in, of small files and a large object through a relay that cuts."""
    chosen = seed()
    bucket, prefix = "fault-transfers-cut", f"run-{uuid.uuid4().hex[:12]}/"
    source = tmp_path / "src"
    sums = make_sources(source, random.Random(chosen))
    env = app_credential_env(stack, home)
    out = script(tmp_path, f"#ALLAS stage-out src/ {bucket}/{prefix}\n#ALLAS option segment-size={SEGMENT}")
    with cutting(stack, chosen, (f"{bucket}_segments/{prefix}",)) as (relay, url):
        sent = allasrun(["run", "--storage-url", url, str(out)], env, cwd=tmp_path)
    assert "Traceback" not in sent.stderr and sent.returncode in (0, errors.EXIT_STAGE_OUT), sent.stderr
    assert any(cut.targeted for cut in relay.cuts), "no cut inside a segment's upload"
    intact_or_reported(sums, stored_sums(stack, tmp_path, f"{bucket}/{prefix}"), sent.stderr)
    if sent.returncode:  # what did not land goes now, straight to the store
        finished = allasrun(["run", str(out)], env, cwd=tmp_path)
        assert finished.returncode == 0, finished.stderr
    assert stored_sums(stack, tmp_path, f"{bucket}/{prefix}") == sums
    assert len(segments_of(stack, tmp_path, bucket, f"{prefix}sub/large.bin")) == 3  # no orphan

    into = tmp_path / "dst"
    fetch = script(tmp_path, f"#ALLAS stage-in {bucket}/{prefix} dst/")
    with cutting(stack, chosen + 1, (f"{bucket}/{prefix}sub/large.bin",)) as (relay, url):
        got = allasrun(["run", "--storage-url", url, str(fetch)], env, cwd=tmp_path)
    assert "Traceback" not in got.stderr and got.returncode in (0, errors.EXIT_STAGE_IN), got.stderr
    assert any(cut.targeted for cut in relay.cuts), "no cut inside the large object's download"
    fetched = local_sums(into) if into.exists() else {}
    intact_or_reported(sums, fetched, got.stderr)  # a `.part` left would be an unexpected file
    if got.returncode == 0:
        assert fetched == sums


# ---------------------------------------------------------------- 6: disk full


@pytest.fixture
def full_dir() -> Iterator[Path]:
    """A directory of this test's on with-stack's 1 MiB tmpfs, removed after."""
    mount = os.environ.get("MINI_FULL_DIR", "")
    if not mount or not os.path.ismount(mount):
        pytest.skip("no small file system to fill (stack/with-stack --slurm mounts one: MINI_FULL_DIR)")
    directory = Path(mount) / f"fault-transfers-{uuid.uuid4().hex[:12]}"
    directory.mkdir()
    try:
        yield directory
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False, timeout=60)


def test_disk_full_during_stage_in(stack: Stack, home: Path, tmp_path: Path, full_dir: Path) -> None:
    """An object larger than the whole file system: 74, one line naming it and the file."""
    bucket, name = "fault-transfers-full", f"big-{uuid.uuid4().hex[:12]}.bin"
    make_bucket(stack, bucket)
    (tmp_path / name).write_bytes(os.urandom(MIB + MIB // 2))
    rclone(stack, tmp_path, "copyto", str(tmp_path / name), f"ref:{bucket}/{name}")
    job = script(tmp_path, f"#ALLAS stage-in {bucket}/{name} {full_dir}/", "touch ran")
    result = allasrun(["run", str(job)], app_credential_env(stack, home), cwd=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == errors.EXIT_STAGE_IN, result.stderr
    lines = ERROR_LINE.findall(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"file system {os.environ['MINI_FULL_DIR']}" in lines[0] and str(full_dir / name) in lines[0]
    assert "No space left on device" in lines[0]
    assert list(full_dir.iterdir()) == [] and not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- 7: SIGKILL, then a re-run


@dataclass(frozen=True)
class KillRound:
    """One job directory: inputs staged in, copied by the command, staged out to its own prefix."""

    root: Path
    bucket: str
    inputs: str  # prefix of the inputs
    outputs: str  # prefix of this round's outputs

    def job(self) -> Path:
        header = (
            f"#ALLAS stage-in {self.bucket}/{self.inputs} in/\n"
            f"#ALLAS stage-out out/ {self.bucket}/{self.outputs}\n"
            f"#ALLAS option segment-size={SEGMENT}"
        )
        return script(self.root, header, "cp -rT in out")

    def start(self, env: dict[str, str], url: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*ALLASRUN, "run", "--storage-url", url, str(self.job())],
            env=env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )


def timeline(process: subprocess.Popen[str], started: float) -> tuple[float, float]:
    """A whole run, followed in its log: when stage-in was over (its summary line) and when the
    run ended, in s after `started`. The kills are spread over each stage by these: a stage-out
    far shorter than stage-in is hit all the same."""
    assert process.stderr is not None
    staged_in, log = 0.0, []
    for line in process.stderr:
        log.append(line)
        if not staged_in and "stage-in: " in line:
            staged_in = time.monotonic() - started
    assert process.wait(timeout=600) == 0 and staged_in, "".join(log)
    return staged_in, time.monotonic() - started


def moments(rng: random.Random, staged_in: float, ended: float) -> list[tuple[float, bool]]:
    """KILLS moments: one in each of KILLS - KILLS // 2 equal slices of stage-in, timed from the
    start, then one in each of KILLS // 2 slices of what follows (the command and stage-out), timed
    from the killed run's own stage-in summary (True): a stage-in a little slower than the timed
    run's would otherwise take every kill meant for stage-out (seen in CI: 4 of 4 in stage-in)."""
    into = [(staged_in * (k + rng.random()) / (KILLS - KILLS // 2), False) for k in range(KILLS - KILLS // 2)]
    after = [((ended - staged_in) * (k + rng.random()) / (KILLS // 2), True) for k in range(KILLS // 2)]
    return into + after


def kill_at(
    process: subprocess.Popen[str], delay: float, after_stage_in: bool
) -> tuple[str, list[psutil.Process]]:
    """SIGKILL allasrun `delay` s after its start, or after its stage-in summary: the log it wrote,
    and its descendants at that moment."""
    assert process.stderr is not None
    seen = []
    if after_stage_in:
        for line in process.stderr:
            seen.append(line)
            if "stage-in: " in line:
                break
    time.sleep(delay)
    family: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        family = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    return "".join(seen) + stderr, family


def running(family: list[psutil.Process]) -> list[psutil.Process]:
    """Those of these processes that still run (a zombie awaiting its reaper has ended)."""
    alive = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            if member.is_running() and member.status() != psutil.STATUS_ZOMBIE:
                alive.append(member)
    return alive


@dataclass
class Kill:
    """What one kill found and left, and what its re-run left: the soak's figures (bench/faults.py).

    Filled in as the round goes, so that a report written after a failure shows how far it got.
    """

    delay: float  # s after the start, or after the stage-in summary when after_stage_in
    after_stage_in: bool = False
    phase: str = ""  # "stage-in", or "stage-out" once the log holds stage-in's summary
    processes: int = 0  # the job's processes (allasrun's descendants) at the kill
    landed: int = 0  # stage-in: files under their final name; stage-out: objects stored
    parts: int = 0  # `.part` files the kill left
    segments: int = 0  # segments of the round's outputs the kill left
    rerun: Optional[int] = None  # the re-run's exit status
    processes_left: Optional[int] = None  # the killed run's processes running after the re-run
    parts_left: Optional[int] = None  # `.part` files after the re-run
    orphans_left: Optional[int] = None  # segments of the round's outputs beyond the large file's 3
    files_checked: int = 0  # copies compared whole with the sources: in/, out/, the stored objects
    bytes_checked: int = 0

    def __str__(self) -> str:
        since = "stage-in's end" if self.after_stage_in else "the start"
        return (
            f"{self.phase}, {self.delay:.2f} s after {since}: {self.parts} .part, {self.segments} segment(s)"
        )


@dataclass
class Soak:
    """The kill test's observations, written as JSON to FAULT_SOAK_REPORT (when set) for bench/faults.py."""

    seed: int
    files: int
    staged_in: float = 0.0  # s into an unkilled run, when its stage-in was over
    whole_run: float = 0.0  # s, that run
    kills: list[Kill] = field(default_factory=list)

    def write(self) -> None:
        if path := os.environ.get("FAULT_SOAK_REPORT"):
            Path(path).write_text(json.dumps(asdict(self), indent=1))


def test_sigkill_at_random_moments_then_a_rerun(stack: Stack, home: Path, tmp_path: Path) -> None:
    chosen = seed()
    rng = random.Random(chosen)
    bucket, run = "fault-transfers-kill", uuid.uuid4().hex[:12]
    make_bucket(stack, bucket)
    sums = make_sources(tmp_path / "src", rng)
    rclone(stack, tmp_path, "copy", str(tmp_path / "src"), f"ref:{bucket}/{run}/in/")
    env = app_credential_env(stack, home)
    soak = Soak(chosen, len(sums))

    def round_at(number: int) -> KillRound:
        root = tmp_path / f"round-{number}"
        root.mkdir()
        return KillRound(root, bucket, f"{run}/in/", f"{run}/out-{number}/")

    # Downloads slowed (never cut), so that a kill in stage-in can find a file half written.
    with cutting(stack, chosen, (), rate=0.0, pace=0.03) as (_, url):
        first = round_at(0)
        soak.staged_in, duration = timeline(first.start(env, url), time.monotonic())
        soak.whole_run = duration
        soak.kills = [Kill(*moment) for moment in moments(rng, soak.staged_in, duration)]
        try:
            for n, kill in enumerate(soak.kills, 1):
                killed_and_rerun(stack, env, url, round_at(n), sums, kill)
        finally:
            soak.write()
    print(
        f"a whole run: {duration:.1f} s, stage-in over at {soak.staged_in:.1f} s; what each kill left:",
        *soak.kills,
        sep="\n  ",
    )
    phases = {kill.phase for kill in soak.kills}
    assert {"stage-in", "stage-out"} <= phases or KILLS < 2


def killed_and_rerun(
    stack: Stack, env: dict[str, str], url: str, kill: KillRound, sums: dict[str, str], found: Kill
) -> None:
    """Kill a run after `found.delay` s; its processes end; the re-run completes, every byte right,
    nothing left. What the kill and the re-run left goes into `found`."""
    stderr, family = kill_at(kill.start(env, url), found.delay, found.after_stage_in)
    wait_for(lambda: not running(family), timeout=30, what=f"{kill.root.name}: the job's processes to end")
    found.phase = "stage-out" if "stage-in: " in stderr else "stage-in"
    found.processes = len(family)
    if found.phase == "stage-in":
        found.landed = sum(1 for p in (kill.root / "in").rglob("*") if p.is_file() and p.suffix != ".part")
    else:
        found.landed = len(listed(stack, kill.root, f"{kill.bucket}/{kill.outputs}"))
    found.parts = len(list(kill.root.rglob("*.part")))
    outputs = kill.outputs.rstrip("/")
    found.segments = len(segments_of(stack, kill.root, kill.bucket, outputs))
    again = allasrun(["run", str(kill.job())], env, cwd=kill.root)
    found.rerun = again.returncode
    found.processes_left = len(running(family))
    found.parts_left = len(list(kill.root.rglob("*.part")))
    segments = segments_of(stack, kill.root, kill.bucket, outputs)
    found.orphans_left = len(segments) - 3
    assert again.returncode == 0, f"{found}\n{stderr}\n{again.stderr}"
    assert found.processes_left == 0 and found.parts_left == 0, found
    assert local_sums(kill.root / "in") == sums and local_sums(kill.root / "out") == sums, found
    assert stored_sums(stack, kill.root, f"{kill.bucket}/{kill.outputs}") == sums, found
    logs = f"{stderr}\n{again.stderr}"
    assert len(segments) == 3 and all("sub/large.bin/" in s for s in segments), f"{found}: {segments}\n{logs}"
    found.files_checked = 3 * len(sums)
    found.bytes_checked = 3 * sum(p.stat().st_size for p in (kill.root / "in").rglob("*") if p.is_file())

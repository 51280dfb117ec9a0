"""Stage-out's segment sweep against the real store: what it removes, and what it must leave.

A killed large upload leaves segments under the object's name; the re-run removes them, also
when the file has since shrunk below the segment size. Two jobs uploading the same large
object at once, each through its own allasrun: neither sweep may delete what the other's
upload still needs or what the object now lists, and when both are done the object is one
whole upload and a re-run leaves no orphan. The leftovers of killed or running uploads are
made with `put_object` under the names `segment_stamp` gives them; the races are two real
allasruns, one of them held at a chosen request by a relay (`HoldingProxy`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from allasrun.staging.put import ABANDONED_AFTER, segment_stamp
from tests.stack.stackutil import Stack, allasrun, make_bucket, put_object, rclone, user_env
from tests.stack.test_faults_transfers import SEGMENT, md5, script, segments_of
from tests.stack.test_outputs import HoldingProxy, held, run_held
from tests.unit.test_stage_in_objects import _dead_pid

BUCKET = "fault-segments"
LARGE = 2 * SEGMENT + SEGMENT // 2  # three segments


class SweepHold(HoldingProxy):
    """Holds the first listing of segments under `<name>/slo/`: a sweep, after its manifest landed."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port, b"GET", b"")

    def _chosen(self, data: bytes) -> bool:
        line = data.split(b"\r\n", 1)[0]
        return (
            not self.holding.is_set()
            and line.startswith(b"GET ")
            and b"_segments?" in line
            and b"slo" in line
        )


@contextlib.contextmanager
def sweep_held(stack: Stack) -> Iterator[tuple[HoldingProxy, str]]:
    store = urlparse(stack.env["OS_STORAGE_URL"])
    assert store.port is not None
    with SweepHold(store.port) as proxy:
        yield proxy, f"http://127.0.0.1:{proxy.port}{store.path}"


def job(directory: Path, name: str, data: bytes) -> Path:
    """A job in `directory` whose `big.bin` (`data`) goes to `name`, at 1 MiB segments."""
    directory.mkdir(exist_ok=True)
    (directory / "big.bin").write_bytes(data)
    return script(
        directory, f"#ALLAS stage-out big.bin {BUCKET}/{name}\n#ALLAS option segment-size={SEGMENT}"
    )


def run(stack: Stack, home: Path, path: Path) -> None:
    """`allasrun run` straight to the store; it must succeed."""
    done = allasrun(["run", str(path)], user_env(stack, home), timeout=300, cwd=path.parent)
    assert done.returncode == 0, done.stderr


def leftover(stack: Stack, name: str, stamp: str) -> list[str]:
    """Two segments of a large upload that was killed or is still going: their names under `name/`."""
    names = [f"slo/{stamp}/{LARGE}/{SEGMENT}/{i:08d}" for i in range(2)]
    for segment in names:
        put_object(stack, f"{BUCKET}_segments", f"{name}/{segment}", b"x" * 1024)
    return names


def stored(stack: Stack, workdir: Path, name: str) -> str:
    """The object's MD5, read whole with rclone: a manifest missing a segment fails the read (409)."""
    return rclone(stack, workdir, "md5sum", "--download", f"ref:{BUCKET}/{name}").stdout.split()[0]


def settled(results: subprocess.CompletedProcess[str]) -> None:
    assert results.returncode == 0, results.stderr
    assert "Traceback" not in results.stderr


def test_a_file_that_shrank_leaves_no_segment_of_its_killed_or_replaced_uploads(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """An SLO, then leftovers: two of finished uploads (a killed allasrun's on this host, an
    older allasrun's 15 days old), two of uploads that may be going (a live process's, another
    host's of an hour ago); the file shrinks, and the re-run uploads it in one PUT."""
    make_bucket(stack, BUCKET)
    name = f"run-{uuid.uuid4().hex[:12]}/x.bin"
    path = job(tmp_path, name, os.urandom(LARGE))
    run(stack, home, path)
    assert len(segments_of(stack, tmp_path, BUCKET, name)) == 3
    leftover(stack, name, segment_stamp(pid=_dead_pid()))
    leftover(stack, name, f"{time.time() - ABANDONED_AFTER - 86400:.6f}-0badf00d")
    going = leftover(stack, name, segment_stamp(pid=os.getpid()))
    going += leftover(stack, name, f"{time.time() - 3600:.6f}-0badf00d.allasrun-elsewhere-4242")
    small = b"now small\n"
    (tmp_path / "big.bin").write_bytes(small)
    run(stack, home, path)
    assert stored(stack, tmp_path, name) == md5(small)
    assert sorted(segments_of(stack, tmp_path, BUCKET, name)) == sorted(going)


def test_a_sweep_keeps_the_segments_of_an_upload_still_going(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """B's manifest is held while A uploads the same name and sweeps: B's segments must stay, so
    B's manifest lands on the segments B uploaded, once; a re-run then removes A's."""
    make_bucket(stack, BUCKET)
    name = f"run-{uuid.uuid4().hex[:12]}/x.bin"
    first, second = os.urandom(LARGE), os.urandom(LARGE)
    a, b = job(tmp_path / "a", name, first), job(tmp_path / "b", name, second)
    uploaded: list[str] = []

    def meanwhile() -> None:
        uploaded.extend(segments_of(stack, tmp_path, BUCKET, name))
        run(stack, tmp_path / "a" / "home", a)

    (tmp_path / "a").joinpath("home").mkdir()
    with held(stack, b"PUT", f"/{BUCKET}/{name}") as (proxy, url):
        b_done = run_held(stack, home, b, proxy, url, meanwhile)
    settled(b_done)
    assert len(uploaded) == 3
    assert stored(stack, tmp_path, name) == md5(second)
    assert set(uploaded) <= set(segments_of(stack, tmp_path, BUCKET, name))  # uploaded once
    run(stack, home, b)  # the re-run: identical, and A's segments are orphans now
    assert sorted(segments_of(stack, tmp_path, BUCKET, name)) == sorted(uploaded)


def test_a_sweep_keeps_the_segments_of_a_manifest_that_replaced_its_own(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """A's manifest landed and its sweep is held; B uploads the same name and ends; A's sweep
    must keep what the object now lists. Both done: B's object, whole; a re-run leaves 3 segments."""
    make_bucket(stack, BUCKET)
    name = f"run-{uuid.uuid4().hex[:12]}/x.bin"
    first, second = os.urandom(LARGE), os.urandom(LARGE)
    a, b = job(tmp_path / "a", name, first), job(tmp_path / "b", name, second)
    (tmp_path / "b").joinpath("home").mkdir()
    with sweep_held(stack) as (proxy, url):
        a_done = run_held(stack, home, a, proxy, url, lambda: run(stack, tmp_path / "b" / "home", b))
    settled(a_done)
    assert stored(stack, tmp_path, name) == md5(second)
    run(stack, home, b)
    assert stored(stack, tmp_path, name) == md5(second)
    assert len(segments_of(stack, tmp_path, BUCKET, name)) == 3


def test_a_killed_uploads_set_the_same_as_the_reruns_is_swept_and_the_object_stays_whole(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """A kill after the last segment, before the manifest: a whole set, byte for byte the one the
    re-run uploads. radosgw tells an SLO's segments only by name, so the two sets look alike; the
    re-run must remove the killed one and keep its own, and a later re-run must not take the
    killed one for the object's and delete the object's own."""
    make_bucket(stack, BUCKET)
    make_bucket(stack, f"{BUCKET}_segments")
    name = f"run-{uuid.uuid4().hex[:12]}/x.bin"
    data = os.urandom(LARGE)
    path = job(tmp_path, name, data)
    killed = segment_stamp(pid=_dead_pid(), started=time.time() - 60)
    for i in range(3):
        piece = data[i * SEGMENT : (i + 1) * SEGMENT]
        put_object(stack, f"{BUCKET}_segments", f"{name}/slo/{killed}/{LARGE}/{SEGMENT}/{i:08d}", piece)
    run(stack, home, path)
    assert stored(stack, tmp_path, name) == md5(data)
    run(stack, home, path)  # identical: skipped, and its sweep finds the same segments
    assert stored(stack, tmp_path, name) == md5(data)
    kept = segments_of(stack, tmp_path, BUCKET, name)
    assert len(kept) == 3 and not any(killed in segment for segment in kept), kept

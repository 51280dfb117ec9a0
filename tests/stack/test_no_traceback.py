"""What the environment does to allasrun never shows as a traceback.

Each test walks one failure through the real CLI as the ordinary user (root would pass every
permission check): a full disk, directories it may not write, a missing or foreign runtime
directory, a deleted credentials file, Keystone or Swift on a closed port at the start or
cut off mid-run, a report path that is a directory. Each ends in a documented exit code and
one `allasrun: ... error:` line naming what failed, or, where the keeper must degrade (a
token cache it cannot write), in a warning and the command run all the same.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import subprocess
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from allasrun import errors
from tests.stack.stackutil import (
    DEAD_KEYSTONE,
    USER_VARIABLES,
    OrdinaryUser,
    Stack,
    allasrun,
    make_bucket,
    put_object,
    wait_for,
)
from tests.stack.tcpproxy import Relay

ERROR_LINE = re.compile(r"^allasrun: (?:\S+ )?error: .*$", re.MULTILINE)
BUCKET = "no-traceback"
NOT_STARTED = (errors.EXIT_USAGE, errors.EXIT_LOCAL_FILE, errors.EXIT_CONFIG)


@dataclass(frozen=True)
class Place:
    """One test's directory, the ordinary user's, and allasrun run there as that user."""

    user: OrdinaryUser
    root: Path

    @property
    def ran(self) -> Path:
        """Made by the command: it was started."""
        return self.root / "ran"

    def mkdir(self, path: Path, mode: str = "0700") -> Path:
        """A directory of the user's with this mode, made or changed by the user."""
        script = f"mkdir -p {path} && chmod {mode} {path}"
        subprocess.run(self.user.command(["sh", "-c", script]), check=True, timeout=60)
        return path

    def env(self, stack: Stack, **extra: str) -> dict[str, str]:
        """The stack's application credential, a home and a $TMPDIR of this test's."""
        env = {
            "PATH": f"{Path(self.user.python).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.mkdir(self.root / "home")),
            "TMPDIR": str(self.mkdir(self.root / "tmp")),
            "LANG": "C.UTF-8",
            "OS_APPLICATION_CREDENTIAL_ID": stack.env["MINI_ALLAS_APP_CRED_ID"],
            "OS_APPLICATION_CREDENTIAL_SECRET": stack.env["MINI_ALLAS_APP_CRED_SECRET"],
        }
        env.update({name: stack.env[name] for name in USER_VARIABLES})
        env.update(extra)
        return env

    def run(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        """`allasrun ARGS`, or with none, `allasrun -- touch ran`."""
        argv = list(args) or ["--", "touch", str(self.ran)]
        return allasrun(argv, env, user=self.user, cwd=self.root)

    def cut_off_mid_run(
        self, env: dict[str, str], proxy: CuttableProxy, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """`allasrun ARGS` whose command touches `cut-now`, then waits for `go-on`: cut between."""
        command = self.user.command([self.user.python, "-m", "allasrun", *args])
        running = subprocess.Popen(
            command, env=env, cwd=self.root, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for((self.root / "cut-now").exists, timeout=60, what="the command to start")
            proxy.cut()
        finally:
            subprocess.run(self.user.command(["touch", str(self.root / "go-on")]), check=True, timeout=60)
            _, stderr = running.communicate(timeout=120)
        return subprocess.CompletedProcess(command, running.returncode, "", stderr)

    def script(self, text: str) -> Path:
        """A job script in this test's directory, readable by the user whoever writes it."""
        path = self.root / "job.sh"
        path.write_text(f"#!/bin/sh\n{text.strip()}\n")
        path.chmod(0o755)
        return path


@pytest.fixture
def place(ordinary_user: OrdinaryUser) -> Iterator[Place]:
    """A fresh directory of the user's, removed after (its locked subdirectories too)."""
    root = ordinary_user.workdir()
    yield Place(ordinary_user, root)
    cleanup = f"chmod -R u+rwX {root} && rm -rf {root}"
    subprocess.run(ordinary_user.command(["sh", "-c", cleanup]), check=False, timeout=60)


@pytest.fixture
def full(place: Place) -> Iterator[Path]:
    """A directory of the user's on a file system with no space left (with-stack's tmpfs)."""
    mount = os.environ.get("MINI_FULL_DIR", "")
    if not mount or not os.path.ismount(mount):
        pytest.skip(
            "no small file system to fill (stack/with-stack --slurm mounts one as root: MINI_FULL_DIR)"
        )
    directory = place.mkdir(Path(mount) / place.root.name)
    filler = directory / "filler"
    try:
        with filler.open("wb", buffering=0) as sink, contextlib.suppress(OSError):  # until ENOSPC
            while True:
                sink.write(b"\0" * 65536)
        with pytest.raises(OSError) as refused:
            (directory / "probe").write_bytes(b"\0" * 65536)
        assert refused.value.errno == errno.ENOSPC
        yield directory
    finally:
        subprocess.run(place.user.command(["rm", "-rf", str(directory)]), check=False, timeout=60)


class CuttableProxy(Relay):
    """A TCP proxy to a local service (its URL `upstream`), for cutting it off mid-run: every
    connection closed, the port refusing new ones (`cut`). `url` is the same URL through it."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        assert parsed.port is not None
        super().__init__(parsed.port)
        self.url = parsed._replace(netloc=f"127.0.0.1:{self.port}").geturl()
        self.start()

    def cut(self) -> None:
        self.close()


def refused(
    place: Place, result: subprocess.CompletedProcess[str], codes: Collection[int], naming: str
) -> None:
    """A documented code, one error line naming `naming`, no traceback, the command not started."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in codes, result.stderr
    lines = ERROR_LINE.findall(result.stderr)
    assert len(lines) == 1 and naming in lines[0], result.stderr
    assert not place.ran.exists(), result.stderr


def warned_and_ran(place: Place, result: subprocess.CompletedProcess[str], naming: str) -> None:
    """The command ran and succeeded; what allasrun could not do is a warning naming `naming`."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert place.ran.exists(), result.stderr
    assert not ERROR_LINE.findall(result.stderr), result.stderr
    assert naming in result.stderr, result.stderr


def ran_or_refused(place: Place, result: subprocess.CompletedProcess[str], naming: str) -> None:
    """Either is right for a runtime directory allasrun cannot use: a private one elsewhere, or
    a refusal naming it (73, or 78 for a directory that is someone else's)."""
    if result.returncode == 0:
        assert "Traceback" not in result.stderr and place.ran.exists(), result.stderr
    else:
        refused(place, result, (errors.EXIT_LOCAL_FILE, errors.EXIT_CONFIG), naming)


def test_a_full_disk_under_the_token_cache_costs_a_warning(stack: Stack, place: Place, full: Path) -> None:
    cache = full / "cache"
    result = place.run(place.env(stack, XDG_CACHE_HOME=str(cache)))
    warned_and_ran(place, result, str(cache))


def test_a_full_disk_under_the_run_directory_is_one_error(stack: Stack, place: Place, full: Path) -> None:
    """The command's rclone.conf and env file cannot be written: it would have no token."""
    run_dir = full / "run"
    result = place.run(place.env(stack, ALLASRUN_RUNTIME_DIR=str(run_dir)))
    refused(place, result, [errors.EXIT_LOCAL_FILE], str(run_dir))


def test_an_unwritable_cache_directory_costs_a_warning(stack: Stack, place: Place) -> None:
    cache = place.mkdir(place.root / "cache", "0500")
    result = place.run(place.env(stack, XDG_CACHE_HOME=str(cache)))
    warned_and_ran(place, result, str(cache))


def test_an_unwritable_home_costs_a_warning_and_login_one_error(stack: Stack, place: Place) -> None:
    """The token cache goes to ~/.cache: a warning. `allasrun login` stores to ~/.config: an error."""
    env = place.env(stack)
    home = place.mkdir(Path(env["HOME"]), "0500")
    result = place.run(env)
    warned_and_ran(place, result, str(home))
    subprocess.run(place.user.command(["rm", str(place.ran)]), check=True, timeout=60)
    password = {name: value for name, value in env.items() if not name.startswith("OS_APPLICATION_")}
    login = place.run({**password, "OS_PASSWORD": stack.env["OS_PASSWORD"]}, "login", "--days", "30")
    refused(place, login, [errors.EXIT_LOCAL_FILE], str(home))


def test_a_missing_xdg_runtime_dir(stack: Stack, place: Place) -> None:
    """Carried over from a login node by sbatch: /run/user/UID, which this node does not have."""
    locked = place.mkdir(place.root / "locked", "0555")
    runtime = locked / "run" / "user" / str(place.user.uid)
    result = place.run(place.env(stack, XDG_RUNTIME_DIR=str(runtime)))
    ran_or_refused(place, result, str(locked))


def test_a_foreign_xdg_runtime_dir(stack: Stack, place: Place) -> None:
    """Someone else's (root's, as `sudo -E` leaves it), which the user may not enter."""
    foreign = Path("/root")
    found = foreign.stat()
    if found.st_uid == place.user.uid or stat.S_IMODE(found.st_mode) & 0o077:
        pytest.skip(f"{foreign} is not a private directory of another user's here")
    result = place.run(place.env(stack, XDG_RUNTIME_DIR=str(foreign)))
    ran_or_refused(place, result, str(foreign))


def test_a_deleted_credentials_file(stack: Stack, place: Place) -> None:
    """ALLASRUN_CREDENTIALS, as `allasrun sbatch` hands it to a job, names a file now gone."""
    gone = place.root / "job-credential.json"
    env = {k: v for k, v in place.env(stack).items() if not k.startswith("OS_APPLICATION_")}
    result = place.run({**env, "ALLASRUN_CREDENTIALS": str(gone)})
    refused(place, result, NOT_STARTED, str(gone))


def test_keystone_on_a_closed_port(stack: Stack, place: Place) -> None:
    result = place.run(place.env(stack, OS_AUTH_URL=DEAD_KEYSTONE))
    refused(place, result, [errors.EXIT_UNAVAILABLE], DEAD_KEYSTONE)


def test_swift_on_a_closed_port(stack: Stack, place: Place) -> None:
    dead = f"http://127.0.0.1:9{urlparse(stack.env['OS_STORAGE_URL']).path}"
    script = place.script(f"#ALLAS stage-in {BUCKET}/in.txt ./\n#ALLAS option retries=1\ntouch {place.ran}")
    result = place.run(place.env(stack), "run", "--storage-url", dead, str(script))
    refused(place, result, [errors.EXIT_STAGE_IN], "127.0.0.1:9/")


WAIT_FOR_THE_CUT = "touch cut-now; while [ ! -e go-on ]; do sleep 0.1; done"


def test_swift_cut_off_mid_run(stack: Stack, place: Place) -> None:
    """Stage-in went through; Swift is gone before stage-out: 75, the file that did not land named."""
    make_bucket(stack, BUCKET)
    put_object(stack, BUCKET, "in.txt", b"input\n")
    script = place.script(
        f"#ALLAS stage-in {BUCKET}/in.txt ./\n#ALLAS stage-out result.txt {BUCKET}/{place.root.name}/\n"
        f"#ALLAS option retries=1\ncp in.txt result.txt; {WAIT_FOR_THE_CUT}"
    )
    proxy = CuttableProxy(stack.env["OS_STORAGE_URL"])
    result = place.cut_off_mid_run(place.env(stack), proxy, "run", "--storage-url", proxy.url, str(script))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert "result.txt" in result.stderr, result.stderr


def test_keystone_cut_off_mid_run(stack: Stack, place: Place) -> None:
    """A password run: its own application credential cannot be revoked at the end. The
    command's status stands; the credential left behind is logged."""
    proxy = CuttableProxy(stack.env["OS_AUTH_URL"])
    env = {k: v for k, v in place.env(stack).items() if not k.startswith("OS_APPLICATION_")}
    env.update(OS_AUTH_URL=proxy.url, OS_PASSWORD=stack.env["OS_PASSWORD"])
    result = place.cut_off_mid_run(env, proxy, "--", "sh", "-c", f"{WAIT_FOR_THE_CUT}; touch {place.ran}")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0 and place.ran.exists(), result.stderr
    assert "revoke" in result.stderr, result.stderr


def test_a_report_path_that_is_a_directory(stack: Stack, place: Place) -> None:
    report = place.mkdir(place.root / "reports")
    script = place.script(f"#ALLAS option report={report}\ntouch {place.ran}")
    result = place.run(place.env(stack), "run", str(script))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (errors.EXIT_USAGE, errors.EXIT_LOCAL_FILE), result.stderr
    lines = ERROR_LINE.findall(result.stderr)
    assert len(lines) == 1 and str(report) in lines[0], result.stderr

"""Two ordinary users on one node: the second one never reads the first one's secrets.

allasrun runs as the ordinary user (MINI_USER); a neighbour (MINI_OTHER_USER) looks at
everything it can reach: the token cache, a running allasrun's run directory, stored and
per-job credentials. The neighbour also lays traps in the shared /tmp and in a runtime
directory of its own, which allasrun must refuse (exit 78, one line naming the path) or step
around to a private directory, never writing a file there.

The two users meet in a directory of the first one's (0755, as Debian makes a home), holding
a home of the usual modes and a sticky, world-writable `tmp` standing in for the node's /tmp,
so only allasrun's own file modes stand between the neighbour and the secrets, and the tests
never touch the real /tmp that other tests' allasruns use at the same time. The tests' own
files (job scripts, markers) live in `work`, which the neighbour does not search.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from allasrun import errors
from tests.stack.stackutil import USER_VARIABLES, OrdinaryUser, Slurm, Stack, allasrun, wait_for

# Run as the neighbour: under each path given, every entry it can see, every directory it can
# list and every file it can open and read (os.walk passes over what it cannot list).
PROBE = r"""
import json, os, sys
seen = {"entries": [], "listed": [], "read": []}
def read(path):
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        seen["read"].append(path)
    except OSError:
        pass
for top in sys.argv[1:]:
    if not os.path.isdir(top):
        read(top)
    for here, dirs, files in os.walk(top):
        seen["listed"].append(here)
        seen["entries"] += [os.path.join(here, name) for name in dirs + files]
        for name in files:
            read(os.path.join(here, name))
print(json.dumps(seen))
"""

ERROR_LINE = re.compile(r"^allasrun: (\S+ )?error: ", re.MULTILINE)


@dataclass(frozen=True)
class Neighbours:
    """The ordinary user, its neighbour, and the directories where they meet."""

    user: OrdinaryUser
    other: OrdinaryUser
    base: Path

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def tmp(self) -> Path:
        """Stands for the node's /tmp: sticky, world-writable."""
        return self.base / "tmp"

    @property
    def work(self) -> Path:
        """The test's own files: not searched."""
        return self.base / "work"

    @property
    def public(self) -> Path:
        """A file anyone may read: proves the probe sees what the neighbour can see."""
        return self.home / "public.txt"

    def as_user(self, script: str) -> None:
        subprocess.run(self.user.command(["sh", "-ec", script]), check=True, timeout=60)

    def as_other(self, script: str) -> None:
        subprocess.run(self.other.command(["sh", "-ec", script]), check=True, timeout=60)

    def probe(self, *paths: Path) -> dict[str, list[str]]:
        """What the neighbour can read and list under `paths`."""
        argv = self.other.command([self.other.python, "-c", PROBE, *map(str, paths)])
        seen: dict[str, list[str]] = json.loads(
            subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
        )
        return seen

    def readable(self, *paths: Path) -> list[str]:
        """Files in the home, the shared tmp and `paths` the neighbour can read, but the public one."""
        seen = self.probe(self.public, self.home, self.tmp, *paths)
        assert str(self.public) in seen["read"], "the probe cannot even read a public file"
        return sorted({path for path in seen["read"] if path != str(self.public)})

    def left_in(self, directory: Path) -> list[str]:
        """What is in a directory of the neighbour's, as it sees it: empty means untouched."""
        seen = self.probe(directory)
        assert str(directory) in seen["listed"], f"the neighbour cannot list its own {directory}"
        return seen["entries"]

    def env(self, stack: Stack, **extra: str) -> dict[str, str]:
        """The user's environment after `allas-conf -k`: a password, a home, the shared tmp."""
        env = {
            "PATH": f"{Path(self.user.python).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
            "OS_PASSWORD": stack.env["OS_PASSWORD"],
        }
        env.update({name: stack.env[name] for name in USER_VARIABLES})
        env.update(extra)
        return env

    def app_credential_env(self, stack: Stack, **extra: str) -> dict[str, str]:
        """The user holds the stack's application credential: no Keystone writes per run."""
        env = self.env(stack, **extra)
        del env["OS_PASSWORD"]
        env["OS_APPLICATION_CREDENTIAL_ID"] = stack.env["MINI_ALLAS_APP_CRED_ID"]
        env["OS_APPLICATION_CREDENTIAL_SECRET"] = stack.env["MINI_ALLAS_APP_CRED_SECRET"]
        return env


@pytest.fixture
def neighbours(ordinary_user: OrdinaryUser, other_user: OrdinaryUser) -> Iterator[Neighbours]:
    """A meeting directory under the real /tmp, made by the user, removed by both after."""
    made = subprocess.run(
        ordinary_user.command(["mktemp", "-d", "/tmp/allasrun-two-users-XXXXXX"]),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    site = Neighbours(ordinary_user, other_user, Path(made.stdout.strip()))
    site.as_user(
        f"chmod 0755 {site.base}; mkdir -m 0755 {site.home} {site.work}; mkdir -m 1777 {site.tmp}; "
        f"echo public > {site.public}; chmod 0644 {site.public}"
    )
    try:
        yield site
    finally:
        subprocess.run(
            site.other.command(["find", str(site.base), "-user", site.other.name, "-delete"]),
            capture_output=True,
            check=False,
            timeout=60,
        )
        subprocess.run(
            site.user.command(["rm", "-rf", str(site.base)]), capture_output=True, check=False, timeout=60
        )


def test_a_running_allasrun_and_its_token_cache_are_private(stack: Stack, neighbours: Neighbours) -> None:
    """A password run: its token cache, its run's application credential in rclone.conf and
    the env file with its token, looked for by the neighbour while the command runs."""
    site = neighbours
    where, stop = site.work / "where.txt", site.work / "stop"
    command = (
        f'printf "%s\\n%s\\n" "$RCLONE_CONFIG" "$ALLASRUN_ENV_FILE" > {where}.part; '
        f"mv {where}.part {where}; while [ ! -e {stop} ]; do sleep 0.1; done"
    )
    running = subprocess.Popen(
        site.user.command([site.user.python, "-m", "allasrun", "--", "sh", "-c", command]),
        env=site.env(stack),
        cwd=site.work,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(where.exists, timeout=60, what="the command to start under allasrun")
        run_files = [Path(line) for line in where.read_text().split()]
        assert all(path.is_file() for path in run_files), run_files
        assert [path for path in (site.home / ".cache").rglob("*") if path.is_file()], "no token cache"
        readable = site.readable(*run_files, *(path.parent for path in run_files))
    finally:
        stop.touch()
        _, stderr = running.communicate(timeout=60)
    assert running.returncode == 0, stderr
    assert readable == [], stderr


def test_stored_and_job_credentials_are_private(stack: Stack, slurm: Slurm, neighbours: Neighbours) -> None:
    """`allasrun login`'s credential file, and the one `allasrun sbatch` hands a queued job."""
    site = neighbours
    env = {**site.env(stack), **slurm.env}
    login = allasrun(["login"], env, user=site.user, cwd=site.work)
    assert login.returncode == 0, login.stderr
    script, stop = site.work / "job.sh", site.work / "stop"
    site.as_user(f"printf '#!/bin/sh\\nwhile [ ! -e {stop} ]; do sleep 0.2; done\\n' > {script}")
    submitted = allasrun(
        ["sbatch", "--parsable", f"--output={site.work}/out-%j.txt", str(script)],
        env,
        user=site.user,
        cwd=site.work,
    )
    assert submitted.returncode == 0, submitted.stderr
    try:
        config = site.home / ".config" / "allasrun"
        assert list((config / "credentials").glob("*.json")), "no stored credential"
        assert list((config / "jobs").glob("*.json")), "no job credential"
        readable = site.readable()
    finally:
        site.as_user(f"touch {stop}")
        slurm.wait(submitted.stdout.strip())
    assert readable == []


def _refused_or_avoided(site: Neighbours, env: dict[str, str], trap: Path) -> None:
    """allasrun as the user: refused (78, one line naming the trap, the command not started),
    or run in a private directory elsewhere. Either way the neighbour can read nothing."""
    ran = site.work / "ran.txt"
    result = allasrun(["--", "sh", "-c", f'echo "$ALLASRUN_DIR" > {ran}'], env, user=site.user, cwd=site.work)
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 0:
        run_dir = Path(ran.read_text().strip())
        assert not run_dir.resolve().is_relative_to(trap.resolve()), result.stderr
    else:
        assert result.returncode == errors.EXIT_CONFIG, result.stderr
        assert len(ERROR_LINE.findall(result.stderr)) == 1 and str(trap) in result.stderr, result.stderr
        assert not ran.exists()
    assert site.readable(trap) == [], result.stderr


@pytest.mark.parametrize("mode", ["0777", "0755"])
def test_a_runtime_directory_the_neighbour_made_in_tmp(
    stack: Stack, neighbours: Neighbours, mode: str
) -> None:
    """$TMPDIR/allasrun-UID made first by the neighbour: one the user could write in (0777), or not."""
    site = neighbours
    trap = site.tmp / f"allasrun-{site.user.uid}"
    site.as_other(f"mkdir -m {mode} {trap}")
    _refused_or_avoided(site, site.app_credential_env(stack), trap)
    assert site.left_in(trap) == []


def test_a_symlink_the_neighbour_left_in_tmp(stack: Stack, neighbours: Neighbours) -> None:
    """$TMPDIR/allasrun-UID is the neighbour's symlink to a world-writable directory of its own."""
    site = neighbours
    target, trap = site.tmp / "neighbours-dir", site.tmp / f"allasrun-{site.user.uid}"
    site.as_other(f"mkdir -m 0777 {target}; ln -s {target} {trap}")
    _refused_or_avoided(site, site.app_credential_env(stack), trap)
    assert site.left_in(target) == []


@pytest.mark.parametrize("mode", ["0700", "0777"])
def test_xdg_runtime_dir_naming_a_directory_of_the_neighbours(
    stack: Stack, neighbours: Neighbours, mode: str
) -> None:
    """XDG_RUNTIME_DIR names the neighbour's directory: its own (0700: carried over from a login
    node, say), or one it opened to all (0777). Either way it is not the user's to use."""
    site = neighbours
    trap = site.tmp / "neighbours-runtime"
    site.as_other(f"mkdir -m {mode} {trap}")
    _refused_or_avoided(site, site.app_credential_env(stack, XDG_RUNTIME_DIR=str(trap)), trap)
    assert site.left_in(trap) == []

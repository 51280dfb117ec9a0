"""Helpers for tests against the real stack: its facts, a user's environment, running allasrun."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

ROOT = Path(__file__).resolve().parents[2]
ALLASRUN = [sys.executable, "-m", "allasrun"]
# Keystone on a closed port: a test that must make no Keystone call gets exit 69 if it does,
# which (unlike counting Keystone's log) holds while other tests run beside it.
DEAD_KEYSTONE = "http://127.0.0.1:9/v3"


@dataclass(frozen=True)
class Stack:
    """What the running stack told us, and a few things tests ask it directly."""

    env: Mapping[str, str]

    @property
    def backend(self) -> str:
        """`swift` (OpenStack Swift) or `rgw` (Ceph RADOS Gateway, what Allas runs)."""
        return self.env.get("MINI_ALLAS_BACKEND", "swift")

    @property
    def ttl(self) -> int:
        return int(self.env["MINI_ALLAS_TOKEN_TTL"])

    def keystone_requests(self, needle: str = "POST /v3/auth/tokens") -> int:
        """How many matching requests Keystone has logged so far."""
        text = Path(self.env["MINI_ALLAS_KEYSTONE_LOG"]).read_text(errors="replace")
        return text.count(needle)

    def allasrun_logins(self) -> int:
        """Logins made by allasrun itself (its User-Agent, `allasrun/VERSION`), not by rclone or swift."""
        text = Path(self.env["MINI_ALLAS_KEYSTONE_LOG"]).read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "POST /v3/auth/tokens" in line and '"allasrun/' in line)

    def user_session(self) -> ks_session.Session:
        """A keystoneauth session as the stack's user, for checks made beside allasrun."""
        auth = v3.Password(
            auth_url=self.env["OS_AUTH_URL"],
            username=self.env["OS_USERNAME"],
            password=self.env["OS_PASSWORD"],
            user_domain_name="Default",
            project_name=self.env["OS_PROJECT_NAME"],
            project_domain_name="Default",
        )
        return ks_session.Session(auth=auth)

    def app_credential_exists(self, credential_id: str) -> bool:
        """Ask Keystone whether an application credential of the user still exists."""
        session = self.user_session()
        url = f"{self.env['OS_AUTH_URL']}/users/{self.env['MINI_ALLAS_USER_ID']}/application_credentials"
        response = session.get(f"{url}/{credential_id}", raise_exc=False)
        assert response.status_code in (200, 404), response.text
        return response.status_code == 200


def swift_round_only(stack: Stack, why: str) -> None:
    """Skip in the radosgw round a test in which the object store plays no part.

    Keystone, the keeper and a fake failing store are the same in both rounds; running such a
    test twice only costs CI time.
    """
    if stack.backend == "rgw":
        pytest.skip(f"{why}: run in the Swift round")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `export NAME=value` lines (values shell-quoted) without running a shell."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


USER_VARIABLES = (
    "OS_AUTH_URL",
    "OS_IDENTITY_API_VERSION",
    "OS_USERNAME",
    "OS_PROJECT_NAME",
    "OS_USER_DOMAIN_NAME",
    "OS_PROJECT_DOMAIN_NAME",
    "OS_REGION_NAME",
    "OS_INTERFACE",
)


def user_env(stack: Stack, home: Path, **extra: str) -> dict[str, str]:
    """The environment a user has after `allas-conf -k`: OS_* and a password, nothing of ours."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ALLASRUN_RUNTIME_DIR": str(home / "run"),
        "MINI_ALLAS_KEYSTONE_LOG": stack.env["MINI_ALLAS_KEYSTONE_LOG"],
    }
    env.update({name: stack.env[name] for name in USER_VARIABLES})
    env["OS_PASSWORD"] = stack.env["OS_PASSWORD"]
    env.update(extra)
    return env


def app_credential_env(stack: Stack, home: Path) -> dict[str, str]:
    """A user who exported the stack's application credential instead of a password."""
    env = user_env(stack, home)
    del env["OS_PASSWORD"]
    env["OS_APPLICATION_CREDENTIAL_ID"] = stack.env["MINI_ALLAS_APP_CRED_ID"]
    env["OS_APPLICATION_CREDENTIAL_SECRET"] = stack.env["MINI_ALLAS_APP_CRED_SECRET"]
    return env


@dataclass(frozen=True)
class OrdinaryUser:
    """Not root: who runs jobs on the clusters. allasrun is installed where it can run it."""

    name: str
    python: str

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.name).pw_dir)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run as this user (the environment passed along as it is).

        Already this user (pytest runs as the ordinary user in CI): as it is. Root: runuser,
        keeping even HOME. Another ordinary user: sudo, which stack/with-stack allows the test
        user for the second user only; sudo puts its own PATH first, so the program is named
        absolutely.
        """
        if os.geteuid() == self.uid:
            return list(argv)
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # not on an ordinary user's PATH
            return [runuser, "--preserve-environment", "-u", self.name, "--", *argv]
        program = shutil.which(argv[0]) or argv[0]
        return ["sudo", "--non-interactive", "--preserve-env", "--user", self.name, "--", program, *argv[1:]]

    def can_act(self) -> bool:
        """Whether this process can run commands as this user (root, itself, or allowed by sudo)."""
        if os.geteuid() in (0, self.uid):
            return True
        if not shutil.which("sudo"):
            return False
        probe = subprocess.run(self.command(["true"]), capture_output=True, check=False, timeout=30)
        return probe.returncode == 0

    def workdir(self) -> Path:
        """A fresh directory of this user's, under its home, for one test."""
        path = self.home / "tests" / uuid.uuid4().hex[:12]
        subprocess.run(self.command(["mkdir", "-p", str(path)]), check=True)
        return path

    def env(self, stack: Stack, workdir: Path) -> dict[str, str]:
        """The stack's application credential, this user's allasrun first on PATH, and caches
        and configuration of this test's own (a user's home is shared between the tests)."""
        env = {
            "PATH": f"{Path(self.python).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "XDG_CACHE_HOME": str(workdir / ".cache"),
            "XDG_CONFIG_HOME": str(workdir / ".config"),
            "OS_APPLICATION_CREDENTIAL_ID": stack.env["MINI_ALLAS_APP_CRED_ID"],
            "OS_APPLICATION_CREDENTIAL_SECRET": stack.env["MINI_ALLAS_APP_CRED_SECRET"],
        }
        env.update({name: stack.env[name] for name in USER_VARIABLES})
        return env


def allasrun(
    args: Sequence[str],
    env: Mapping[str, str],
    timeout: float = 120,
    user: Optional[OrdinaryUser] = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run allasrun as a user would (whoever runs pytest, or `user`), capturing its output."""
    command = [*ALLASRUN, *args] if user is None else user.command([user.python, "-m", "allasrun", *args])
    return subprocess.run(
        command,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        **kwargs,
    )


def secrets_of(stack: Stack) -> list[str]:
    """Strings that must never appear in output, argv or a file readable by others."""
    return [stack.env["OS_PASSWORD"], stack.env["MINI_ALLAS_APP_CRED_SECRET"]]


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a true value; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def make_bucket(stack: Stack, name: str) -> None:
    """Create a container (idempotent) through Swift directly, as the stack's user."""
    session = stack.user_session()
    token: Optional[str] = session.get_token()
    response = session.put(f"{stack.env['OS_STORAGE_URL']}/{name}", headers={"X-Auth-Token": token or ""})
    assert response.status_code in (201, 202), response.text


def reference_remote(stack: Stack) -> str:
    """An rclone remote `ref:` with the stack's application credential: rclone as users set it up."""
    return (
        "[ref]\ntype = swift\nenv_auth = false\nauth_version = 3\n"
        f"auth = {stack.env['OS_AUTH_URL']}\n"
        f"application_credential_id = {stack.env['MINI_ALLAS_APP_CRED_ID']}\n"
        f"application_credential_secret = {stack.env['MINI_ALLAS_APP_CRED_SECRET']}\n"
        f"region = {stack.env['OS_REGION_NAME']}\n"  # the catalog has Swift and RGW, in two regions
    )


def uploaded(stack: Stack, workdir: Path, bucket: str, name: str) -> str:
    """An object's content, read with Debian's rclone (not allasrun)."""
    return rclone(stack, workdir, "cat", f"ref:{bucket}/{name}").stdout


def rclone(stack: Stack, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's rclone with its own config (the stack's application credential), not allasrun's."""
    conf = workdir / "test-rclone.conf"
    conf.write_text(reference_remote(stack))
    return subprocess.run(
        ["rclone", "--config", str(conf), *args], capture_output=True, text=True, check=True, timeout=600
    )


def put_object(stack: Stack, bucket: str, name: str, data: bytes) -> None:
    """PUT one object with exactly this name, bypassing every client's name cleaning."""
    session = stack.user_session()
    # Dots escaped too: HTTP clients resolve a literal `..` segment before sending.
    url = f"{stack.env['OS_STORAGE_URL']}/{bucket}/{quote(name).replace('.', '%2E')}"
    response = session.put(url, data=data, headers={"X-Auth-Token": session.get_token() or ""})
    assert response.status_code == 201, response.text


def s3_endpoint(stack: Stack) -> str:
    """The stack's S3 endpoint, path style: radosgw's own, or the s3api at Swift's proxy."""
    return stack.env["MINI_RGW_S3_URL"] if stack.backend == "rgw" else stack.env["MINI_ALLAS_SWIFT_URL"]


def s3_env(stack: Stack, home: Path, keystone: bool = True, **extra: str) -> dict[str, str]:
    """A user with S3 keys in the AWS variables; with `keystone=False`, nothing of Keystone's at all."""
    env = user_env(stack, home, **extra)
    env.update(
        AWS_ACCESS_KEY_ID=stack.env["MINI_ALLAS_EC2_ACCESS"],
        AWS_SECRET_ACCESS_KEY=stack.env["MINI_ALLAS_EC2_SECRET"],
        AWS_ENDPOINT_URL=s3_endpoint(stack),
    )
    if not keystone:
        for name in [n for n in env if n.startswith("OS_")]:
            del env[name]
    return env


def ec2_accesses(stack: Stack) -> list[str]:
    """The access ids of the user's EC2 credentials (S3 keys), as Keystone lists them now."""
    listed = subprocess.run(
        ["openstack", "ec2", "credentials", "list", "-f", "value", "-c", "Access"],
        # radosgw's env names its own region for Swift, which has no identity endpoint
        env={
            **os.environ,
            **{k: v for k, v in stack.env.items() if k.startswith("OS_") and k != "OS_REGION_NAME"},
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return listed.stdout.split()


FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


@dataclass(frozen=True)
class Slurm:
    """The one-node Slurm from stack/mini-slurm: submit a job, wait for it to end."""

    env: Mapping[str, str]

    def submit(
        self, script: Path, env: Mapping[str, str], *options: str, user: Optional[OrdinaryUser] = None
    ) -> str:
        """sbatch the script from its directory with `env` (exported to the job); the job id."""
        argv = [
            "sbatch",
            "--parsable",
            f"--chdir={script.parent}",
            f"--output={script.parent}/slurm-%j.out",
            *options,
            str(script),
        ]
        result = subprocess.run(
            argv if user is None else user.command(argv),
            env={**env, **self.env},
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...)."""
        text = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return dict(word.split("=", 1) for word in text.split() if "=" in word)

    def wait(self, job_id: str, timeout: float = 180) -> dict[str, str]:
        """Poll until the job has ended; its final `scontrol show job` fields."""
        return dict(wait_for(lambda: self._ended(job_id), timeout=timeout, what=f"job {job_id} to end"))

    def wait_gone(self, job_id: str, timeout: float = 180) -> None:
        """Poll until no task of the job (an array, say) is pending or running."""

        def gone() -> bool:
            listing = subprocess.run(
                ["squeue", "-h", "-j", job_id],
                env={**os.environ, **self.env},
                capture_output=True,
                text=True,
                check=False,
            )
            return listing.returncode != 0 or not listing.stdout.strip()

        wait_for(gone, timeout=timeout, what=f"job {job_id} to leave the queue")

    def _ended(self, job_id: str) -> Optional[dict[str, str]]:
        fields = self.job(job_id)
        return fields if fields.get("JobState") in FINISHED else None


class Job:
    """One job script submitted with plain sbatch from its own directory, and what it left."""

    def __init__(
        self,
        stack: Stack,
        slurm: Slurm,
        directory: Path,
        text: str,
        env: dict[str, str],
        bucket: str = "slurm-data",
        user: Optional[OrdinaryUser] = None,
    ) -> None:
        make_bucket(stack, bucket)
        script = directory / "job.sh"
        script.write_text(text)
        if user is not None and os.geteuid() != user.uid:  # root wrote it for the user
            subprocess.run(["chown", user.name, str(script)], check=True)
        self.stack, self.slurm, self.directory, self.bucket = stack, slurm, directory, bucket
        self.id = slurm.submit(script, env, user=user)

    def finish(self, timeout: float = 180) -> tuple[dict[str, str], str]:
        """Wait for the end; Slurm's fields and the job's output."""
        fields = self.slurm.wait(self.id, timeout=timeout)
        return fields, (self.directory / f"slurm-{self.id}.out").read_text()

    def scancel(self, *options: str) -> None:
        wait_for((self.directory / "started").exists, timeout=60, what="the job to start")
        subprocess.run(["scancel", *options, self.id], env={**os.environ, **self.slurm.env}, check=True)

    def uploaded(self, name: str) -> str:
        return uploaded(self.stack, self.directory, self.bucket, name)

"""`allasrun -- CMD` against the real stack: exit codes, signals, no orphans, no leaked secrets."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.stack.stackutil import (
    ALLASRUN,
    DEAD_KEYSTONE,
    Stack,
    allasrun,
    app_credential_env,
    make_bucket,
    secrets_of,
    user_env,
    wait_for,
)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["true"], 0),
        (["sh", "-c", "exit 1"], 1),
        (["sh", "-c", "exit 3"], 3),
        (["sh", "-c", "exit 255"], 255),
        (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
    ],
)
def test_exit_status_is_the_commands(stack: Stack, home: Path, command: list[str], expected: int) -> None:
    result = allasrun(["--", *command], app_credential_env(stack, home))
    assert result.returncode == expected, result.stderr


def test_command_starts_with_default_sigpipe(stack: Stack, home: Path) -> None:
    # Python ignores SIGPIPE; a command inheriting that would print "Broken pipe" errors.
    result = allasrun(["--", "sh", "-c", "yes | head -n 1"], app_credential_env(stack, home))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "y\n"
    assert "Broken pipe" not in result.stderr


@pytest.mark.exclusive
def test_not_found_and_not_executable(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = {**app_credential_env(stack, home), "OS_AUTH_URL": DEAD_KEYSTONE}  # a call would be 69
    missing = allasrun(["--", "no-such-command-anywhere"], env)
    assert missing.returncode == 127
    assert "no-such-command-anywhere: command not found" in missing.stderr
    plain = tmp_path / "data.txt"
    plain.write_text("not a program\n")
    denied = allasrun(["--", str(plain)], env)
    assert denied.returncode == 126
    assert f"{plain}: permission denied" in denied.stderr


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    log, stop = sys.argv[1], sys.argv[2]
    def note(signum, frame):
        with open(log, "a") as handle:
            handle.write(f"{signum}\\n")
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCONT"):
        signal.signal(getattr(signal, name), note)
    print("ready", flush=True)
    while not os.path.exists(stop):
        time.sleep(0.05)
    sys.exit(7)
    """
)

# What the issue promises to forward, written out here rather than taken from the code.
FORWARDED = [signal.Signals[f"SIG{name}"] for name in ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "CONT"]]


def test_signals_are_forwarded_and_status_returned(stack: Stack, home: Path, tmp_path: Path) -> None:
    log, stop = tmp_path / "signals.log", tmp_path / "stop"
    proc = subprocess.Popen(
        [*ALLASRUN, "--", sys.executable, "-c", CHILD, str(log), str(stop), *(s.name for s in FORWARDED)],
        env=app_credential_env(stack, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    for number, signum in enumerate(FORWARDED, start=1):
        proc.send_signal(signum)
        wait_for(
            lambda n=number: log.exists() and len(log.read_text().split()) >= n,
            what=f"{signum!r} to reach the command",
        )
    assert [int(s) for s in log.read_text().split()] == [int(s) for s in FORWARDED]
    stop.touch()
    assert proc.wait(timeout=30) == 7


def test_sigterm_kills_the_command_and_reports_128_plus_n(stack: Stack, home: Path) -> None:
    proc = subprocess.Popen(
        [*ALLASRUN, "--", "sleep", "300"], env=app_credential_env(stack, home), stderr=subprocess.PIPE
    )
    child = wait_for(lambda: psutil.Process(proc.pid).children(), what="the command to start")[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE


def test_sigkill_of_allasrun_leaves_no_command_behind(stack: Stack, home: Path) -> None:
    proc = subprocess.Popen(
        [*ALLASRUN, "--", "sleep", "300"], env=app_credential_env(stack, home), stderr=subprocess.DEVNULL
    )
    child = wait_for(lambda: psutil.Process(proc.pid).children(), what="the command to start")[0]
    proc.kill()
    proc.wait(timeout=10)

    def gone() -> bool:
        try:
            return bool(child.status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, what=f"the command (pid {child.pid}) to die with allasrun")


JOB_REPORT = """
env > "$OUT/env.txt"
ps -eo args > "$OUT/ps.txt"
cat "$RCLONE_CONFIG" "$ALLASRUN_ENV_FILE" > "$OUT/files.txt"
stat -c '%a %n' "$ALLASRUN_DIR" "$RCLONE_CONFIG" "$ALLASRUN_ENV_FILE" > "$OUT/modes.txt"
rclone lsf allas:launch-bucket > "$OUT/rclone.txt"
. "$ALLASRUN_ENV_FILE" && swift list launch-bucket > "$OUT/swift.txt"
"""


def test_password_never_reaches_the_command_files_or_logs(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "launch-bucket")
    env = user_env(stack, home, OUT=str(tmp_path))
    result = allasrun(["--verbose", "--", "sh", "-c", JOB_REPORT], env)
    assert result.returncode == 0, result.stderr
    child_env = (tmp_path / "env.txt").read_text()
    assert "OS_PASSWORD" not in child_env
    assert "OS_AUTH_TOKEN=" in child_env
    assert "RCLONE_CONFIG=" in child_env
    files = (tmp_path / "files.txt").read_text()
    for secret in secrets_of(stack):
        assert secret not in child_env
        assert secret not in files
        assert secret not in (tmp_path / "ps.txt").read_text()
        assert secret not in result.stderr + result.stdout
    # The run's rclone.conf holds the token service's key, never a Keystone secret; the key
    # is never in the log either.
    assert "application_credential" not in files
    run_secret = next(line.split(" = ", 1)[1] for line in files.splitlines() if line.startswith("key = "))
    token = next(
        line.split("=", 1)[1] for line in files.splitlines() if line.startswith("export OS_AUTH_TOKEN")
    )
    assert run_secret not in result.stderr
    assert token not in result.stderr
    modes = (tmp_path / "modes.txt").read_text().split()
    assert modes[0::2] == ["700", "600", "600"]
    assert (tmp_path / "rclone.txt").read_text() == (tmp_path / "swift.txt").read_text() == ""
    for path in (home / "run").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_keep_password_passes_it_on(stack: Stack, home: Path) -> None:
    result = allasrun(["--keep-password", "--", "sh", "-c", 'test -n "$OS_PASSWORD"'], user_env(stack, home))
    assert result.returncode == 0, result.stderr


# Without the token service (it could not start) the run's rclone.conf holds the credential.
SAVE_CREDENTIAL_ID = 'sed -n "s/^application_credential_id = //p" "$RCLONE_CONFIG" > "$OUT"'


def value_of(text: str, prefix: str) -> str:
    """The rest of the first line of `text` that starts with `prefix`."""
    return next(line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix))


def test_run_credential_exists_during_the_run_and_is_revoked_after(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cred"
    script = f"{SAVE_CREDENTIAL_ID}; rclone lsf allas:"
    result = allasrun(["--no-token-service", "--", "sh", "-c", script], user_env(stack, home, OUT=str(out)))
    assert result.returncode == 0, result.stderr
    credential_id = out.read_text().strip()
    assert credential_id
    assert "created application credential" in result.stderr
    assert f"revoked application credential {credential_id}" in result.stderr
    assert not stack.app_credential_exists(credential_id)
    assert not (home / "run" / f"run-{os.getpid()}").exists()


def test_run_credential_is_live_while_the_command_runs(stack: Stack, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "cred"
    stop = tmp_path / "stop"
    script = f'{SAVE_CREDENTIAL_ID}; while [ ! -e "$STOP" ]; do sleep 0.1; done'
    proc = subprocess.Popen(
        [*ALLASRUN, "--no-token-service", "--", "sh", "-c", script],
        env=user_env(stack, home, OUT=str(out), STOP=str(stop)),
        stderr=subprocess.DEVNULL,
    )
    credential_id = wait_for(lambda: out.exists() and out.read_text().strip(), what="the job to start")
    assert stack.app_credential_exists(credential_id)
    stop.touch()
    assert proc.wait(timeout=60) == 0
    assert not stack.app_credential_exists(credential_id)

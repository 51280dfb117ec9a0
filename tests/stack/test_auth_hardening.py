"""The token cache and the user's rclone.conf against the real Keystone and Swift.

A wrong password is refused even when a right one left a token in the cache; `--storage-url`
is never served another URL's token; a cache that cannot be written costs a warning, not the
run; and two password runs that keep one rclone.conf current never break each other.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from tests.stack.stackutil import (
    ALLASRUN,
    OrdinaryUser,
    Stack,
    allasrun,
    app_credential_env,
    make_bucket,
    user_env,
    wait_for,
)

WRONG = "not-the-password"


def _clean(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_a_wrong_password_after_a_right_one_is_refused(stack: Stack, home: Path) -> None:
    right = allasrun(["--", "true"], user_env(stack, home))
    assert right.returncode == 0, right.stderr
    assert list((home / ".cache" / "allasrun" / "tokens").glob("*.json"))  # a token is cached
    wrong = allasrun(["--", "sh", "-c", "echo ran"], user_env(stack, home, OS_PASSWORD=WRONG))
    assert wrong.returncode == 77, wrong.stderr
    assert "Keystone refused" in wrong.stderr
    assert "ran" not in wrong.stdout
    assert "created application credential" not in wrong.stderr
    _clean(wrong)


def test_a_wrong_password_before_a_right_one_leaves_nothing_in_the_way(stack: Stack, home: Path) -> None:
    wrong = allasrun(["env"], user_env(stack, home, OS_PASSWORD=WRONG))
    assert wrong.returncode == 77, wrong.stderr
    assert wrong.stdout == ""
    _clean(wrong)
    right = allasrun(["env"], user_env(stack, home))
    assert right.returncode == 0, right.stderr
    assert right.stdout.startswith("export OS_AUTH_TOKEN=")


def test_a_storage_url_option_is_never_served_a_token_cached_for_another(stack: Stack, home: Path) -> None:
    env = app_credential_env(stack, home)
    show = ["--", "sh", "-c", 'printf %s "$OS_STORAGE_URL"']
    catalog = allasrun(show, env)
    assert catalog.returncode == 0, catalog.stderr
    assert catalog.stdout == stack.env["OS_STORAGE_URL"]
    other = stack.env["OS_STORAGE_URL"].rstrip("/") + "-other"
    chosen = allasrun(["--storage-url", other, *show], env)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout == other
    again = allasrun(show, env)
    assert again.stdout == stack.env["OS_STORAGE_URL"]  # and the option leaked into no later run


def test_a_cache_that_cannot_be_made_costs_a_warning_not_the_run(stack: Stack, home: Path) -> None:
    make_bucket(stack, "hardening-cache")
    blocker = home / "not-a-directory"
    blocker.write_text("in the way\n")
    env = app_credential_env(stack, home)
    env["ALLASRUN_CACHE_DIR"] = str(blocker)
    result = allasrun(["--", "rclone", "lsf", "allas:"], env)
    assert result.returncode == 0, result.stderr
    assert "hardening-cache/" in result.stdout.splitlines()
    assert "token cache" in result.stderr and "going on without it" in result.stderr
    _clean(result)


def test_two_password_runs_keeping_one_rclone_conf_never_break_each_other(stack: Stack, home: Path) -> None:
    """The first run to end revokes its own credential; the other run's rclone must not care.

    B starts first, A second (so A wrote the section last), A ends, then B lists.
    """
    bucket = f"hardening-{uuid.uuid4().hex[:8]}"
    make_bucket(stack, bucket)
    conf = home / "rclone.conf"
    conf.write_text("# mine\n[work]\ntype = local\n")
    env = user_env(stack, home, RCLONE_CONFIG=str(conf))
    work = home / "flags"
    work.mkdir()
    b_script = f"touch {work}/b-started; until [ -e {work}/b-go ]; do sleep 0.1; done; rclone lsf allas:"
    a_script = f"touch {work}/a-started; until [ -e {work}/a-stop ]; do sleep 0.1; done"
    first = _start(["--update-user-config", "--", "sh", "-c", b_script], env)
    second = None
    try:
        wait_for((work / "b-started").exists, 60, "run B to start")
        second = _start(["--update-user-config", "--", "sh", "-c", a_script], env)
        wait_for((work / "a-started").exists, 60, "run A to start")
        (work / "a-stop").touch()
        _, a_err = second.communicate(timeout=60)
        assert second.returncode == 0, a_err
        assert "revoked application credential" in a_err
        (work / "b-go").touch()
        b_out, b_err = first.communicate(timeout=60)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert first.returncode == 0, b_err
    assert f"{bucket}/" in b_out.splitlines()
    text = conf.read_text()
    assert text.startswith("# mine\n[work]\ntype = local\n")
    assert "application_credential" not in text  # never a credential the run revokes
    assert stack.env["OS_PASSWORD"] not in text
    after = subprocess.run(
        ["rclone", "--config", str(conf), "lsf", "allas:"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert after.returncode == 0, after.stderr  # and it still works after both runs ended
    assert f"{bucket}/" in after.stdout.splitlines()


def test_an_xdg_runtime_dir_from_the_login_node_is_passed_over(
    stack: Stack, ordinary_user: OrdinaryUser
) -> None:
    workdir = ordinary_user.workdir()
    env = ordinary_user.env(stack, workdir)
    env["XDG_RUNTIME_DIR"] = f"/run/user/{uuid.uuid4().int % 100000 + 900000}"  # nobody's, missing here
    result = allasrun(["--", "sh", "-c", 'printf %s "$ALLASRUN_DIR"'], env, user=ordinary_user)
    assert result.returncode == 0, result.stderr
    assert not result.stdout.startswith("/run/user/")
    _clean(result)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ALLASRUN, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

"""login, env, status, the token cache, the user's own rclone.conf, and a borrowed token."""

from __future__ import annotations

import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from tests.stack.stackutil import Stack, allasrun, app_credential_env, make_bucket, user_env


def test_login_then_run_without_a_password(stack: Stack, home: Path) -> None:
    make_bucket(stack, "login-bucket")
    env = user_env(stack, home)
    first = allasrun(["login", "--days", "1"], env)
    assert first.returncode == 0, first.stderr
    stored = home / ".config" / "allasrun" / "credentials" / f"{env['OS_PROJECT_NAME']}.json"
    assert str(stored) in first.stdout
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    first_id = stored.read_text().split('"id": "')[1].split('"')[0]
    assert stack.app_credential_exists(first_id)

    no_password = {k: v for k, v in env.items() if k != "OS_PASSWORD"}
    run = allasrun(["--", "rclone", "lsf", "allas:"], no_password)
    assert run.returncode == 0, run.stderr
    assert "login-bucket/" in run.stdout.splitlines()
    assert f"application credential {first_id} (stored in {stored})" in run.stderr
    assert "created application credential" not in run.stderr  # a stored credential needs no new one

    second = allasrun(["login"], env)
    assert second.returncode == 0, second.stderr
    assert "revoked the previous credential" in second.stderr
    assert not stack.app_credential_exists(first_id)


def test_login_without_password_or_terminal_fails_clearly(stack: Stack, home: Path) -> None:
    env = {k: v for k, v in user_env(stack, home).items() if k != "OS_PASSWORD"}
    result = allasrun(["login"], env)
    assert result.returncode == 78
    assert "no credentials" in result.stderr


def test_env_prints_a_working_token(stack: Stack, home: Path) -> None:
    make_bucket(stack, "env-bucket")
    env = app_credential_env(stack, home)
    exports = allasrun(["env"], env)
    assert exports.returncode == 0, exports.stderr
    assert exports.stdout.startswith("export OS_AUTH_TOKEN=")
    listing = subprocess.run(
        ["sh", "-c", f"{exports.stdout}\nswift list"],
        env={"PATH": env["PATH"], "HOME": env["HOME"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "env-bucket" in listing.stdout.split()


def test_status_says_who_where_and_until_when(stack: Stack, home: Path) -> None:
    result = allasrun(["status"], app_credential_env(stack, home))
    assert result.returncode == 0, result.stderr
    report = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert report["project"].strip().startswith(stack.env["OS_PROJECT_NAME"])
    assert stack.env["OS_PROJECT_ID"] in report["project"]
    assert report["storage URL"].strip() == stack.env["OS_STORAGE_URL"]
    assert report["token"].strip().startswith("expires ")
    assert stack.env["MINI_ALLAS_APP_CRED_ID"] in report["credential"]


@pytest.mark.exclusive
def test_cached_token_spares_keystone(stack: Stack, home: Path) -> None:
    env = app_credential_env(stack, home)
    assert allasrun(["--", "true"], env).returncode == 0
    before = stack.keystone_requests()
    assert allasrun(["--", "true"], env).returncode == 0
    assert stack.keystone_requests() == before
    assert allasrun(["--no-cache", "--", "true"], env).returncode == 0
    assert stack.keystone_requests() == before + 1


@pytest.mark.exclusive
def test_many_tasks_starting_together_authenticate_once(stack: Stack, home: Path) -> None:
    env = app_credential_env(stack, home)
    before = stack.keystone_requests()
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: allasrun(["env"], env), range(10)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({r.stdout for r in results}) == 1  # all got the same token
    assert stack.keystone_requests() == before + 1


USER_CONF = "# my remotes\n[work]\ntype = s3\nprovider = Other\n\n# the old allas\n[puhti]\ntype = local\n"


def test_update_user_config_keeps_other_sections(stack: Stack, home: Path) -> None:
    make_bucket(stack, "user-conf-bucket")
    conf = home / "my-rclone.conf"
    conf.write_text(USER_CONF)
    env = app_credential_env(stack, home)
    env["RCLONE_CONFIG"] = str(conf)
    script = 'test "$RCLONE_CONFIG" = "$EXPECTED" && rclone lsf allas: && rclone listremotes'
    env["EXPECTED"] = str(conf)
    result = allasrun(["--update-user-config", "--", "sh", "-c", script], env)
    assert result.returncode == 0, result.stderr
    assert "user-conf-bucket/" in result.stdout.splitlines()
    assert {"work:", "puhti:", "allas:"} <= set(result.stdout.split())
    # rclone read the user's file, and RCLONE_CONFIG_ALLAS_* sent it to the run's token service.
    assert "token service: 1 answer(s)" in result.stderr, result.stderr
    text = conf.read_text()
    assert text.startswith(USER_CONF)
    assert "[allas]\ntype = swift\n" in text
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_existing_token_is_used_with_a_warning(stack: Stack, home: Path) -> None:
    make_bucket(stack, "token-bucket")
    auth = v3.ApplicationCredential(
        auth_url=stack.env["OS_AUTH_URL"],
        application_credential_id=stack.env["MINI_ALLAS_APP_CRED_ID"],
        application_credential_secret=stack.env["MINI_ALLAS_APP_CRED_SECRET"],
    )
    token = ks_session.Session(auth=auth).get_token()
    assert token
    env = user_env(stack, home, OS_AUTH_TOKEN=token, OS_STORAGE_URL=stack.env["OS_STORAGE_URL"])
    del env["OS_PASSWORD"]
    result = allasrun(["--", "sh", "-c", '. "$ALLASRUN_ENV_FILE" && swift list'], env)
    assert result.returncode == 0, result.stderr
    assert "token-bucket" in result.stdout.split()
    assert "cannot be renewed: it expires at" in result.stderr

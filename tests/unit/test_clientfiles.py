"""The rclone section and env file allasrun writes, and in-place edits of a user's rclone.conf."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

from allasrun import atomicfile
from allasrun.auth.identity import AppCredential, Target
from allasrun.auth.s3keys import S3Keys
from allasrun.auth.token import Token
from allasrun.commands import s3access
from allasrun.errors import BadS3Keys, LocalFileError
from allasrun.job.clientfiles import (
    ClientFiles,
    child_environment,
    env_file,
    files_environment,
    rclone_section,
    read_env,
    replace_section,
)
from allasrun.job.tokenservice import Access
from allasrun.staging.plan import StageIn, StagePlan
from tests.unit.keystone_fake import capture_log

TARGET = Target("http://ks:5000/v3", "project_1", "alice", region="RegionOne")
TOKEN = Token("tok-123", 1000.0, 1090.0, "http://swift/v1/AUTH_p", "p", "u")


def test_token_only_section_pins_the_token() -> None:
    section = rclone_section("allas", TARGET, TOKEN, None)
    assert section.splitlines() == [
        "[allas]",
        "type = swift",
        "env_auth = false",
        "auth_token = tok-123",
        "storage_url = http://swift/v1/AUTH_p",
    ]


def test_application_credential_section_can_reauthenticate() -> None:
    section = rclone_section("allas", TARGET, TOKEN, AppCredential("cid", "csecret"))
    assert "application_credential_id = cid\n" in section
    assert "application_credential_secret = csecret\n" in section
    assert "auth = http://ks:5000/v3\n" in section
    assert "auth_version = 3\n" in section
    assert "region = RegionOne\n" in section
    assert "auth_token" not in section  # rclone would never re-authenticate


SERVICE = Access("http://127.0.0.1:4242/auth/v1.0", "allasrun", "k3y")


def test_with_the_token_service_rclone_gets_its_v1_auth_and_no_keystone_secret() -> None:
    section = rclone_section("allas", TARGET, TOKEN, AppCredential("cid", "csecret"), SERVICE)
    assert section.splitlines() == [
        "[allas]",
        "type = swift",
        "env_auth = false",
        "auth = http://127.0.0.1:4242/auth/v1.0",
        "auth_version = 1",
        "user = allasrun",
        "key = k3y",
    ]


def test_env_file_is_valid_shell_even_with_odd_characters() -> None:
    token = Token("a'b c$d", 0.0, 90.0, "http://s/v1/AUTH_x;rm", "p", "u")
    script = env_file(token) + 'printf "%s|%s" "$OS_AUTH_TOKEN" "$OS_STORAGE_URL"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == "a'b c$d|http://s/v1/AUTH_x;rm"


ENCRYPTED = "# Encrypted rclone configuration File\n\nRCLONE_ENCRYPT_V0:\nAbCdEf0123456789==\n"
NEW = "[allas]\ntype = swift\nauth_token = new\n"
USER_CONF = (
    "# my remotes\n"
    "[work]\ntype = s3\n  ; indented comment\nkey = a=b\n\n"
    "[allas]\ntype = swift\nauth_token = old\n\n"
    "# the backup remote\n"
    "[backup]\ntype = sftp\nhost = x\n"
)


def test_replace_keeps_every_other_byte() -> None:
    result = replace_section(USER_CONF, "allas", NEW)
    expected = USER_CONF.replace("[allas]\ntype = swift\nauth_token = old\n", NEW)
    assert result == expected


def test_replace_is_stable_when_repeated() -> None:
    once = replace_section(USER_CONF, "allas", NEW)
    assert replace_section(once, "allas", NEW) == once


def test_replace_appends_a_missing_section() -> None:
    assert replace_section("", "allas", NEW) == NEW
    assert replace_section("[a]\nx = 1\n", "allas", NEW) == "[a]\nx = 1\n\n" + NEW
    assert replace_section("[a]\nx = 1", "allas", NEW) == "[a]\nx = 1\n\n" + NEW


def test_replace_last_section_and_similar_names() -> None:
    text = "[allas-old]\nk = 1\n[allas]\nk = 2\n"
    assert replace_section(text, "allas", NEW) == "[allas-old]\nk = 1\n" + NEW


RUN_CREDENTIAL = AppCredential("run-cred", "run-secret", "created for this run")
PASSWORD_TOKEN = Token("password-token", 1000.0, 1090.0, "http://swift/v1/AUTH_p", "p", "u")


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    return capture_log(caplog, monkeypatch)


def _warnings(logged: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logged.records if r.levelno == logging.WARNING]


def _files(tmp_path: Path, user_config: Optional[Path] = None, **fields: Any) -> ClientFiles:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return ClientFiles(directory, "allas", TARGET, fields.pop("credential", None), user_config, **fields)


def test_a_run_directory_removed_meanwhile_is_made_again(tmp_path: Path) -> None:
    files = _files(tmp_path)
    files.write(TOKEN)
    shutil.rmtree(files.directory)  # logind at logout, or a tmp cleaner
    files.write(TOKEN)
    assert "auth_token = tok-123\n" in files.rclone_config.read_text()
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES])
def test_run_files_that_cannot_be_written_are_one_local_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def refuse(path: Path, text: str) -> None:
        raise OSError(code, os.strerror(code), str(path))

    files = _files(tmp_path)
    monkeypatch.setattr("allasrun.job.clientfiles.write_atomic", refuse)
    with pytest.raises(LocalFileError) as raised:
        files.write(TOKEN)
    assert raised.value.exit_code == 73
    assert str(files.rclone_config) in str(raised.value)
    assert os.strerror(code) in str(raised.value)


def test_a_user_config_that_cannot_be_written_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(USER_CONF)
    real = atomicfile.write_atomic

    def quota(path: Path, text: str) -> None:
        if path == conf:
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(path))
        real(path, text)

    monkeypatch.setattr("allasrun.job.clientfiles.write_atomic", quota)
    files = _files(tmp_path, conf)
    files.write(TOKEN)
    assert "auth_token = tok-123\n" in files.rclone_config.read_text()
    assert conf.read_text() == USER_CONF
    [warning] = _warnings(logged)
    assert str(conf) in warning and "Disk quota exceeded" in warning


@pytest.mark.parametrize("kind", ["symlink", "encrypted"])
def test_a_symlinked_or_encrypted_user_config_is_never_replaced_by_plain_text(
    tmp_path: Path, logged: pytest.LogCaptureFixture, kind: str
) -> None:
    real = tmp_path / "dotfiles" / "rclone.conf"
    real.parent.mkdir()
    original = ENCRYPTED if kind == "encrypted" else USER_CONF
    real.write_text(original)
    conf = real
    if kind == "symlink":
        conf = tmp_path / "rclone.conf"
        conf.symlink_to(real)
    files = _files(tmp_path, conf)
    files.write(TOKEN)
    assert real.read_text() == original
    assert conf.is_symlink() == (kind == "symlink")
    [warning] = _warnings(logged)
    assert str(conf) in warning
    assert files.environment()["RCLONE_CONFIG"] == str(files.rclone_config)


def test_the_user_config_gets_what_outlives_the_run_and_the_run_its_own_credential(tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(USER_CONF)
    files = _files(tmp_path, conf, credential=RUN_CREDENTIAL, lasting=lambda: (PASSWORD_TOKEN, None))
    files.write(TOKEN)
    own, user = files.rclone_config.read_text(), conf.read_text()
    assert "application_credential_secret = run-secret\n" in own
    assert "run-cred" not in user and "run-secret" not in user
    assert "auth_token = password-token\n" in user
    assert files.environment()["RCLONE_CONFIG"] == str(conf)


def _bash(script: str, env: dict[str, str]) -> str:
    """Run a bash script as a program (not interactively), as an a-command is run."""
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout


def test_a_bash_script_started_later_sees_the_token_of_that_moment(tmp_path: Path) -> None:
    lmod = tmp_path / "lmod-init.sh"  # what Lmod puts in BASH_ENV for modules in scripts
    lmod.write_text("export MODULES_READY=yes\n")
    files = _files(tmp_path, service=SERVICE, bash_env_before=str(lmod))
    files.write(TOKEN)
    env = {"PATH": os.environ["PATH"], **files.environment(), "OS_AUTH_TOKEN": "from-the-start"}
    script = 'printf "%s|%s|%s" "$OS_AUTH_TOKEN" "$ST_AUTH" "$MODULES_READY"'
    assert _bash(script, env) == f"tok-123|{SERVICE.url}|yes"
    files.write(Token("tok-renewed", 1050.0, 1140.0, TOKEN.storage_url, "p", "u"))  # the keeper renewed
    assert _bash(script, env) == f"tok-renewed|{SERVICE.url}|yes"
    shutil.rmtree(files.directory)  # the run is over; a process that outlived it still starts
    result = subprocess.run(["bash", "-c", "echo ok"], env=env, capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


def test_swift_gets_the_service_and_loses_a_keystone_auth_type_it_could_not_use(tmp_path: Path) -> None:
    files = _files(tmp_path, service=SERVICE)
    files.write(TOKEN)
    user = {"OS_AUTH_TYPE": "v3applicationcredential", "OS_APPLICATION_CREDENTIAL_SECRET": "s", "KEEP": "1"}
    child = child_environment(user, files.environment())
    assert "OS_AUTH_TYPE" not in child and "OS_APPLICATION_CREDENTIAL_SECRET" not in child
    assert child["KEEP"] == "1"
    assert (child["ST_AUTH"], child["ST_USER"], child["ST_KEY"]) == (SERVICE.url, "allasrun", "k3y")
    assert child["ST_AUTH_VERSION"] == "1.0"  # before an OS_AUTH_VERSION=3 in swift's search
    assert (child["OS_AUTH_TOKEN"], child["OS_STORAGE_URL"]) == ("tok-123", TOKEN.storage_url)


def test_a_kept_user_config_is_overridden_by_rclone_variables_while_the_run_lasts(tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(USER_CONF)
    files = _files(tmp_path, conf, service=SERVICE, lasting=lambda: (PASSWORD_TOKEN, None))
    files.write(TOKEN)
    assert "auth_token = password-token\n" in conf.read_text()  # what outlives the run
    env = files.environment()
    assert env["RCLONE_CONFIG"] == str(conf)
    assert env["RCLONE_CONFIG_ALLAS_AUTH"] == SERVICE.url and env["RCLONE_CONFIG_ALLAS_KEY"] == "k3y"
    assert env["RCLONE_CONFIG_ALLAS_AUTH_TOKEN"] == ""  # or rclone would pin the file's token
    (tmp_path / "plain").mkdir()
    without = _files(tmp_path / "plain", conf)  # the service could not start: the file as it is
    without.write(TOKEN)
    assert not any(name.startswith("RCLONE_CONFIG_") for name in without.environment())


KEYS = S3Keys("AKIA-run", "s3-secret", "AWS_ACCESS_KEY_ID", "https://a3s.fi")
S3_FILES = {"rclone.conf", "env", "bash_env", "s3cfg", "aws-config"}
USER_AWS = {
    "AWS_ACCESS_KEY_ID": "mine",
    "AWS_SECRET_ACCESS_KEY": "my-secret",
    "AWS_CA_BUNDLE": "/etc/site-ca.pem",
    "AWS_PROFILE": "lumi",
    "AWS_SESSION_TOKEN": "stale",
    "KEEP": "1",
}


def _s3_files(tmp_path: Path, keys: S3Keys = KEYS, **fields: Any) -> ClientFiles:
    files = _files(tmp_path, service=SERVICE, s3=keys, **fields)
    files.write(TOKEN)
    return files


def test_without_s3_keys_nothing_of_s3_is_written_and_the_users_aws_variables_stay(tmp_path: Path) -> None:
    files = _files(tmp_path, service=SERVICE, aws_ca_bundle="/etc/site-ca.pem")
    files.write(TOKEN)
    assert {p.name for p in files.directory.iterdir()} == {"rclone.conf", "env", "bash_env"}
    assert "s3" not in files.rclone_config.read_text()
    child = child_environment(USER_AWS, files.environment())
    assert {name: child[name] for name in USER_AWS} == USER_AWS
    assert not {name for name in child if name.startswith(("AWS_", "S3"))} - set(USER_AWS)


def test_s3_keys_give_rclone_aws_s3cmd_and_s5cmd_their_files_all_private(tmp_path: Path) -> None:
    files = _s3_files(tmp_path)
    assert {p.name for p in files.directory.iterdir()} == S3_FILES
    for path in files.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    conf = files.rclone_config.read_text()
    assert "[allas]\n" in conf  # Swift stays as it was
    assert conf[conf.index("[s3allas]") :].splitlines() == [
        "[s3allas]",
        "type = s3",
        "provider = Ceph",
        "env_auth = false",
        "endpoint = https://a3s.fi",
        "force_path_style = true",
        "access_key_id = AKIA-run",
        "secret_access_key = s3-secret",
    ]
    env = files.environment()
    directory = files.directory
    assert {name: env[name] for name in env if name.startswith(("AWS_", "S3"))} == {
        "AWS_ACCESS_KEY_ID": "AKIA-run",
        "AWS_SECRET_ACCESS_KEY": "s3-secret",
        "AWS_ENDPOINT_URL": "https://a3s.fi",  # boto3 >= 1.28.57, aws CLI >= 2.13
        "S3_ENDPOINT_URL": "https://a3s.fi",  # s5cmd
        "AWS_CONFIG_FILE": str(directory / "aws-config"),
        "S3CMD_CONFIG": str(directory / "s3cfg"),
    }
    s3cfg = (directory / "s3cfg").read_text().splitlines()
    assert {"host_base = a3s.fi", "host_bucket = a3s.fi", "use_https = True"} <= set(s3cfg)
    assert {"access_key = AKIA-run", "secret_key = s3-secret"} <= set(s3cfg)
    aws = (directory / "aws-config").read_text()
    assert "addressing_style = path" in aws
    assert "s3-secret" not in aws and "ca_bundle" not in aws
    assert "[plugins]" not in aws  # aws CLI v1 would import every name there, and fail


def test_a_plain_http_endpoint_is_plain_http_for_s3cmd_too(tmp_path: Path) -> None:
    files = _s3_files(tmp_path, S3Keys("a", "s", "~/.s3cfg", "http://127.0.0.1:8080"))
    s3cfg = (files.directory / "s3cfg").read_text().splitlines()
    assert {"host_base = 127.0.0.1:8080", "host_bucket = 127.0.0.1:8080", "use_https = False"} <= set(s3cfg)


def test_the_runs_keys_replace_the_users_and_aws_ca_bundle_moves_into_the_config_files(
    tmp_path: Path,
) -> None:
    """rclone 1.60's s3 backend will not start with AWS_CA_BUNDLE set (http or https alike)."""
    files = _s3_files(tmp_path, aws_ca_bundle="/etc/site-ca.pem")
    child = child_environment(USER_AWS, files.environment())
    assert child["KEEP"] == "1"
    assert (child["AWS_ACCESS_KEY_ID"], child["AWS_SECRET_ACCESS_KEY"]) == ("AKIA-run", "s3-secret")
    assert not {"AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_SESSION_TOKEN"} & set(child)
    assert "ca_bundle = /etc/site-ca.pem\n" in (files.directory / "aws-config").read_text()
    assert "ca_certs_file = /etc/site-ca.pem\n" in (files.directory / "s3cfg").read_text()


def test_followers_and_sourced_shells_see_the_same_s3_variables(tmp_path: Path) -> None:
    files = _s3_files(tmp_path, aws_ca_bundle="/etc/site-ca.pem")
    leader = child_environment(USER_AWS, files.environment())
    follower = child_environment(USER_AWS, files_environment(files.directory, str(files.rclone_config), ""))
    assert follower == leader
    script = f". {files.env_path}; env | grep -E '^(AWS_|S3)' | sort"
    sourced = dict(
        line.split("=", 1) for line in _bash(script, {"PATH": os.environ["PATH"], **USER_AWS}).split()
    )
    assert sourced == {name: value for name, value in leader.items() if name.startswith(("AWS_", "S3"))}


def test_a_kept_user_config_gets_the_s3_remote_through_rclone_variables_only(tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(USER_CONF)
    files = _s3_files(tmp_path, user_config=conf, lasting=lambda: (PASSWORD_TOKEN, None))
    assert "s3-secret" not in conf.read_text() and "s3allas" not in conf.read_text()
    env = files.environment()
    assert env["RCLONE_CONFIG_S3ALLAS_TYPE"] == "s3"
    assert env["RCLONE_CONFIG_S3ALLAS_FORCE_PATH_STYLE"] == "true"
    assert env["RCLONE_CONFIG_S3ALLAS_SECRET_ACCESS_KEY"] == "s3-secret"


@pytest.mark.parametrize(
    "keys", [S3Keys("a\nb", "s", "x", "https://a3s.fi"), S3Keys("a", "s\r", "x", "https://a3s.fi")]
)
def test_keys_that_would_break_a_config_line_are_refused(tmp_path: Path, keys: S3Keys) -> None:
    with pytest.raises(BadS3Keys) as raised:
        _files(tmp_path, s3=keys)
    assert "line break" in str(raised.value) and "a\nb" not in str(raised.value)


def _command_keys(env: dict[str, str], plan: Optional[StagePlan] = None) -> Optional[S3Keys]:
    plan = plan or StagePlan()
    return s3access.command_keys(plan, s3access.keys_for(plan, env), env)


def test_a_swift_run_gives_the_command_the_users_keys_only_when_they_name_their_endpoint(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    """Bare AWS variables may be Amazon's, which the job must keep using there."""
    env = {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    assert _command_keys(env) is None
    assert _command_keys({**env, "AWS_ENDPOINT_URL": "http://lab:1"}) == S3Keys(
        "a", "s", "AWS_ACCESS_KEY_ID", "http://lab:1"
    )
    assert _command_keys({"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "a"}) is None  # half a pair
    [warning] = _warnings(logged)
    assert warning.startswith("the command gets no S3 keys: AWS_ACCESS_KEY_ID is set but")


def test_a_run_staging_over_s3_gives_the_command_its_keys_at_the_remotes_endpoint(
    tmp_path: Path,
) -> None:
    plan = StagePlan(stage_in=(StageIn("job.sh:2", "bucket", "x", "x", remote="s3allas"),))
    env = {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    assert _command_keys(env, plan) == S3Keys("a", "s", "AWS_ACCESS_KEY_ID", "https://a3s.fi")


def test_a_run_on_s3_keys_alone_writes_only_what_s3_clients_read(tmp_path: Path) -> None:
    """No Keystone identity, no token: no `[allas]` remote, no OS_AUTH_TOKEN, no ST_* variables."""
    files = ClientFiles(tmp_path / "run", "allas", None, None, s3=KEYS)
    files.directory.mkdir()
    files.write(None)
    config = files.rclone_config.read_text()
    assert "[s3allas]" in config and "[allas]" not in config
    exported = read_env(files.env_path)
    assert exported["AWS_ACCESS_KEY_ID"] == KEYS.access
    assert not {name for name in exported if name.startswith(("OS_", "ST_"))}
    assert "token expires" not in files.env_path.read_text()

"""The rclone section and env file allasrun writes, and in-place edits of a user's rclone.conf."""

from __future__ import annotations

import subprocess

from allasrun.auth.identity import AppCredential, Target
from allasrun.auth.token import Token
from allasrun.job.clientfiles import env_file, rclone_section, replace_section

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


def test_env_file_is_valid_shell_even_with_odd_characters() -> None:
    token = Token("a'b c$d", 0.0, 90.0, "http://s/v1/AUTH_x;rm", "p", "u")
    script = env_file(token) + 'printf "%s|%s" "$OS_AUTH_TOKEN" "$OS_STORAGE_URL"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == "a'b c$d|http://s/v1/AUTH_x;rm"


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

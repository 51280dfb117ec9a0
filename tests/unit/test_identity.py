"""Precedence of secrets, CSC defaults, and what the job's environment may carry."""

from __future__ import annotations

import pytest

from allasrun.auth.identity import (
    DEFAULT_AUTH_URL,
    AppCredential,
    AskPassword,
    ExistingToken,
    Password,
    choose_secret,
    target_from_env,
)
from allasrun.errors import NoCredentials
from allasrun.job import child_environment

FULL = {
    "OS_APPLICATION_CREDENTIAL_ID": "cid",
    "OS_APPLICATION_CREDENTIAL_SECRET": "csecret",
    "OS_PASSWORD": "pw",
    "OS_AUTH_TOKEN": "tok",
    "OS_STORAGE_URL": "http://swift/v1/AUTH_x",
}
STORED = AppCredential("stored-id", "stored-secret", "file")


def test_application_credential_from_env_wins() -> None:
    assert choose_secret(FULL, STORED, can_prompt=True) == AppCredential(
        "cid", "csecret", "OS_APPLICATION_CREDENTIAL_ID/_SECRET"
    )


def test_stored_credential_beats_password() -> None:
    env = {k: v for k, v in FULL.items() if not k.startswith("OS_APPLICATION")}
    assert choose_secret(env, STORED, can_prompt=True) is STORED


def test_password_beats_prompt_and_token() -> None:
    env = {"OS_PASSWORD": "pw", "OS_AUTH_TOKEN": "tok"}
    assert choose_secret(env, None, can_prompt=True) == Password("pw")


def test_prompt_only_on_a_terminal_then_token() -> None:
    env = {"OS_AUTH_TOKEN": "tok", "OS_STORAGE_URL": "http://s"}
    assert isinstance(choose_secret(env, None, can_prompt=True), AskPassword)
    assert choose_secret(env, None, can_prompt=False) == ExistingToken("tok", "http://s")


def test_half_an_application_credential_is_not_used() -> None:
    env = {"OS_APPLICATION_CREDENTIAL_ID": "cid", "OS_PASSWORD": "pw"}
    assert choose_secret(env, None, can_prompt=False) == Password("pw")


def test_nothing_at_all_is_a_clear_error() -> None:
    with pytest.raises(NoCredentials, match="allasrun login"):
        choose_secret({}, None, can_prompt=False)


def test_csc_defaults_and_login_name() -> None:
    target = target_from_env({"OS_PROJECT_NAME": "project_2001234"}, "alice")
    assert target.auth_url == DEFAULT_AUTH_URL
    assert target.username == "alice"
    assert (target.user_domain, target.project_domain, target.interface) == ("Default", "Default", "public")
    assert target_from_env({"OS_USERNAME": "bob"}, "alice").username == "bob"


def test_child_environment_drops_every_secret() -> None:
    child = child_environment({**FULL, "HOME": "/h"}, {"RCLONE_CONFIG": "/r"})
    assert "OS_PASSWORD" not in child
    assert "OS_APPLICATION_CREDENTIAL_SECRET" not in child
    assert child["HOME"] == "/h"
    assert child["RCLONE_CONFIG"] == "/r"


def test_keep_password_keeps_only_the_password() -> None:
    child = child_environment(FULL, {}, keep_password=True)
    assert child["OS_PASSWORD"] == "pw"
    assert "OS_APPLICATION_CREDENTIAL_SECRET" not in child

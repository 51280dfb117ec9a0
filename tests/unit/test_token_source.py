"""`TokenSource` against a fake Keystone: the cache, renewal, run credentials, errors, redaction."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allasrun.auth import AppCredential, Token, TokenSource
from allasrun.errors import AllasrunError, AuthenticationFailed, KeystoneUnreachable
from allasrun.log import configure, log
from tests.unit.keystone_fake import (
    AUTH_URL,
    CREDENTIAL,
    CREDENTIALS,
    PROJECT,
    REFUSED,
    USER_ID,
    FakeKeystone,
    app_credential_env,
    capture_log,
    env_for,
    running,
    unique,
)


@pytest.fixture
def keystone(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKeystone]:
    monkeypatch.setattr("os.isatty", lambda fd: False)  # nobody to ask, even under `pytest -s`
    with running() as fake:
        yield fake


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    return capture_log(caplog, monkeypatch)


def _open(tmp_path: Path, password: str = "pw", **options: Any) -> TokenSource:
    return TokenSource.open(env_for(tmp_path, OS_PASSWORD=password), **options)


def _scoped_project(keystone: FakeKeystone) -> str:
    name: str = keystone.login_bodies()[-1]["auth"]["scope"]["project"]["name"]
    return name


def test_password_authenticates_once_and_the_next_open_is_served_by_the_cache(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    first = _open(tmp_path)
    assert keystone.logins == 1
    assert first.token.storage_url.startswith("http://swift.example/")
    second = _open(tmp_path)
    assert keystone.logins == 1
    assert second.token == first.token


def test_project_option_names_the_project_only_when_the_environment_does_not(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    unset = TokenSource.open(env_for(tmp_path, OS_PASSWORD="pw", OS_PROJECT_NAME=""), project="project_9")
    assert _scoped_project(keystone) == "project_9"
    assert unset.identity.target.project_name == "project_9"
    _open(tmp_path, project="project_9")
    assert _scoped_project(keystone) == PROJECT


def test_renewing_a_token_that_is_no_longer_current_returns_the_current_one(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    source = _open(tmp_path)
    old = source.token
    new = source.renew(old)
    assert new != old
    assert keystone.logins == 2
    assert source.renew(old) == new
    assert keystone.logins == 2
    assert source.renewals == 1


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_burst_of_renewals_of_one_token_costs_one_login(
    keystone: FakeKeystone, tmp_path: Path, use_cache: bool
) -> None:
    source = TokenSource.open(env_for(tmp_path, OS_PASSWORD="pw"), use_cache=use_cache)
    stale = source.token
    keystone.delay = 0.05  # without the lock, every thread would be inside a login at once
    start = threading.Barrier(8)
    got: list[Token] = []

    def renew() -> None:
        start.wait()
        got.append(source.renew(stale))

    threads = [threading.Thread(target=renew) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert keystone.logins == 2
    assert len(got) == 8
    assert {token.value for token in got} == {source.token.value}
    assert source.token != stale
    assert source.renewals == 1


def test_listeners_see_the_new_token_before_the_source_hands_it_out(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    source = _open(tmp_path)
    old = source.token
    seen: list[tuple[Token, Token]] = []
    source.on_renew(lambda fresh: seen.append((fresh, source.token)))
    new = source.renew()
    assert seen == [(new, old)]
    assert source.token == new


def test_a_listener_that_raises_leaves_the_old_token_in_place(keystone: FakeKeystone, tmp_path: Path) -> None:
    source = _open(tmp_path)
    old = source.token

    def refuse(fresh: Token) -> None:
        raise OSError("disk full")

    source.on_renew(refuse)
    with pytest.raises(OSError, match="disk full"):
        source.renew()
    assert keystone.logins == 2
    assert source.token == old
    assert source.renewals == 0


def test_every_secret_the_source_learns_is_masked_in_the_log(
    keystone: FakeKeystone,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password, app_secret = unique("pw"), unique("appsecret")
    with _open(tmp_path, password) as source:
        first = source.token.value
        renewed = source.renew().value
        source.use_run_credential(1.0)
        minted = source.app_credential
        assert minted is not None
        run_token = source.token.value
    revoker = keystone.requests("DELETE", CREDENTIAL)[0].headers["X-Auth-Token"]
    env = app_credential_env(tmp_path, app_secret)
    from_app = TokenSource.open(env).token.value
    secrets = [password, app_secret, first, renewed, minted.secret, run_token, revoker, from_app]
    assert len(set(secrets)) == len(secrets)

    monkeypatch.setattr(log, "handlers", [])  # `configure` replaces the handlers in this list
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)
    capsys.readouterr()
    configure(0)
    log.info("secrets: %s", " ".join(secrets))
    line = capsys.readouterr().err
    assert line.count("***") == len(secrets)
    for secret in secrets:
        assert secret not in line


def test_a_run_credential_replaces_the_password_and_is_revoked_with_the_password(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    with _open(tmp_path) as source:
        cached = source.token
        source.use_run_credential(2.0)
        [created] = keystone.created
        [creation] = keystone.requests("POST", CREDENTIALS)
        assert creation.path == f"/v3/users/{USER_ID}/application_credentials"
        assert creation.headers["X-Auth-Token"] == cached.value
        assert creation.json()["application_credential"]["unrestricted"] is False
        assert source.app_credential is not None
        assert source.app_credential.id == created
        assert keystone.login_bodies()[-1]["auth"]["identity"]["methods"] == ["application_credential"]
        assert source.cache is None
        source.renew()
        assert keystone.login_bodies()[-1]["auth"]["identity"]["application_credential"]["id"] == created
        assert keystone.deleted == []
    assert keystone.deleted == [created]
    [deletion] = keystone.requests("DELETE", CREDENTIAL)
    assert keystone.methods[deletion.headers["X-Auth-Token"]] == "password"
    assert _open(tmp_path).token == cached  # the run credential's tokens never reached the cache


def test_an_application_credential_is_used_as_it_is(keystone: FakeKeystone, tmp_path: Path) -> None:
    env = app_credential_env(tmp_path)
    with TokenSource.open(env) as source:
        source.use_run_credential(2.0)
        assert source.app_credential == AppCredential("cid", "cs", "OS_APPLICATION_CREDENTIAL_ID/_SECRET")
    assert keystone.created == keystone.deleted == []
    assert keystone.logins == 1


@pytest.mark.parametrize("status", [403, 503, REFUSED])
def test_a_failed_revoke_warns_and_returns_false(
    keystone: FakeKeystone, tmp_path: Path, logged: pytest.LogCaptureFixture, status: int
) -> None:
    source = _open(tmp_path)
    source.use_run_credential(1.0)
    credential = keystone.created[0]
    keystone.fail("delete", status)
    assert source.revoke(credential, "the test credential") is False
    source.close()  # the same failure, once more: never raised
    warnings = [r.getMessage() for r in logged.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("could not revoke the test credential: ")
    assert keystone.deleted == []


def test_a_credential_that_is_already_gone_counts_as_revoked(keystone: FakeKeystone, tmp_path: Path) -> None:
    source = _open(tmp_path)
    keystone.fail("delete", 404)
    assert source.revoke("cred-gone", "a purged credential") is True


@pytest.mark.parametrize(
    ("status", "error", "exit_code"),
    [(401, AuthenticationFailed, 77), (503, KeystoneUnreachable, 69), (REFUSED, KeystoneUnreachable, 69)],
)
def test_keystone_failures_map_to_exit_codes_and_name_the_url_not_the_password(
    keystone: FakeKeystone, tmp_path: Path, status: int, error: type[AllasrunError], exit_code: int
) -> None:
    password = unique("pw")
    keystone.fail("auth", status)
    with pytest.raises(error) as raised:
        _open(tmp_path, password)
    assert raised.value.exit_code == exit_code
    assert AUTH_URL in str(raised.value)
    assert password not in str(raised.value)


def test_an_existing_token_is_validated_and_not_renewable(keystone: FakeKeystone, tmp_path: Path) -> None:
    existing = unique("existing")
    source = TokenSource.open(env_for(tmp_path, OS_AUTH_TOKEN=existing))
    [validation] = keystone.requests("GET")
    assert validation.headers["X-Subject-Token"] == existing
    assert keystone.logins == 0
    assert source.token.value == existing
    assert not source.token.renewable
    assert not source.identity.secret.renewable
    assert source.cache is None

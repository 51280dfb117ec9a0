"""`TokenSource` against a fake Keystone: the cache, renewal, run credentials, errors, redaction."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from allasrun.auth import AppCredential, Schedule, Token, TokenSource
from allasrun.commands import env as env_command
from allasrun.commands import status as status_command
from allasrun.errors import AllasrunError, AuthenticationFailed, KeystoneUnreachable, LocalFileError
from allasrun.log import configure, hide, log
from tests.unit.keystone_fake import (
    AUTH_URL,
    CREDENTIAL,
    CREDENTIALS,
    EC2_KEYS,
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


@pytest.mark.parametrize("skew", [0.0, -600.0], ids=["right", "behind"])
def test_a_token_from_keystone_carries_this_nodes_clock_offset_into_the_cache(
    keystone: FakeKeystone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """What the keeper and the token service read the token's times by, and what the next run
    on this host judges the cached token by."""
    monkeypatch.setattr("allasrun.auth.source.time", SimpleNamespace(time=lambda: time.time() + skew))
    source = _open(tmp_path)
    assert source.clock_offset is not None and abs(source.clock_offset - skew) < 1.0
    assert source.cache is not None
    entry = source.cache.load()
    assert entry is not None and entry.written_here and entry.clock_offset == source.clock_offset
    assert _open(tmp_path).clock_offset == min(source.clock_offset, 0.0)  # served by the cache
    assert keystone.logins == 1


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


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), LocalFileError("cannot write"), RuntimeError("bug")],
)
def test_a_listener_that_raises_does_not_lose_the_new_token(
    keystone: FakeKeystone, tmp_path: Path, logged: pytest.LogCaptureFixture, failure: Exception
) -> None:
    source = _open(tmp_path)
    old = source.token

    def refuse(fresh: Token) -> None:
        raise failure

    source.on_renew(refuse)
    new = source.renew()
    assert keystone.logins == 2
    assert new != old
    assert source.token == new
    assert source.renewals == 1
    [warning] = [r.getMessage() for r in logged.records if r.levelno == logging.WARNING]
    assert str(failure) in warning


def _cache_write_fails(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def refuse(path: Path, text: str) -> None:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr("allasrun.auth.cache.write_atomic", refuse)


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.ENOSPC, errno.EACCES])
def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_token(
    keystone: FakeKeystone,
    tmp_path: Path,
    logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    _cache_write_fails(monkeypatch, code)
    source = _open(tmp_path)
    assert source.token.value in keystone.methods
    renewed = source.renew()
    assert source.token == renewed
    assert keystone.logins == 2
    warnings = [r.getMessage() for r in logged.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("token cache" in w and os.strerror(code) in w for w in warnings)


def test_a_cache_directory_that_cannot_be_made_costs_a_warning_not_the_token(
    keystone: FakeKeystone, tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    source = _open(tmp_path)
    assert source.token.value in keystone.methods
    assert source.renew() == source.token
    assert any("token cache" in r.getMessage() for r in logged.records if r.levelno == logging.WARNING)


def test_a_wrong_password_after_a_right_one_is_refused_not_served_from_the_cache(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    right = _open(tmp_path, "right")
    keystone.fail("auth", 401)  # Keystone refuses whatever comes next: the wrong password
    with pytest.raises(AuthenticationFailed):
        _open(tmp_path, "wrong")
    assert keystone.logins == 2
    keystone.heal()
    assert _open(tmp_path, "right").token == right.token  # and the right one still hits the cache
    assert keystone.logins == 2


def test_a_wrong_password_before_a_right_one_leaves_nothing_behind(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    keystone.fail("auth", 401)
    with pytest.raises(AuthenticationFailed):
        _open(tmp_path, "wrong")
    keystone.heal()
    right = _open(tmp_path, "right")
    assert keystone.methods[right.token.value] == "password"
    assert keystone.logins == 2


def test_another_secret_of_one_application_credential_is_not_served_from_the_cache(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    first = TokenSource.open(app_credential_env(tmp_path, "secret-one")).token
    second = TokenSource.open(app_credential_env(tmp_path, "secret-two")).token
    assert keystone.logins == 2
    assert second != first
    assert TokenSource.open(app_credential_env(tmp_path, "secret-one")).token == first


def test_the_cache_holds_neither_the_secret_nor_a_plain_hash_of_it(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    password = unique("pw")
    _open(tmp_path, password)
    TokenSource.open(app_credential_env(tmp_path, password))
    plain = {hashlib.sha256(password.encode()).hexdigest(), hashlib.md5(password.encode()).hexdigest()}
    files = [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert len(files) >= 3  # two tokens and the key
    for path in files:
        text = path.name + path.read_bytes().decode("latin-1")
        assert password not in text
        assert not any(digest[:16] in text for digest in plain)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_a_storage_url_option_is_not_served_a_cached_token_of_another_url(
    keystone: FakeKeystone, tmp_path: Path
) -> None:
    catalog = _open(tmp_path).token.storage_url
    other = "http://other.example/v1/AUTH_x"
    assert _open(tmp_path, storage_url=other).token.storage_url == other
    assert _open(tmp_path).token.storage_url == catalog
    assert _open(tmp_path, storage_url=other).token.storage_url == other
    assert keystone.logins == 2


def test_what_outlives_the_run_is_never_the_run_credential(keystone: FakeKeystone, tmp_path: Path) -> None:
    with _open(tmp_path) as source:
        assert source.lasting() == (source.token, None)
        source.use_run_credential(1.0)
        token, credential = source.lasting()
        assert credential is None
        assert keystone.methods[token.value] == "password"
        assert token.value != source.token.value
    with TokenSource.open(app_credential_env(tmp_path)) as durable:
        assert durable.lasting() == (durable.token, durable.app_credential)


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
    assert revoker == renewed  # the password's cached token: revoking cost no login
    env = app_credential_env(tmp_path, app_secret)
    from_app = TokenSource.open(env).token.value
    secrets = [password, app_secret, first, renewed, minted.secret, run_token, from_app]
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


@pytest.fixture
def stderr_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> pytest.CaptureFixture[str]:
    """allasrun's own stderr handler, as `configure` sets it up, put back after the test.

    The handler is made in the test itself (`_to_stderr`): during fixture setup sys.stderr is
    pytest's, not the capture the test reads.
    """
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)
    return capsys


def _to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure(1)
    capsys.readouterr()


def test_a_traceback_in_the_log_is_masked_too(stderr_log: pytest.CaptureFixture[str]) -> None:
    _to_stderr(stderr_log)
    secret = unique("in-a-traceback")
    hide(secret)
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError:
        log.exception("renewal failed")
        log.debug("and with the stack", stack_info=True, exc_info=True)
    err = stderr_log.readouterr().err
    assert "Traceback" in err and "refused ***" in err
    assert secret not in err


def test_hiding_while_another_thread_logs_never_breaks_a_log_call(
    stderr_log: pytest.CaptureFixture[str],
) -> None:
    _to_stderr(stderr_log)
    stop = threading.Event()

    hide(*(unique("s") for _ in range(2000)))  # so each log call spends a while masking

    def keep_hiding() -> None:
        while not stop.is_set():  # one at a time, all through the logging below
            hide(unique("s"))
            time.sleep(0.0005)

    hider = threading.Thread(target=keep_hiding)
    hider.start()
    try:
        for n in range(300):
            log.info("line %d", n)
    finally:
        stop.set()
        hider.join()
    assert stderr_log.readouterr().err.count("line ") == 300


def test_a_process_that_holds_a_secret_cannot_be_dumped() -> None:
    hide(unique("s"))
    status = Path("/proc/self/status").read_text()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE: no core file, no ptrace by the user
    assert "Name:" in status


def test_env_and_status_register_every_secret_they_learn(
    keystone: FakeKeystone, tmp_path: Path, stderr_log: pytest.CaptureFixture[str]
) -> None:
    password = unique("pw")
    env = env_for(tmp_path, OS_PASSWORD=password)
    exported = env_command.run(env, Schedule()).split("\n")[0].split("=", 1)[1]
    status_command.run(
        env_for(tmp_path, OS_PASSWORD=password, ALLASRUN_CACHE_DIR=str(tmp_path / "c2")), Schedule()
    )
    tokens = list(keystone.methods)
    log.info("%s %s %s", password, exported, " ".join(tokens))
    err = stderr_log.readouterr().err
    assert exported in tokens
    for secret in (password, *tokens):
        assert secret not in err


def test_s3_keys_made_for_the_run_with_the_password_are_deleted_at_its_end(
    keystone: FakeKeystone, tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    with _open(tmp_path) as source:
        source.use_run_credential(1.0)  # the run's credential may not make keys: the password's token does
        keys = source.run_s3_keys()
        assert keys is not None and keystone.ec2 == {keys.access: keys.secret}
        maker = keystone.requests("POST", EC2_KEYS)[0].headers["X-Auth-Token"]
        assert keystone.methods[maker] == "password"
    assert keystone.ec2 == {}
    assert f"deleted S3 keys {keys.access}" in logged.text
    assert keys.secret not in logged.text


def test_an_application_credential_makes_no_s3_keys(keystone: FakeKeystone, tmp_path: Path) -> None:
    with TokenSource.open(app_credential_env(tmp_path)) as source:
        assert source.run_s3_keys() is None
    assert not keystone.requests("POST", EC2_KEYS)


def test_keys_that_cannot_be_deleted_are_named_with_the_command_that_deletes_them(
    keystone: FakeKeystone, tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    with _open(tmp_path) as source:
        keys = source.run_s3_keys()
        assert keys is not None
        keystone.fail("ec2", 503)
    assert f"could not delete the S3 keys {keys.access}" in logged.text
    assert f"openstack ec2 credentials delete {keys.access}" in logged.text

"""Credentials handed to batch jobs: made or shared, recorded, and swept once the job has gone."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from allasrun.auth import TokenSource
from allasrun.auth.credstore import read
from allasrun.auth.handover import SWEEP_AFTER, Handover, hand_over, settle, sweep
from tests.unit import keystone_fake as ks
from tests.unit.keystone_fake import FakeKeystone, app_credential_env, capture_log, env_for, running

IN_A_DAY = time.time() + 86_400


@pytest.fixture
def keystone() -> Iterator[FakeKeystone]:
    with running() as fake:
        yield fake


@pytest.fixture
def password_source(keystone: FakeKeystone, tmp_path: Path) -> TokenSource:
    return TokenSource.open(env_for(tmp_path, OS_PASSWORD="pw"))


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


def _handed(source: TokenSource, jobs: Path, job_id: str = "", age: float = 0.0) -> Handover:
    """A job's credentials file, recorded with `job_id`, last written `age` seconds ago."""
    given = hand_over(source, jobs, IN_A_DAY)
    if job_id:
        settle(source, given, job_id, ended=False)
    then = time.time() - age
    os.utime(given.path, (then, then))
    return given


def test_a_password_source_makes_the_job_a_credential_of_its_own(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = hand_over(password_source, jobs, IN_A_DAY)
    [created] = keystone.created
    assert given.path == jobs / f"{created}.json"
    assert stat.S_IMODE(given.path.stat().st_mode) == 0o600
    stored = read(given.path)
    assert stored == given.stored
    assert (stored.id, stored.owned, stored.job_id) == (created, True, "")
    assert stored.secret.startswith("csecret-")
    assert (stored.auth_url, stored.project_name) == (ks.AUTH_URL, ks.PROJECT)
    assert stored.user_id == ks.USER_ID
    expiry = datetime.strptime(stored.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(expiry.timestamp() - IN_A_DAY) < 1
    [creation] = keystone.requests("POST", ks.CREDENTIALS)
    assert creation.json()["application_credential"]["expires_at"] == stored.expires_at[:-1]


def test_an_application_credential_source_shares_its_own(
    keystone: FakeKeystone, tmp_path: Path, jobs: Path
) -> None:
    env = app_credential_env(tmp_path)
    given = hand_over(TokenSource.open(env), jobs, IN_A_DAY)
    assert (given.stored.id, given.stored.secret, given.stored.owned) == ("cid", "cs", False)
    assert given.stored.expires_at == ""
    assert stat.S_IMODE(given.path.stat().st_mode) == 0o600
    assert keystone.requests("POST", ks.CREDENTIALS) == []


def test_settle_records_the_job_that_got_the_credential(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = hand_over(password_source, jobs, IN_A_DAY)
    settle(password_source, given, "4242", ended=False)
    assert read(given.path).job_id == "4242"
    assert keystone.deleted == []


@pytest.mark.parametrize(("job_id", "ended"), [("", False), ("4242", True)], ids=["not-submitted", "ended"])
def test_settle_deletes_a_credential_no_job_will_use(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path, job_id: str, ended: bool
) -> None:
    given = hand_over(password_source, jobs, IN_A_DAY)
    settle(password_source, given, job_id, ended)
    assert keystone.deleted == [given.stored.id]
    assert not given.path.exists()


def test_settle_never_deletes_a_shared_credential_but_removes_its_copy(
    keystone: FakeKeystone, tmp_path: Path, jobs: Path
) -> None:
    env = app_credential_env(tmp_path)
    source = TokenSource.open(env)
    given = hand_over(source, jobs, IN_A_DAY)
    settle(source, given, "4242", ended=True)
    assert keystone.deleted == []
    assert not given.path.exists()  # the user's secret is not left copied in a file no job reads


def test_sweep_deletes_the_credentials_of_finished_jobs_only(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    done, running_job = _handed(password_source, jobs, "1"), _handed(password_source, jobs, "2")
    asked: list[str] = []

    def finished(job: str) -> bool:
        asked.append(job)
        return job == "1"

    sweep(password_source, jobs, finished)
    assert sorted(asked) == ["1", "2"]
    assert keystone.deleted == [done.stored.id]
    assert not done.path.exists()
    assert running_job.path.exists()


def test_sweep_waits_an_hour_for_a_submission_that_got_no_job_id(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    young = _handed(password_source, jobs, age=SWEEP_AFTER - 60)
    old = _handed(password_source, jobs, age=SWEEP_AFTER + 60)
    sweep(password_source, jobs, lambda job: True)
    assert keystone.deleted == [old.stored.id]
    assert young.path.exists()
    assert not old.path.exists()


def test_sweep_keeps_the_file_when_keystone_cannot_revoke(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = _handed(password_source, jobs, "1")
    keystone.fail("delete", 503)
    sweep(password_source, jobs, lambda job: True)
    assert given.path.exists()  # the next sweep tries again


def test_sweep_skips_a_file_others_can_read(
    keystone: FakeKeystone,
    password_source: TokenSource,
    jobs: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture_log(caplog, monkeypatch)
    exposed = _handed(password_source, jobs, "1")
    exposed.path.chmod(0o644)
    sweep(password_source, jobs, lambda job: True)
    assert exposed.path.exists()
    assert keystone.deleted == []
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"skipping {exposed.path}: ")
    assert "0644" in warning

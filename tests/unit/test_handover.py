"""Credentials handed to batch jobs: made or shared, recorded, and swept only once provably unused.

The handover functions are tested with a stand-in for "has this job finished?"; the sbatch
and login commands run against a fake Keystone, a stand-in `sbatch` on PATH and Slurm's
answers (squeue, scontrol) faked through the slurm module's runner, `facts._run`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pytest

from allasrun.auth import TokenSource, credstore, utc_text
from allasrun.auth.credstore import StoredCredential, read
from allasrun.auth.handover import Handover, hand_over, record, release, retire, sweep
from allasrun.commands import login, sbatch
from allasrun.errors import NoCredentials
from allasrun.slurm import facts
from tests.unit import keystone_fake as ks
from tests.unit.keystone_fake import FakeKeystone, app_credential_env, capture_log, env_for, running

IN_A_DAY = time.time() + 86_400


@pytest.fixture
def keystone(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKeystone]:
    monkeypatch.setattr("os.isatty", lambda fd: False)
    with running() as fake:
        yield fake


@pytest.fixture
def password_source(keystone: FakeKeystone, tmp_path: Path) -> TokenSource:
    return TokenSource.open(env_for(tmp_path, OS_PASSWORD="pw"))


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return tmp_path / "config" / "jobs"


def _handed(source: TokenSource, jobs: Path, job_id: str = "", cluster: str = "") -> Handover:
    given = hand_over(source, jobs, IN_A_DAY)
    return record(given, job_id, cluster) if job_id else given


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


def test_an_application_credential_source_shares_its_own_in_a_file_per_job(
    keystone: FakeKeystone, tmp_path: Path, jobs: Path
) -> None:
    source = TokenSource.open(app_credential_env(tmp_path))
    first, second = hand_over(source, jobs, IN_A_DAY), hand_over(source, jobs, IN_A_DAY, IN_A_DAY + 60)
    assert (first.stored.id, first.stored.secret, first.stored.owned) == ("cid", "cs", False)
    assert (first.stored.expires_at, second.stored.expires_at) == ("", utc_text(IN_A_DAY + 60))
    assert first.path != second.path  # one job's record never replaces another's
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert keystone.requests("POST", ks.CREDENTIALS) == []


def test_record_writes_the_job_and_its_cluster(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = record(hand_over(password_source, jobs, IN_A_DAY), "4242", "mahti")
    assert (read(given.path).job_id, read(given.path).cluster) == ("4242", "mahti")
    assert keystone.deleted == []


def test_release_deletes_a_credential_no_job_will_use(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = hand_over(password_source, jobs, IN_A_DAY)
    release(password_source, given, lambda held: False)
    assert keystone.deleted == [given.stored.id]
    assert not given.path.exists()


def test_release_never_deletes_a_shared_credential_but_removes_its_copy(
    keystone: FakeKeystone, tmp_path: Path, jobs: Path
) -> None:
    source = TokenSource.open(app_credential_env(tmp_path))
    given = hand_over(source, jobs, IN_A_DAY)
    release(source, given, lambda held: False)
    assert keystone.deleted == []
    assert not given.path.exists()  # the user's secret is not left copied in a file no job reads


def test_release_keeps_a_credential_that_a_job_it_submitted_still_holds(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    """`sbatch --wait` of a job that submitted another with its own credential: the child keeps it."""
    parent = _handed(password_source, jobs, "100")
    child = replace(parent.stored, owned=False, job_id="101")
    child_path = credstore.write(jobs / f"{parent.stored.id}-child.json", child)
    release(password_source, parent, lambda held: held.job_id != "101")
    assert keystone.deleted == []
    assert parent.path.exists() and child_path.exists()
    sweep(password_source, jobs, lambda held: True)  # both have ended now
    assert keystone.deleted == [parent.stored.id]
    assert not parent.path.exists() and not child_path.exists()


def test_sweep_deletes_the_credentials_of_finished_jobs_only(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    done, running_job = _handed(password_source, jobs, "1"), _handed(password_source, jobs, "2")
    asked: list[str] = []

    def finished(held: StoredCredential) -> bool:
        asked.append(held.job_id)
        return held.job_id == "1"

    sweep(password_source, jobs, finished)
    assert sorted(asked) == ["1", "2"]
    assert keystone.deleted == [done.stored.id]
    assert not done.path.exists()
    assert running_job.path.exists()


def test_sweep_never_deletes_a_credential_whose_job_is_unknown_until_it_expires(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    """No job id (sbatch -Q, a wrapper's output, a crash before sbatch answered): kept, however old."""
    young, old = _handed(password_source, jobs), _handed(password_source, jobs)
    long_ago = time.time() - 30 * 86_400
    os.utime(old.path, (long_ago, long_ago))
    sweep(password_source, jobs, lambda held: True)
    assert keystone.deleted == []
    assert young.path.exists() and old.path.exists()
    expired = credstore.write(old.path, replace(old.stored, expires_at=utc_text(time.time() - 60)))
    sweep(password_source, jobs, lambda held: True)
    assert keystone.deleted == [old.stored.id]
    assert not expired.exists() and young.path.exists()


def test_sweep_keeps_the_file_when_keystone_cannot_revoke(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = _handed(password_source, jobs, "1")
    keystone.fail("delete", 503)
    sweep(password_source, jobs, lambda held: True)
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
    sweep(password_source, jobs, lambda held: True)
    assert exposed.path.exists()
    assert keystone.deleted == []
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"skipping {exposed.path}: ")
    assert "0644" in warning


def test_a_record_another_sweep_removed_meanwhile_is_skipped_quietly(
    keystone: FakeKeystone,
    password_source: TokenSource,
    jobs: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two submissions sweeping at once: the file listed is gone when it is read."""
    capture_log(caplog, monkeypatch)
    gone, kept = _handed(password_source, jobs, "1"), _handed(password_source, jobs, "2")
    real_read = credstore.read

    def racing_read(path: Path) -> StoredCredential:
        gone.path.unlink(missing_ok=True)  # the other sweep got there first
        return real_read(path)

    monkeypatch.setattr(credstore, "read", racing_read)
    sweep(password_source, jobs, lambda held: True)
    assert keystone.deleted == [kept.stored.id]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_retire_leaves_a_held_credential_to_its_jobs(
    keystone: FakeKeystone, tmp_path: Path, password_source: TokenSource, jobs: Path
) -> None:
    source = TokenSource.open(app_credential_env(tmp_path))
    held = _handed(source, jobs, "7")
    previous = replace(held.stored, name="allasrun-login-x", job_id="")
    assert retire(password_source, jobs, previous, lambda job: False) == ["7"]
    assert keystone.deleted == []
    assert read(held.path).owned  # the sweep after job 7 revokes it
    assert retire(password_source, jobs, previous, lambda job: True) == []
    assert keystone.deleted == ["cid"]
    assert not held.path.exists()


# --- what counts as finished: slurmctld's answer, through the slurm module's runner ----------

ANSWERS = Mapping[str, Optional[str]]


def fake_slurm(monkeypatch: pytest.MonkeyPatch, answers: ANSWERS) -> list[list[str]]:
    """Answer `facts._run` by the command's first words (None: the command failed)."""
    asked: list[list[str]] = []

    def run(command: list[str], env: Mapping[str, str]) -> Optional[str]:
        asked.append(command)
        key = " ".join(command[:3]) + (" " + command[-1] if command[-1].startswith("--clusters") else "")
        return answers.get(key, answers.get(" ".join(command[:3])))

    monkeypatch.setattr(facts, "_run", run)
    return asked


CONFIG = {"scontrol show config": "ClusterName             = puhti\nOther = x\n"}
LISTING = "squeue --noheader --me"


@pytest.mark.parametrize(
    ("listing", "active"),
    [
        (None, None),  # squeue failed or timed out: nobody knows
        ("", False),  # slurmctld answered: no such job of ours
        ("4242|4242|RUNNING\n", True),
        ("4242|4242|COMPLETING\n", True),
        ("4242|4242|COMPLETED\n", False),
        ("4242|4242|NODE_FAIL\n", True),  # may be requeued: wait until slurmctld forgets it
        ("4243|4242_1|COMPLETED\n4244|4242_2|PENDING\n", True),
        ("4243|4242_1|COMPLETED\n4244|4242_2|TIMEOUT\n", False),
        ("42420|42420|RUNNING\n", False),
    ],
)
def test_job_active_believes_only_an_answer(
    monkeypatch: pytest.MonkeyPatch, listing: Optional[str], active: Optional[bool]
) -> None:
    fake_slurm(monkeypatch, {**CONFIG, LISTING: listing})
    assert facts.job_active("4242", {}, "puhti") is active


def test_job_active_asks_the_jobs_own_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_slurm(monkeypatch, {**CONFIG, LISTING: "", f"{LISTING} --clusters=mahti": None})
    assert facts.job_active("4242", {"SLURM_CLUSTERS": "lumi"}, "mahti") is None
    assert asked[-1][-1] == "--clusters=mahti"
    assert facts.job_active("4242", {"SLURM_CLUSTERS": "lumi"}, "puhti") is False
    assert "--clusters=puhti" not in asked[-1]


# --- allasrun sbatch: sweep, record, release -------------------------------------------------

FAKE_SBATCH = """#!/bin/sh
# Like sbatch: -Q prints nothing, --parsable prints the id alone; --wait returns when the job ends.
printf '%s\\n' "$@" > "$RECORD/argv"
env > "$RECORD/env"
quiet=; parsable=; wait=; cluster=
for word; do case "$word" in
  -Q|--quiet) quiet=1;; --parsable) parsable=1;; --wait|-W) wait=1;; -M*|--clusters=*) cluster=1;;
esac; done
if [ -z "$quiet" ]; then
  if [ -n "$parsable" ]; then echo 4242${cluster:+;mahti}
  else echo "Submitted batch job 4242${cluster:+ on cluster mahti}"; fi
  [ -n "$EXTRA" ] && echo "$EXTRA"
fi
if [ -n "$wait" ]; then  # the job runs: its record must name it by now
  i=0
  until grep -q '"job_id": "4242"' "$ALLASRUN_CREDENTIALS" || [ $i -ge 200 ]; do sleep 0.1; i=$((i+1)); done
  cp "$ALLASRUN_CREDENTIALS" "$RECORD/during"
fi
exit "${STATUS:-0}"
"""


@pytest.fixture
def submitting(keystone: FakeKeystone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A password user's environment with the stand-in sbatch first on PATH; the cwd has job.sh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    (tmp_path / "job.sh").write_text("#!/bin/bash\n#SBATCH --time=10\ntrue\n")
    monkeypatch.chdir(tmp_path)
    return env_for(tmp_path, OS_PASSWORD="pw", PATH=f"{bin_dir}:/usr/bin:/bin", RECORD=str(tmp_path))


def _sbatch(env: Mapping[str, str], *argv: str) -> int:
    return sbatch.run(sbatch.SbatchOptions([*argv, "job.sh"]), env)


def _replace_sbatch(tmp_path: Path, body: str) -> None:
    (tmp_path / "bin" / "sbatch").write_text(f"#!/bin/sh\n{body}\n")


def _records(tmp_path: Path) -> list[StoredCredential]:
    return [read(path) for path in sorted((tmp_path / "config" / "jobs").glob("*.json"))]


def _earlier_job(
    keystone: FakeKeystone, tmp_path: Path, job_id: str, cluster: str = "puhti", until: float = IN_A_DAY
) -> Path:
    source = TokenSource.open(env_for(tmp_path, OS_PASSWORD="pw"))
    return record(hand_over(source, tmp_path / "config" / "jobs", until), job_id, cluster).path


def test_a_failed_squeue_never_costs_a_job_its_credential(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = _earlier_job(keystone, tmp_path, "4000")
    fake_slurm(monkeypatch, {**CONFIG, LISTING: None})
    assert _sbatch(submitting) == 0
    assert keystone.deleted == []
    assert earlier.exists()


def test_a_job_slurm_has_finished_or_forgotten_is_swept(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    done, forgotten = _earlier_job(keystone, tmp_path, "4000"), _earlier_job(keystone, tmp_path, "3999")
    queued = _earlier_job(keystone, tmp_path, "4001")
    fake_slurm(monkeypatch, {**CONFIG, LISTING: "4000|4000|COMPLETED\n4001|4001|PENDING\n"})
    assert _sbatch(submitting) == 0
    assert sorted(keystone.deleted) == sorted(read_id(p) for p in (done, forgotten))
    assert queued.exists()
    assert [r.job_id for r in _records(tmp_path)].count("4242") == 1


def read_id(path: Path) -> str:
    return path.name.removesuffix(".json")


def test_a_job_on_another_cluster_is_asked_about_there(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submitted with -M mahti: this cluster's empty listing says nothing about it."""
    fake_slurm(monkeypatch, {**CONFIG, LISTING: "", f"{LISTING} --clusters=mahti": None})
    assert _sbatch(submitting, "-M", "mahti") == 0
    [mine] = _records(tmp_path)
    assert (mine.job_id, mine.cluster) == ("4242", "mahti")
    assert _sbatch(submitting) == 0
    assert keystone.deleted == []
    assert {r.cluster for r in _records(tmp_path)} == {"mahti", "puhti"}


def test_quiet_sbatch_still_records_its_job(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    assert _sbatch(submitting, "-Q") == 0
    assert capfd.readouterr().out == ""  # quiet is quiet
    [mine] = _records(tmp_path)
    assert mine.job_id == "4242" and mine.owned
    assert keystone.deleted == []


def test_a_wrappers_extra_line_is_not_taken_for_the_job(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    submitting["EXTRA"] = "Remember to cite the cluster in papers"
    assert _sbatch(submitting) == 0
    [mine] = _records(tmp_path)
    assert mine.job_id == "4242"


def test_no_job_named_keeps_the_credential(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    (tmp_path / "job.sh").write_text("#!/bin/bash\n#SBATCH -Q\ntrue\n")  # -Q where allasrun does not look
    _replace_sbatch(tmp_path, "exit 0")
    assert _sbatch(submitting) == 0
    [mine] = _records(tmp_path)
    assert mine.job_id == "" and keystone.deleted == []


def test_a_failed_sbatch_releases_the_credential(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    _replace_sbatch(tmp_path, "echo 'sbatch: error: Invalid --time specification' >&2; exit 1")
    assert _sbatch(submitting) == 1
    assert _records(tmp_path) == [] and len(keystone.deleted) == 1


def test_wait_records_the_job_while_it_runs_and_releases_it_after(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    assert _sbatch(submitting, "--wait") == 0
    during = read(tmp_path / "during")
    assert during.job_id == "4242"  # a sweep meanwhile would have asked Slurm about job 4242
    assert keystone.deleted == [during.id]
    assert _records(tmp_path) == []


def test_the_job_environment_has_nothing_of_an_enclosing_allasrun(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    outer = tmp_path / "outer-run"
    submitting.update(
        ALLASRUN_DIR=str(outer),
        ALLASRUN_ENV_FILE=str(outer / "env"),
        ALLASRUN_NODE="login1",
        RCLONE_CONFIG=str(outer / "rclone.conf"),
        OS_AUTH_TOKEN="outer-token",
        ALLASRUN_CACHE_DIR=str(tmp_path / "cache"),
    )
    assert _sbatch(submitting) == 0
    job_env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    for name in ("ALLASRUN_DIR", "ALLASRUN_ENV_FILE", "ALLASRUN_NODE", "RCLONE_CONFIG", "OS_AUTH_TOKEN"):
        assert name not in job_env
    assert job_env["ALLASRUN_CACHE_DIR"] == str(tmp_path / "cache")  # the user's own settings stay
    assert Path(job_env["ALLASRUN_CREDENTIALS"]).parent == tmp_path / "config" / "jobs"


def test_export_none_still_exports_the_credentials(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    assert _sbatch(submitting, "--export=NONE") == 0
    exports = [w for w in (tmp_path / "argv").read_text().splitlines() if w.startswith("--export")]
    [export] = exports
    assert "ALLASRUN_CREDENTIALS" in export.split("=", 1)[1].split(",")
    assert "OS_AUTH_URL" in export and "OS_PASSWORD" not in export


def test_a_job_that_submits_another_keeps_its_own_record(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    parent = _earlier_job(keystone, tmp_path, "100", until=time.time() + 5 * 86_400)
    parent_record = read(parent)
    in_job = {**submitting, "ALLASRUN_CREDENTIALS": str(parent)}
    del in_job["OS_PASSWORD"]
    assert _sbatch(in_job, "--time=10") == 0
    assert read(parent) == parent_record  # still the parent's, still owned
    [child] = [r for r in _records(tmp_path) if r.job_id == "4242"]
    assert (child.id, child.owned, child.expires_at) == (parent_record.id, False, parent_record.expires_at)


def test_a_job_cannot_hand_on_a_credential_that_ends_before_the_new_job(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    parent = _earlier_job(keystone, tmp_path, "100")  # expires in a day
    in_job = {**submitting, "ALLASRUN_CREDENTIALS": str(parent)}
    del in_job["OS_PASSWORD"]
    with pytest.raises(NoCredentials, match=r"expires .* before this job can end"):
        _sbatch(in_job, "--time=2-0")
    assert not (tmp_path / "argv").exists()  # nothing was submitted


def test_a_login_credential_that_ends_before_the_job_is_refused(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str]
) -> None:
    env = env_for(tmp_path, OS_PASSWORD="pw")
    login.run(env, days=4)  # not for 72 h in the queue, 2 days of work and the 1 h margin
    with pytest.raises(NoCredentials, match="run 'allasrun login' again"):
        _sbatch(submitting, "--time=2-0")
    assert _sbatch(submitting, "--time=60") == 0


def test_login_never_revokes_a_credential_a_queued_job_holds(
    keystone: FakeKeystone, tmp_path: Path, submitting: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(tmp_path, OS_PASSWORD="pw")
    login.run(env, days=30)
    [first] = keystone.created
    assert _sbatch(submitting) == 0  # shares the login credential
    fake_slurm(monkeypatch, {**CONFIG, LISTING: "4242|4242|PENDING\n"})
    report = login.run(env, days=30)
    assert keystone.deleted == []
    assert "kept the previous credential" in report and "4242" in report
    [held] = _records(tmp_path)
    assert (held.id, held.owned) == (first, True)
    fake_slurm(monkeypatch, {**CONFIG, LISTING: "4242|4242|COMPLETED\n"})
    login.run(env, days=30)  # has the password: sweeps as a password sbatch would
    assert keystone.deleted[0] == first
    assert _records(tmp_path) == []


def test_login_revokes_the_previous_credential_when_no_job_holds_it(
    keystone: FakeKeystone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(tmp_path, OS_PASSWORD="pw")
    login.run(env, days=30)
    login.run(env, days=30)
    assert keystone.deleted == keystone.created[:1]


def test_a_held_or_deferred_job_is_warned_that_its_credential_may_run_out(
    keystone: FakeKeystone,
    submitting: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture_log(caplog, monkeypatch)
    assert _sbatch(submitting, "--hold", "--begin=now+5days") == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("--hold, --begin: the job's credential expires ")
    assert "give a larger --queue-hours" in warning


def test_an_s3_job_gets_keys_of_its_own_deleted_with_its_record(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path, tmp_path: Path
) -> None:
    given = record(hand_over(password_source, jobs, IN_A_DAY, s3=True), "4242", "")
    stored = read(given.path)
    assert keystone.ec2 == {stored.s3_access: stored.s3_secret}
    job_env = {"ALLASRUN_CREDENTIALS": str(given.path)}
    keys = credstore.job_s3_keys(job_env)
    assert keys is not None and (keys.access, keys.secret) == (stored.s3_access, stored.s3_secret)
    sweep(password_source, jobs, lambda s: False)  # still queued: kept
    assert keystone.ec2 and given.path.exists()
    sweep(password_source, jobs, lambda s: s.job_id == "4242")
    assert keystone.ec2 == {} and not given.path.exists()


def test_keys_that_cannot_be_deleted_keep_the_record_for_the_next_sweep(
    keystone: FakeKeystone, password_source: TokenSource, jobs: Path
) -> None:
    given = record(hand_over(password_source, jobs, IN_A_DAY, s3=True), "4242", "")
    keystone.fail("ec2", 503)
    sweep(password_source, jobs, lambda s: True)
    assert given.path.exists() and keystone.ec2 and not keystone.deleted  # nor the credential yet
    keystone.heal()
    sweep(password_source, jobs, lambda s: True)
    assert not given.path.exists() and keystone.ec2 == {} and keystone.deleted


def test_an_application_credential_hands_an_s3_job_no_keys(
    keystone: FakeKeystone, tmp_path: Path, jobs: Path
) -> None:
    source = TokenSource.open(app_credential_env(tmp_path))
    given = hand_over(source, jobs, IN_A_DAY, s3=True)
    assert not given.stored.s3_access and keystone.ec2 == {}
    assert credstore.job_s3_keys({"ALLASRUN_CREDENTIALS": str(given.path)}) is None

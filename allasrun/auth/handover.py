"""Credentials handed to batch jobs: one application credential per job, in a 0600 file.

`allasrun sbatch` makes the credential before the queue wait and records which job got it
(on which cluster) as soon as sbatch names the job. Keystone does not let a restricted
credential delete itself, so a job cannot revoke its own: the submission that waited for it
(`--wait`) or a later submission (which holds the password) deletes it, and the expiry
bounds the rest. An S3 job's own keys (EC2 credentials, which only a password's token may
make or delete, and which never expire) go the same way, with its record.

Deleting is only ever done on proof: every job that holds the credential is known to Slurm
as ended (the caller's `finished`), or the credential has expired. A record without a job
id, or one whose job Slurm could not be asked about, keeps the credential. Several records
can name one credential (a job that submits another hands on its own; jobs share a login
credential), so the credential goes only when the last of them has.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Optional

from allasrun.auth import credstore
from allasrun.auth.credstore import StoredCredential, expiry
from allasrun.auth.identity import AppCredential
from allasrun.auth.source import TokenSource
from allasrun.auth.token import utc_text
from allasrun.errors import AllasrunError
from allasrun.log import log

Finished = Callable[[StoredCredential], bool]  # the record's job has provably left the queue
Record = tuple[Path, StoredCredential]


@dataclass(frozen=True)
class Handover:
    """The credentials file given to one job, and what it records."""

    path: Path
    stored: StoredCredential


def hand_over(
    source: TokenSource,
    directory: Path,
    expires_at: float,
    shared_until: Optional[float] = None,
    s3: bool = False,
) -> Handover:
    """Write the job's credentials file.

    The job shares the application credential the source already authenticates with (the
    user's, or the submitting job's; `shared_until` is its expiry where known), or else
    gets one of its own, made with the password and expiring at `expires_at`. A shared
    one gets a file of its own per job, so no job's record replaces another's. With `s3`
    and a password, the job also gets S3 keys of its own, deleted with its record.
    """
    credential = source.app_credential
    owned = credential is None
    if credential is None:
        credential = _create(source, expires_at)
        name, until = f"{credential.id}.json", utc_text(expires_at)
    else:
        name, until = (
            f"{credential.id}-{secrets.token_hex(6)}.json",
            utc_text(shared_until) if shared_until else "",
        )
    keys = source.make_s3_keys("the job (deleted when it is over)") if s3 else None
    target, token = source.identity.target, source.token
    stored = StoredCredential(
        auth_url=target.auth_url,
        project_name=target.project_name or "",
        project_id=token.project_id,
        user_id=token.user_id,
        id=credential.id,
        secret=credential.secret,
        name=f"allasrun-job-{credential.id}",
        expires_at=until,
        owned=owned,
        s3_access=keys.access if keys else "",
        s3_secret=keys.secret if keys else "",
    )
    return Handover(credstore.write(directory / name, stored), stored)


def record(handover: Handover, job_id: str, cluster: str) -> Handover:
    """Write down the job that holds the credential, the moment sbatch names it."""
    stored = replace(handover.stored, job_id=job_id, cluster=cluster)
    return Handover(credstore.write(handover.path, stored), stored)


def release(source: TokenSource, handover: Handover, finished: Finished) -> None:
    """Give up the credential of a submission whose job will not use it (never queued, or waited for).

    Its record goes, and the credential with it unless another job still holds it; then
    the record stays (if it owns the credential) for a later sweep to finish.
    """
    group = [r for r in _records(handover.path.parent) if r[1].id == handover.stored.id]
    if not any(path == handover.path for path, _ in group):
        group.append((handover.path, handover.stored))
    if _release(source, group, lambda r: r[0] == handover.path or _done(r[1], finished)):
        return
    if not handover.stored.owned:
        handover.path.unlink(missing_ok=True)


def sweep(source: TokenSource, directory: Path, finished: Finished) -> None:
    """Delete the credentials no job holds any more (and their records)."""
    for _, group in groupby(_records(directory), key=lambda r: r[1].id):
        _release(source, list(group), lambda r: _done(r[1], finished))


def retire(
    source: TokenSource, directory: Path, credential: StoredCredential, finished: Finished
) -> list[str]:
    """Revoke a credential being replaced (`allasrun login`), unless jobs hold it: their ids then.

    Held, it is left to the jobs: their records take it over, so the sweep after the last
    of them revokes it; its expiry bounds it if no sweep comes.
    """
    group = [r for r in _records(directory) if r[1].id == credential.id]
    holding = [stored.job_id or "?" for _, stored in group if not _done(stored, finished)]
    if holding:
        for path, stored in group:
            credstore.write(path, replace(stored, owned=True))
        return holding
    if source.revoke(credential.id, f"the previous credential {credential.name}"):
        for path, _ in group:
            path.unlink(missing_ok=True)
    return []


def _release(source: TokenSource, group: Sequence[Record], done: Callable[[Record], bool]) -> bool:
    """Revoke (if owned) and unlink a credential's records once all are done; whether it was."""
    if not group or not all(done(r) for r in group):
        return False
    stored = [s for _, s in group]
    if not all(source.delete_s3_keys(s.s3_access) for s in stored if s.s3_access):
        return False  # kept: the next sweep tries again (the keys never expire; gone ones count as deleted)
    if any(s.owned for s in stored):
        jobs = ", ".join(sorted({s.job_id for s in stored if s.job_id})) or "-"
        if not source.revoke(stored[0].id, f"application credential {stored[0].id} of finished job {jobs}"):
            return False  # kept: the next sweep tries again
    for path, _ in group:
        path.unlink(missing_ok=True)
    return True


def _done(stored: StoredCredential, finished: Finished) -> bool:
    """Provably unused: its job has left the queue, or it can no longer authenticate at all."""
    until = expiry(stored)
    return bool(stored.job_id and finished(stored)) or (until is not None and until < time.time())


def _records(directory: Path) -> list[Record]:
    """Every readable record, grouped by credential; one a concurrent sweep just removed is skipped."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append((path, credstore.read(path)))
        except AllasrunError as error:
            if path.exists():
                log.warning("skipping %s: %s", path, error)
    return sorted(found, key=lambda r: r[1].id)


def _create(source: TokenSource, expires_at: float) -> AppCredential:
    _, credential = source.create_credential("job", expires_at, "created by 'allasrun sbatch' for one job")
    log.info(
        "created application credential %s for the job (expires %s)", credential.id, utc_text(expires_at)
    )
    return credential

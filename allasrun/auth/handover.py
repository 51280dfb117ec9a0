"""Credentials handed to batch jobs: one application credential per job, in a 0600 file.

`allasrun sbatch` makes the credential before the queue wait and records which job got it.
Keystone does not let a restricted credential delete itself, so a job cannot revoke its own:
the submission that waited for it (`--wait`) or the next submission (which holds the password)
deletes the credentials of jobs that have left the queue, and the expiry bounds the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from allasrun.auth import credstore
from allasrun.auth.credstore import StoredCredential
from allasrun.auth.identity import AppCredential
from allasrun.auth.source import TokenSource
from allasrun.auth.token import utc_text
from allasrun.errors import AllasrunError
from allasrun.log import log

SWEEP_AFTER = 3600.0  # a credential whose submission never got a job id


@dataclass(frozen=True)
class Handover:
    """The credentials file given to one job, and what it records."""

    path: Path
    stored: StoredCredential


def hand_over(source: TokenSource, directory: Path, expires_at: float) -> Handover:
    """Write the job's credentials file.

    The job shares the application credential the source already authenticates with (the
    user made it; nobody here deletes it), or else gets one of its own, made with the
    password and expiring at `expires_at`.
    """
    credential = source.app_credential
    owned = credential is None
    if credential is None:
        credential = _create(source, expires_at)
    target, token = source.identity.target, source.token
    stored = StoredCredential(
        auth_url=target.auth_url,
        project_name=target.project_name or "",
        project_id=token.project_id,
        user_id=token.user_id,
        id=credential.id,
        secret=credential.secret,
        name=f"allasrun-job-{credential.id}",
        expires_at=utc_text(expires_at) if owned else "",
        owned=owned,
    )
    return Handover(credstore.write(directory / f"{credential.id}.json", stored), stored)


def settle(source: TokenSource, handover: Handover, job_id: str, ended: bool) -> None:
    """After sbatch: record the job's id, or delete the credential if no job will use it."""
    if job_id and not ended:
        credstore.write(handover.path, replace(handover.stored, job_id=job_id))
    else:  # not submitted, or (with --wait) the job has ended: no file left holding a secret
        forget(source, handover.path, replace(handover.stored, job_id=job_id))


def sweep(source: TokenSource, directory: Path, finished: Callable[[str], bool]) -> None:
    """Delete the credentials of earlier jobs for which `finished(job_id)` holds."""
    for path in sorted(directory.glob("*.json")):
        try:
            stored = credstore.read(path)
        except AllasrunError as error:
            log.warning("skipping %s: %s", path, error)
            continue
        if stored.job_id and not finished(stored.job_id):
            continue
        if not stored.job_id and time.time() - path.stat().st_mtime < SWEEP_AFTER:
            continue
        forget(source, path, stored)


def forget(source: TokenSource, path: Path, stored: StoredCredential) -> None:
    """Revoke a job's own credential and remove its file; a shared one is only unlinked."""
    label = f"application credential {stored.id} of finished job {stored.job_id or '-'}"
    if stored.owned and not source.revoke(stored.id, label):
        return
    path.unlink(missing_ok=True)


def _create(source: TokenSource, expires_at: float) -> AppCredential:
    _, credential = source.create_credential("job", expires_at, "created by 'allasrun sbatch' for one job")
    log.info(
        "created application credential %s for the job (expires %s)", credential.id, utc_text(expires_at)
    )
    return credential

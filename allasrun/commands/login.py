"""`allasrun login`: trade the password once for a stored application credential.

Later runs, on any node that sees the home directory, authenticate with it and never need
the password; it expires by itself, and the next `login` revokes the one it replaces unless
a queued or running job holds it (then the sweep after the last of them does).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from allasrun import paths
from allasrun.auth import TokenSource, credstore, handover, utc_text
from allasrun.commands import sbatch
from allasrun.errors import UsageError


def run(env: Mapping[str, str], days: float) -> str:
    """Create, store and report the credential; returns the line to print."""
    source = TokenSource.open(env, use_stored=False, use_cache=False, password_only=True)
    target, token = source.identity.target, source.token
    if target.project_name is None:
        raise UsageError("login needs the project: export OS_PROJECT_NAME=project_NNNNNNN")
    expires = time.time() + days * 86400
    name, created = source.create_credential("login", expires, "created by 'allasrun login' for batch jobs")
    directory = paths.config_dir(env)
    previous = credstore.load(directory, target.project_name, target.auth_url)
    stored = credstore.StoredCredential(
        auth_url=target.auth_url,
        project_name=target.project_name,
        project_id=token.project_id,
        user_id=token.user_id,
        id=created.id,
        secret=created.secret,
        name=name,
        expires_at=utc_text(expires),
    )
    path = credstore.save(directory, stored)
    report = f"stored application credential {name} in {path}; it expires {stored.expires_at}\n"
    # The password is at hand: revoke what finished jobs held, as a password `sbatch` would.
    finished = sbatch.finished(env)
    handover.sweep(source, directory / "jobs", finished)
    if previous is None:
        return report
    holding = handover.retire(source, directory / "jobs", previous[1], finished)
    if holding:
        report += (
            f"kept the previous credential {previous[1].name} for job(s) {', '.join(holding)}: the next "
            "'allasrun login' (or 'allasrun sbatch' with the password) after they have ended revokes it; "
            f"it expires {previous[1].expires_at}\n"
        )
    return report

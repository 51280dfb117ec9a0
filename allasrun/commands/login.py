"""`allasrun login`: trade the password once for a stored application credential.

Later runs, on any node that sees the home directory, authenticate with it and never need
the password; it expires by itself, and the next `login` revokes the one it replaces.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from allasrun import paths
from allasrun.auth import credstore, keystone
from allasrun.auth import identity as credentials
from allasrun.auth.credstore import StoredCredential
from allasrun.auth.identity import Password, Target
from allasrun.auth.token import Token, utc_text
from allasrun.errors import AllasrunError, UsageError
from allasrun.log import hide, log


def run(env: Mapping[str, str], days: float) -> str:
    """Create, store and report the credential; returns the line to print."""
    identity = credentials.gather(env, use_stored=False)
    target = identity.target
    if target.project_name is None:
        raise UsageError("login needs the project: export OS_PROJECT_NAME=project_NNNNNNN")
    secret = identity.secret
    if not isinstance(secret, Password):
        secret = credentials.ask_password(target) if os.isatty(0) else secret
    if not isinstance(secret, Password):
        raise UsageError("login needs the password: set OS_PASSWORD or run it from a terminal")
    hide(secret.value)
    token = keystone.authenticate(target, secret)
    hide(token.value)
    expires = time.time() + days * 86400
    name = f"allasrun-login-{socket.gethostname()}-{int(time.time())}"
    created = keystone.create_app_credential(
        target, token, name, expires, "created by 'allasrun login' for batch jobs"
    )
    hide(created.secret)
    directory = paths.config_dir(env)
    previous = credstore.load(directory, target.project_name, target.auth_url)
    stored = StoredCredential(
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
    if previous is not None:
        _revoke_previous(target, token, previous[1])
    return f"stored application credential {name} in {path}; it expires {stored.expires_at}\n"


def _revoke_previous(target: Target, token: Token, old: StoredCredential) -> None:
    """The replaced credential is no longer needed anywhere: do not leave it valid."""
    try:
        keystone.delete_app_credential(target, token, old.id)
    except AllasrunError as error:
        log.warning("could not revoke the previous credential %s: %s", old.name, error)
        return
    log.info("revoked the previous credential %s", old.name)

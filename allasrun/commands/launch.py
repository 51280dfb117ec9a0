"""`allasrun [OPTIONS] -- CMD`: run a command with an Allas token kept alive for its lifetime.

Reads like a table of contents: resolve the command, authenticate, write the client files,
spawn, keep renewing, wait, clean up, and exit with the command's status.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from allasrun import credentials, launcher, paths
from allasrun.clientfiles import ClientFiles
from allasrun.credentials import Identity
from allasrun.errors import AllasrunError
from allasrun.keeper import Keeper, Schedule, obtain
from allasrun.log import hide, log
from allasrun.plan import AppCredential, Password, child_environment
from allasrun.token import Token, utc_text
from allasrun.tokencache import TokenCache


@dataclass(frozen=True)
class LaunchOptions:
    """Everything the CLI parsed for one run."""

    command: Sequence[str]
    remote: str = "allas"
    update_user_config: bool = False
    keep_password: bool = False
    job_credential: bool = True
    job_credential_hours: float = 24.0 * 14
    storage_url: Optional[str] = None
    use_cache: bool = True
    schedule: Schedule = field(default_factory=Schedule)


def run(options: LaunchOptions, env: Mapping[str, str]) -> int:
    """Run the command under a kept token; the command's exit status is returned."""
    executable = launcher.resolve(options.command[0], env)
    identity = credentials.gather(env, options.storage_url)
    _hide_secret(identity)
    cache = _cache(options, env, identity)
    token = obtain(identity.target, identity.secret, cache, options.schedule)
    hide(token.value)
    log.info(
        "authenticated %s with %s; token expires %s",
        identity.target.describe(),
        identity.origin,
        token.expiry_text(),
    )
    owner: Optional[Identity] = None
    if isinstance(identity.secret, Password) and options.job_credential:
        owner = identity
        identity, token = _mint(identity, token, options)
        cache = None  # no other run can use this credential's tokens
    directory = paths.runtime_dir(env) / f"run-{os.getpid()}"
    try:
        return _supervise(
            options=options,
            env=env,
            identity=identity,
            token=token,
            directory=directory,
            cache=cache,
            executable=executable,
        )
    finally:
        if owner is not None and isinstance(identity.secret, AppCredential):
            _revoke(owner, identity.secret)
        shutil.rmtree(directory, ignore_errors=True)


def _supervise(
    *,
    options: LaunchOptions,
    env: Mapping[str, str],
    identity: Identity,
    token: Token,
    directory: Path,
    cache: Optional[TokenCache],
    executable: str,
) -> int:
    """Write the files, spawn, renew in the background until the command exits."""
    paths.owned_private_dir(directory)
    credential = identity.secret if isinstance(identity.secret, AppCredential) else None
    user_config = paths.user_rclone_config(env) if options.update_user_config else None
    files = ClientFiles(directory, options.remote, identity.target, credential, user_config)
    files.write(token)
    supervisor = launcher.Supervisor()
    pid = supervisor.prepare(executable, options.command)

    def renew(current: Token) -> Token:
        fresh = obtain(identity.target, identity.secret, cache, options.schedule, replacing=current)
        hide(fresh.value)
        return fresh

    keeper = Keeper(token, renew, files, options.schedule)
    keeper.start()
    supervisor.start(child_environment(env, files.environment(keeper.token), options.keep_password))
    log.info(
        "started %s (pid %d); rclone remote '%s:' in %s", executable, pid, options.remote, files.directory
    )
    status = supervisor.wait()
    keeper.stop()
    log.info("%s exited with status %d after %d renewal(s)", options.command[0], status, keeper.renewals)
    return status


def _mint(identity: Identity, token: Token, options: LaunchOptions) -> tuple[Identity, Token]:
    """Trade the password for an application credential that lives only as long as the run.

    rclone and the keeper can then re-authenticate on their own for days. The password
    stays in this process's memory only, to revoke the credential at the end: Keystone does
    not let a restricted credential delete itself.
    """
    from allasrun import keystone

    name = f"allasrun-{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
    expires = time.time() + options.job_credential_hours * 3600
    credential = keystone.create_app_credential(
        identity.target, token, name, expires, "created by allasrun for one run; revoked when it ends"
    )
    hide(credential.secret)
    fresh = keystone.authenticate(identity.target, credential)
    hide(fresh.value)
    log.info("created application credential %s for this run (expires %s)", name, utc_text(expires))
    return Identity(identity.target, credential), fresh


def _revoke(owner: Identity, credential: AppCredential) -> None:
    """Delete the run's application credential; on failure its expiry still bounds it."""
    from allasrun import keystone

    try:
        token = keystone.authenticate(owner.target, owner.secret)
        keystone.delete_app_credential(owner.target, token, credential.id)
    except AllasrunError as error:
        log.warning("could not revoke application credential %s: %s", credential.id, error)
        return
    log.info("revoked application credential %s", credential.id)


def _cache(options: LaunchOptions, env: Mapping[str, str], identity: Identity) -> Optional[TokenCache]:
    if not options.use_cache:
        return None
    return TokenCache.for_identity(paths.cache_dir(env), identity.target, identity.secret)


def _hide_secret(identity: Identity) -> None:
    secret = identity.secret
    hide(secret.secret if isinstance(secret, AppCredential) else secret.value)

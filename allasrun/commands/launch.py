"""`allasrun [OPTIONS] -- CMD`: run a command with an Allas token kept alive for its lifetime.

`run` reads like a table of contents: resolve the command, authenticate, write the client
files, fork, keep renewing, stage in, exec, wait, stage out, report, clean up, and exit
with the command's status (or a staging failure's code).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from allasrun import paths
from allasrun.auth import identity as credentials
from allasrun.auth.cache import TokenCache
from allasrun.auth.identity import AppCredential, Identity, Password, child_environment
from allasrun.auth.schedule import Schedule
from allasrun.auth.token import Token, utc_text
from allasrun.errors import EXIT_STAGE_IN, EXIT_STAGE_OUT, AllasrunError
from allasrun.job import step
from allasrun.job import supervisor as launcher
from allasrun.job.clientfiles import ClientFiles
from allasrun.job.deadline import Deadline
from allasrun.job.keeper import Keeper, obtain
from allasrun.log import hide, log
from allasrun.slurm import facts as slurm
from allasrun.staging import report
from allasrun.staging.plan import StagePlan
from allasrun.staging.report import MISSING, Transfer

if TYPE_CHECKING:  # the stager (and swiftclient) load only when a script stages something
    from allasrun.staging.stager import Stager


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
    plan: StagePlan = field(default_factory=StagePlan)
    workdir: Path = field(default_factory=Path.cwd)


def run(options: LaunchOptions, env: Mapping[str, str]) -> int:
    """Run the command under a kept token; the command's exit status is returned."""
    if options.plan.settings.project and not env.get("OS_PROJECT_NAME"):
        env = {**env, "OS_PROJECT_NAME": options.plan.settings.project}
    executable = launcher.resolve(options.command[0], env)
    outer = env.get("ALLASRUN_DIR")
    if outer and not options.plan and (Path(outer) / "env").is_file():
        log.info("reusing the token and files of the enclosing allasrun in %s", outer)
        rclone_config = env.get("RCLONE_CONFIG") or str(Path(outer) / "rclone.conf")
        return _with_files_of(Path(outer), executable, options.command, env, rclone_config)
    role = step.from_env(env)
    if role is not None and not role.leads:
        return _follow(role, executable, options.command, env)
    if role is None:
        directory = paths.runtime_dir(env) / f"run-{os.getpid()}"
    else:
        directory = paths.owned_private_dir(role.directory(paths.runtime_dir(env)))
        step.mark_started(directory)
    try:
        return _lead(options, env, executable, directory, role)
    except AllasrunError as error:
        if role is not None:  # the step's other tasks stop with the same status
            step.announce(directory, error.exit_code)
        raise
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _lead(
    options: LaunchOptions,
    env: Mapping[str, str],
    executable: str,
    directory: Path,
    role: Optional[step.Step],
) -> int:
    """Authenticate (trading a password for a run credential), then supervise the run."""
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
    try:
        return _Run(options, env, identity, cache, directory, role).supervise(token, executable)
    finally:
        if owner is not None and isinstance(identity.secret, AppCredential):
            _revoke(owner, identity.secret)


def _follow(role: step.Step, executable: str, command: Sequence[str], env: Mapping[str, str]) -> int:
    """A task other than its node's leader: wait for the leader's files and stage-in, then run."""
    directory = role.directory(paths.runtime_dir(env))
    status = step.await_leader(directory)
    if status is not None:
        log.error("task %d: the step's leader stopped with status %d; not starting", role.proc_id, status)
        return status
    status = 1
    try:
        status = _with_files_of(directory, executable, command, env, str(directory / "rclone.conf"))
    finally:
        step.mark_done(directory, role.local_id, status)
    return status


class _Run:
    """The part of a run that happens with the files written and the keeper running."""

    def __init__(
        self,
        options: LaunchOptions,
        env: Mapping[str, str],
        identity: Identity,
        cache: Optional[TokenCache],
        directory: Path,
        role: Optional[step.Step] = None,
    ) -> None:
        self.options = options
        self.role = role
        self.env = env
        self.identity = identity
        self.cache = cache
        credential = identity.secret if isinstance(identity.secret, AppCredential) else None
        user_config = paths.user_rclone_config(env) if options.update_user_config else None
        self.files = ClientFiles(directory, options.remote, identity.target, credential, user_config)
        self.transfers: list[Transfer] = []

    def supervise(self, token: Token, executable: str) -> int:
        """Fork, keep, stage in, exec, wait, stage out; the exit status to report."""
        paths.owned_private_dir(self.files.directory)
        self.files.write(token)
        supervisor = launcher.Supervisor()
        pid = supervisor.prepare(executable, self.options.command)
        keeper = Keeper(token, self._renew, self.files, self.options.schedule)
        keeper.start()
        try:
            stager = self._stager(keeper) if self.options.plan else None
            if stager is not None and self.options.plan.stage_in:
                refused = self._stage_in(stager, supervisor)
                if refused is not None:
                    self._announce(refused)
                    supervisor.abandon()
                    return self._finish(refused, None)
            self._announce(None)
            supervisor.start(
                child_environment(self.env, self.files.environment(keeper.token), self.options.keep_password)
            )
            log.info(
                "started %s (pid %d); rclone remote '%s:' in %s",
                executable,
                pid,
                self.options.remote,
                self.files.directory,
            )
            deadline = self._deadline(supervisor)
            status = supervisor.wait(deadline, deadline.heard if deadline else None)
            log.info(
                "%s exited with status %d after %d renewal(s)",
                self.options.command[0],
                status,
                keeper.renewals,
            )
            if self.role is not None:  # the node's other tasks still use this keeper's files
                step.await_followers(self.files.directory, self.role.node_tasks)
            uploads = stager is not None and (self.role is None or self.role.stages_out)
            final = self._stage_out(stager, status) if uploads and stager is not None else status
            return self._finish(final, status)
        finally:
            keeper.stop()

    def _announce(self, status: Optional[int]) -> None:
        if self.role is not None:
            step.announce(self.files.directory, status)

    def _deadline(self, supervisor: launcher.Supervisor) -> Optional[Deadline]:
        """In a Slurm job with results to upload: stop the command in time to stage them out."""
        if not self.options.plan.stage_out or slurm.job_id(self.env) is None:
            return None
        settings = self.options.plan.settings
        return Deadline(
            lambda: slurm.time_window(self.env),
            supervisor.send,
            settings.stage_out_lead,
            settings.grace,
            settings.deadline_signal,
        )

    def _renew(self, current: Token) -> Token:
        fresh = obtain(
            self.identity.target, self.identity.secret, self.cache, self.options.schedule, replacing=current
        )
        hide(fresh.value)
        return fresh

    def _stager(self, keeper: Keeper) -> Stager:
        from allasrun.staging.stager import Stager
        from allasrun.staging.swift import Store

        settings = self.options.plan.settings
        return Stager(Store(keeper.current, keeper.refresh, settings.retries), settings, self.options.workdir)

    def _stage_in(self, stager: Stager, supervisor: launcher.Supervisor) -> Optional[int]:
        """Fetch the inputs; the exit status if the command must not start, else None."""
        started = time.monotonic()
        transfers = stager.stage_in(self.options.plan.stage_in, lambda: supervisor.pending_stop() is not None)
        self.transfers += transfers
        log.info("%s", report.summarise("stage-in", transfers, time.monotonic() - started))
        stop = supervisor.pending_stop()
        if stop is not None:
            log.error("stage-in interrupted by signal %d: the command was not started", stop)
            return 128 + stop
        failed = report.problems(transfers)
        for transfer in failed:
            log.error("stage-in %s: %s: %s", transfer.status, transfer.where, transfer.error)
        if failed:
            log.error("stage-in failed for %d item(s): the command was not started", len(failed))
            return EXIT_STAGE_IN
        return None

    def _stage_out(self, stager: Stager, status: int) -> int:
        """Upload the results due after `status`; a stage-out failure's code, else `status`."""
        due = [spec for spec in self.options.plan.stage_out if spec.due(status)]
        if not due:
            return status
        started = time.monotonic()
        transfers = stager.stage_out(due)
        self.transfers += transfers
        log.info("%s", report.summarise("stage-out", transfers, time.monotonic() - started))
        # A failed command may not have produced its outputs; that is its failure, not ours.
        failed = [t for t in report.problems(transfers) if not (t.status == MISSING and status != 0)]
        for transfer in report.problems(transfers):
            log.error(
                "stage-out %s: %s: %s -> %s: %s",
                transfer.status,
                transfer.where,
                transfer.source,
                transfer.destination,
                transfer.error,
            )
        if failed:
            log.error(
                "stage-out failed for %d file(s); the command's exit status was %d", len(failed), status
            )
            return EXIT_STAGE_OUT
        return status

    def _finish(self, final: int, command: Optional[int]) -> int:
        path = self.options.plan.settings.report
        if path is not None:
            target = Path(path) if Path(path).is_absolute() else self.options.workdir / path
            report.write(target, final, command, self.transfers)
            log.info("transfer report written to %s", target)
        return final


def _with_files_of(
    directory: Path, executable: str, command: Sequence[str], env: Mapping[str, str], rclone_config: str
) -> int:
    """Run the command on the files another allasrun keeps current: no Keystone call at all.

    That allasrun encloses this one (around the batch script, with `srun allasrun -- cmd`
    inside) or leads this node's tasks of the step; its keeper renews what we read here.
    """
    current = child_environment(
        env,
        {
            "RCLONE_CONFIG": rclone_config,
            "ALLASRUN_ENV_FILE": str(directory / "env"),
            "ALLASRUN_DIR": str(directory),
        },
    )
    for line in (directory / "env").read_text(encoding="utf-8").splitlines():
        name, equals, value = line.removeprefix("export ").partition("=")
        if equals and name in ("OS_AUTH_TOKEN", "OS_STORAGE_URL"):
            current[name] = shlex.split(value)[0]
    supervisor = launcher.Supervisor()
    supervisor.prepare(executable, command)
    supervisor.start(current)
    return supervisor.wait()


def _mint(identity: Identity, token: Token, options: LaunchOptions) -> tuple[Identity, Token]:
    """Trade the password for an application credential that lives only as long as the run.

    rclone and the keeper can then re-authenticate on their own for days. The password
    stays in this process's memory only, to revoke the credential at the end: Keystone does
    not let a restricted credential delete itself.
    """
    from allasrun.auth import keystone

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
    from allasrun.auth import keystone

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

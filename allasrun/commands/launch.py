"""`allasrun [OPTIONS] -- CMD`: run a command with an Allas token kept alive for its lifetime.

`run` is the table of contents: find the command, find where this allasrun stands, and
either run on the files another allasrun keeps, or lead: authenticate, open the token
service, write the client files, fork, keep renewing and serving, stage in, exec, wait
(minding the deadline), stage out, report, revoke, clean up, and exit with the command's
status or the staging outcome's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ContextManager, Optional

from allasrun import paths
from allasrun.auth import Schedule, TokenSource
from allasrun.commands import protocol, s3access
from allasrun.job import (
    ClientFiles,
    Keeper,
    NodeSync,
    Placement,
    Supervisor,
    TokenService,
    child_environment,
    deadline,
    files_environment,
    resolve,
    step,
)
from allasrun.log import log
from allasrun.slurm.facts import node_name
from allasrun.staging import KeysFor, StagePlan, StagingRun


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
    token_service: bool = True
    schedule: Schedule = field(default_factory=Schedule)
    plan: StagePlan = field(default_factory=StagePlan)
    workdir: Path = field(default_factory=Path.cwd)
    s3_keys: Optional[KeysFor] = None  # found by `run`, before anything starts


def run(options: LaunchOptions, env: Mapping[str, str]) -> int:
    """Run the command under a kept token; the exit status to report."""
    executable = resolve(options.command[0], env)
    StagingRun.check_report(options.plan, options.workdir)
    where = step.place(env, stages=bool(options.plan))
    if not where.leads:
        return _on_shared_files(where, executable, options, env)
    mine = options.plan if where.stages_shared else options.plan.part(node_local=True)
    sync = _node_sync(where, options.plan, env)
    with step.leading(where) as directory, sync as nodes, _authenticate(options, env) as source:
        if source is not None and options.job_credential:  # a password is traded for a credential
            source.use_run_credential(options.job_credential_hours)  # that the run revokes
        keys = s3access.keys_for(options.plan, env, source)
        return _lead(
            replace(options, plan=mine, s3_keys=keys), env, executable, where, nodes, directory, source
        )


def _authenticate(options: LaunchOptions, env: Mapping[str, str]) -> ContextManager[Optional[TokenSource]]:
    """The run's TokenSource; none for a run on S3 keys alone (`protocol.keyless`)."""
    if protocol.keyless(options.plan, env):
        log.info("no Keystone secret at hand: staging and the command's S3 clients use your S3 keys")
        return contextlib.nullcontext(None)
    source = TokenSource.open(
        env,
        project=options.plan.settings.project,
        storage_url=options.storage_url,
        use_cache=options.use_cache,
        schedule=options.schedule,
    )
    log.info(
        "authenticated %s with %s; token expires %s",
        source.identity.target.describe(),
        source.identity.origin,
        source.token.expiry_text(),
    )
    return source


def _lead(
    options: LaunchOptions,
    env: Mapping[str, str],
    executable: str,
    where: Placement,
    nodes: NodeSync,
    directory: Path,
    source: Optional[TokenSource],
) -> int:
    """Serve, write the files, fork, keep, stage in, exec, wait, stage out, report.

    Without a source (a run on S3 keys alone) there is no token to keep or serve.
    """
    service = TokenService.open(lambda: source.token) if source and options.token_service else None
    s3_keys = s3access.command_keys(options.plan, options.s3_keys, env)
    files = ClientFiles(
        directory,
        options.remote,
        source.identity.target if source else None,
        source.app_credential if source else None,
        paths.user_rclone_config(env) if options.update_user_config else None,
        node_name(env),
        source.lasting if source else None,
        service.access if service else None,
        env.get("BASH_ENV"),
        s3=s3_keys,
        s3_remote=s3access.command_remote(options.plan, s3_keys) if s3_keys else "s3allas",
        aws_ca_bundle=env.get("AWS_CA_BUNDLE"),
    )
    files.write(source.token if source else None)
    if source is not None:
        source.on_renew(files.write)
    child = Supervisor.for_job(env, options.plan.settings.grace)
    pid = child.prepare(executable, options.command)  # before any thread: the service's starts below
    staging = StagingRun(options.plan, source, options.workdir, s3_keys=options.s3_keys)
    with Keeper(source) if source else contextlib.nullcontext(), service or contextlib.nullcontext():
        stop = nodes.stage_in_done(staging.stage_in(child.pending_stop).exit_status)
        step.announce(where, stop)
        if stop is not None:
            child.abandon()
            return staging.finish(stop, None)
        child.start(child_environment(env, files.environment(), options.keep_password))
        served = f"; clients re-authenticate at {service.access.url}" if service else ""
        remotes = [options.remote] * (source is not None) + [files.s3_remote] * (files.s3 is not None)
        named = " and ".join(f"'{remote}:'" for remote in remotes) or "none"
        log.info("started %s (pid %d); rclone remotes %s in %s%s", executable, pid, named, directory, served)
        timer = _deadline(options.plan, env, child)
        status = child.wait(timer, timer.on_signal if timer else None)
        renewals = source.renewals if source else 0
        log.info("%s exited with status %d after %d renewal(s)", options.command[0], status, renewals)
        overdue = timer.overdue if timer else step.never
        step.await_followers(where, overdue=overdue)  # the node's other tasks still use these files
        nodes.commands_done(overdue)  # and shared results come from every node
        final = staging.stage_out(status).exit_status
        return staging.finish(status if final is None else final, status)


def _deadline(plan: StagePlan, env: Mapping[str, str], child: Supervisor) -> Optional[deadline.Deadline]:
    """In a Slurm job with results to upload: stop the command in time to stage them out."""
    if not plan.stage_out:
        return None
    settings = plan.settings
    return deadline.for_job(
        env, child.send, settings.stage_out_lead, settings.grace, settings.deadline_signal
    )


def _node_sync(where: Placement, plan: StagePlan, env: Mapping[str, str]) -> NodeSync:
    """What keeps the nodes of a multi-node step in step, if it has shared directives."""
    role = where.role
    if role is None or role.nodes == 1 or not plan.part(node_local=False):
        return NodeSync(None, role)
    return NodeSync(role.directory(paths.shared_dir(env)), role)


def _on_shared_files(
    where: Placement, executable: str, options: LaunchOptions, env: Mapping[str, str]
) -> int:
    """Run the command on the files another allasrun keeps current: no Keystone call at all.

    That allasrun encloses this one (around the batch script, with `srun allasrun -- cmd`
    inside) or leads this node's tasks of the step; its keeper renews what we read here. A
    follower keeps the deadline too: its command writes results the leader uploads.
    """
    role = where.role
    if where.enclosed or role is None:
        log.info("reusing the token and files of the enclosing allasrun in %s", where.directory)
        rclone_config = env.get("RCLONE_CONFIG") or str(where.directory / "rclone.conf")
        return _run_with(where.directory, rclone_config, executable, options, env)
    status = step.await_leader(where.directory, role.local_id)
    if status is not None:
        log.error("task %d: the step's leader stopped with status %d; not starting", role.proc_id, status)
        return status
    status = 1
    try:
        status = _run_with(where.directory, str(where.directory / "rclone.conf"), executable, options, env)
    finally:
        step.mark_done(where.directory, role.local_id, status)
    return status


def _run_with(
    directory: Path, rclone_config: str, executable: str, options: LaunchOptions, env: Mapping[str, str]
) -> int:
    child = Supervisor.for_job(env, options.plan.settings.grace)
    child.prepare(executable, options.command)
    child.start(child_environment(env, files_environment(directory, rclone_config, node_name(env))))
    timer = _deadline(options.plan, env, child)
    return child.wait(timer, timer.on_signal if timer else None)

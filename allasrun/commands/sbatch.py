"""`allasrun sbatch [SBATCH OPTIONS] job.sh [ARGS]`: check, hand over credentials, submit.

Before anything waits in the queue: the #ALLAS directives are validated, the credentials
authenticated and the inputs looked up. The job then gets an application credential in a
0600 file instead of a password in its environment, and its batch script runs under
allasrun. sbatch's options and output pass through untouched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from allasrun import paths
from allasrun.auth import Password, TokenSource, credstore, handover, utc_text
from allasrun.commands import protocol, s3access
from allasrun.errors import EXIT_STAGE_IN, NoCredentials, UsageError
from allasrun.job import child_environment
from allasrun.log import log
from allasrun.slurm import facts, sbatchline, submit
from allasrun.staging import StagePlan, jobscript, look_up

DEFAULT_LIMIT = 7 * 86400.0  # when neither the command line nor the script sets --time
# What an enclosing allasrun gives its command; a job submitted from there must not inherit them.
RUN_VARIABLES = ("ALLASRUN_DIR", "ALLASRUN_ENV_FILE", "ALLASRUN_NODE", "ALLASRUN_CREDENTIALS")
JOB_VARIABLES = (
    "ALLASRUN_CREDENTIALS", "ALLASRUN_CONFIG_DIR", "ALLASRUN_CACHE_DIR", "ALLASRUN_RUNTIME_DIR",
    "ALLASRUN_SHARED_DIR", "OS_AUTH_URL", "OS_IDENTITY_API_VERSION", "OS_USERNAME", "OS_PROJECT_NAME",
    "OS_USER_DOMAIN_NAME", "OS_PROJECT_DOMAIN_NAME", "OS_REGION_NAME", "OS_INTERFACE",
)  # fmt: skip


@dataclass(frozen=True)
class SbatchOptions:
    """What the CLI parsed; everything else belongs to sbatch."""

    argv: Sequence[str]
    password_env: bool = False
    queue_hours: float = 72.0
    margin_hours: float = 1.0


def run(options: SbatchOptions, env: Mapping[str, str]) -> int:
    """Check, prepare credentials, submit; sbatch's exit status."""
    line = sbatchline.split(options.argv)
    script_text, plan = _read(line, env)
    limit = sbatchline.time_limit(line, script_text or "") or DEFAULT_LIMIT
    for warning in s3access.expiry_warnings(plan, env, limit, options.queue_hours * 3600):
        log.warning("%s", warning)
    keyless = protocol.keyless(plan, env)
    source = None if keyless else TokenSource.open(env, project=plan.settings.project)
    with source or contextlib.nullcontext():  # S3 keys made for the look-up are deleted after it
        missing = _missing_inputs(plan, source, env)
    if missing:
        for problem in missing:
            log.error("%s", problem)
        log.error("not submitted: %d input(s) missing", len(missing))
        return EXIT_STAGE_IN
    if source is None:  # S3 keys alone: the job finds them as this shell did; nothing to hand over
        log.info("no Keystone secret at hand: the job stages over S3 with your S3 keys")
        return submit.submit(line, script_text, child_environment(_outside_any_run(env), {})).returncode
    if options.password_env:
        return submit.submit(line, script_text, _password_env(source, env)).returncode
    if not source.identity.secret.renewable:
        raise NoCredentials(
            "a token cannot outlive the queue: set OS_PASSWORD, run 'allasrun login', "
            "or export OS_APPLICATION_CREDENTIAL_ID and _SECRET"
        )
    return _submit_with_credential(options, line, script_text, plan, source, env)


def _submit_with_credential(
    options: SbatchOptions,
    line: sbatchline.CommandLine,
    script_text: Optional[str],
    plan: StagePlan,
    source: TokenSource,
    env: Mapping[str, str],
) -> int:
    """Sweep, hand the job its credential file, submit, and record or release it."""
    directory = paths.config_dir(env) / "jobs"
    if source.app_credential is None:  # the password can clean up after earlier jobs
        handover.sweep(source, directory, finished(env))
    limit = sbatchline.time_limit(line, script_text or "") or DEFAULT_LIMIT
    expires = time.time() + options.queue_hours * 3600 + limit + options.margin_hours * 3600
    s3 = "s3allas" in plan.remotes  # an Allas S3 job gets keys of its own, if the password can make them
    handed = handover.hand_over(source, directory, expires, _lasts_long_enough(source, env, expires), s3)
    _warn_of_long_waits(line, script_text or "", options.queue_hours, handed.stored.expires_at)
    job_env = child_environment(_outside_any_run(env), {"ALLASRUN_CREDENTIALS": str(handed.path)})
    line = sbatchline.exporting(line, script_text or "", env.get("SBATCH_EXPORT"), _exported(job_env))
    cluster = _cluster(line, script_text or "", env)

    def record(named: submit.Submitted) -> handover.Handover:  # as soon as sbatch names the job
        return handover.record(handed, named.job_id, named.cluster or cluster)

    submitted = submit.submit(line, script_text, job_env, record)
    _settle(
        source, record(submitted) if submitted.job_id else handed, submitted, line.has("--wait", "-W"), env
    )
    return submitted.returncode


def _settle(
    source: TokenSource,
    handed: handover.Handover,
    submitted: submit.Submitted,
    waited: bool,
    env: Mapping[str, str],
) -> None:
    """After sbatch: keep the record of a queued job, release one no job will use.

    A failed sbatch queued nothing; `--wait` returns when the job has ended. sbatch that
    succeeded without naming the job (a wrapper's output, `#SBATCH -Q`) leaves a job that may
    hold the credential: it stays until it expires.
    """
    if waited or (submitted.returncode != 0 and not submitted.job_id):
        handover.release(source, handed, finished(env))
    elif not submitted.job_id:
        log.warning(
            "sbatch named no job: application credential %s stays in %s until it expires (%s)",
            handed.stored.id,
            handed.path,
            handed.stored.expires_at or "as the user's credential does",
        )


def _warn_of_long_waits(line: sbatchline.CommandLine, script_text: str, hours: float, until: str) -> None:
    """A held or deferred job can wait longer than the credential was sized for: say so now."""
    waits = [
        name
        for name, short in (("--hold", "-H"), ("--begin", "-b"), ("--dependency", "-d"))
        if sbatchline.given(line, script_text, name, short)
    ]
    if waits:
        log.warning(
            "%s: the job's credential expires %s (%g h of queue time); if it waits longer it cannot "
            "authenticate: give a larger --queue-hours",
            ", ".join(waits),
            until or "as the shared credential does",
            hours,
        )


def finished(env: Mapping[str, str]) -> handover.Finished:
    """A job is finished only when its cluster's slurmctld says so (None, no answer, is not)."""
    return lambda stored: facts.job_active(stored.job_id, env, stored.cluster) is False


def _cluster(line: sbatchline.CommandLine, script_text: str, env: Mapping[str, str]) -> str:
    """The cluster sbatch will send the job to, so the sweep asks that one (and not this one)."""
    chosen = sbatchline.setting(line, script_text, "--clusters", "-M") or env.get("SLURM_CLUSTERS")
    return chosen or facts.cluster_name(env) or ""


def _lasts_long_enough(source: TokenSource, env: Mapping[str, str], needed: float) -> Optional[float]:
    """The expiry of the credential the job would share, if known; refused if the job can outlive it.

    A login credential and a credential handed to this job (a job that submits another) both
    say when they expire. Neither can be renewed here: a restricted credential cannot make
    another, and the password is not at hand.
    """
    credential = source.app_credential
    if credential is None:
        return None
    for path, stored in _stored_credentials(source, env):
        lasts = credstore.expiry(stored)
        if stored.id != credential.id or lasts is None:
            continue
        if lasts < needed:
            remedy = (
                "a job's credential cannot make another: submit this job with a smaller --queue-hours, "
                "the first one with a larger one, or use a login credential (unset ALLASRUN_CREDENTIALS)"
                if env.get("ALLASRUN_CREDENTIALS")
                else "run 'allasrun login' again (jobs holding the old credential keep it)"
            )
            raise NoCredentials(
                f"application credential {stored.id} ({path}) expires {stored.expires_at}, before this job "
                f"can end (as late as {utc_text(needed)}: queue time, time limit and margin); {remedy}"
            )
        return lasts
    return None


def _stored_credentials(
    source: TokenSource, env: Mapping[str, str]
) -> list[tuple[Path, credstore.StoredCredential]]:
    """The files the source's credential can have come from: the job's, then the login one."""
    found = []
    if env.get("ALLASRUN_CREDENTIALS"):
        path = Path(env["ALLASRUN_CREDENTIALS"])
        found.append((path, credstore.read(path)))
    target = source.identity.target
    login = credstore.load(paths.config_dir(env), target.project_name, target.auth_url)
    return found + ([login] if login is not None else [])


def _outside_any_run(env: Mapping[str, str]) -> dict[str, str]:
    """Our environment less an enclosing allasrun's run variables, for the job to start afresh.

    Submitted from under allasrun (`allasrun -- snakemake`), ALLASRUN_DIR would make the
    job's guard skip allasrun, and RCLONE_CONFIG and the token name files on another node.
    """
    outer = env.get("ALLASRUN_DIR")
    inherited = set(RUN_VARIABLES)
    if outer:
        inherited |= {"OS_AUTH_TOKEN", "OS_STORAGE_URL"}
        if Path(env.get("RCLONE_CONFIG", "/")).parent == Path(outer):
            inherited.add("RCLONE_CONFIG")
    return {name: value for name, value in env.items() if name not in inherited}


def _exported(job_env: Mapping[str, str]) -> list[str]:
    """What the job's allasrun needs even under `--export=NONE`: its file, Keystone, its directories."""
    return [name for name in JOB_VARIABLES if name in job_env]


def _read(line: sbatchline.CommandLine, env: Mapping[str, str]) -> tuple[Optional[str], StagePlan]:
    """The script and its plan; --wrap has neither. Any directive error stops here (exit 2)."""
    if line.script is None:
        return None, StagePlan()
    text = jobscript.read(line.script)
    if not sbatchline.is_shell_script(text):
        raise UsageError(
            f"{line.script}:1: allasrun sbatch wraps shell scripts; put 'allasrun run' inside this one"
        )
    return text, protocol.decide(jobscript.plan_of(text, line.script, env, strict=False), env)


def _missing_inputs(plan: StagePlan, source: Optional[TokenSource], env: Mapping[str, str]) -> list[str]:
    """Stage-in sources that do not exist now (those with %j-like placeholders are skipped).

    Stage-out buckets are looked up too: one that is missing is created at stage-out (its
    name has passed Allas's rules already), which the log says now.
    """
    if not plan:
        return []
    found = look_up(plan, source, resolved_only=True, s3_keys=s3access.keys_for(plan, env, source))
    for out, exists in found.buckets:
        if not exists:
            log.info("%s: bucket %s does not exist yet; stage-out will create it", out.where, out.bucket)
    return [f"{t.where}: stage-in {t.source}: {t.error}" for t in found.problems]


def _password_env(source: TokenSource, env: Mapping[str, str]) -> dict[str, str]:
    """The old way, for sites without application credentials: the password in the job's env."""
    secret = source.identity.secret
    if not isinstance(secret, Password):
        raise NoCredentials("--password-env needs the password in OS_PASSWORD (or typed at the terminal)")
    return child_environment(_outside_any_run(env), {"OS_PASSWORD": secret.value}, keep_password=True)

"""`allasrun sbatch [SBATCH OPTIONS] job.sh [ARGS]`: check, hand over credentials, submit.

Before anything waits in the queue: the #ALLAS directives are validated, the credentials
authenticated and the inputs looked up. The job then gets an application credential in a
0600 file instead of a password in its environment, and its batch script runs under
allasrun. sbatch's options and output pass through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from allasrun import paths
from allasrun.auth import Password, TokenSource, handover
from allasrun.errors import EXIT_STAGE_IN, NoCredentials, UsageError
from allasrun.job import child_environment
from allasrun.log import log
from allasrun.slurm import facts, sbatchline, submit
from allasrun.staging import StagePlan, jobscript, look_up

DEFAULT_LIMIT = 7 * 86400.0  # when neither the command line nor the script sets --time


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
    source = TokenSource.open(env, project=plan.settings.project)
    missing = _missing_inputs(plan, source)
    if missing:
        for problem in missing:
            log.error("%s", problem)
        log.error("not submitted: %d input(s) missing", len(missing))
        return EXIT_STAGE_IN
    if options.password_env:
        return submit.submit(line, script_text, _password_env(source, env))[0]
    if not source.identity.secret.renewable:
        raise NoCredentials(
            "a token cannot outlive the queue: set OS_PASSWORD, run 'allasrun login', "
            "or export OS_APPLICATION_CREDENTIAL_ID and _SECRET"
        )
    directory = paths.config_dir(env) / "jobs"
    if source.app_credential is None:  # the password can clean up after earlier jobs
        handover.sweep(source, directory, lambda job: not facts.job_active(job, env))
    limit = sbatchline.time_limit(line, script_text or "") or DEFAULT_LIMIT
    expires = time.time() + options.queue_hours * 3600 + limit + options.margin_hours * 3600
    handed = handover.hand_over(source, directory, expires)
    job_env = child_environment(env, {"ALLASRUN_CREDENTIALS": str(handed.path)})
    returncode, job = submit.submit(line, script_text, job_env)
    handover.settle(source, handed, job, ended=line.has("--wait", "-W"))
    return returncode


def _read(line: sbatchline.CommandLine, env: Mapping[str, str]) -> tuple[Optional[str], StagePlan]:
    """The script and its plan; --wrap has neither. Any directive error stops here (exit 2)."""
    if line.script is None:
        return None, StagePlan()
    text = jobscript.read(line.script)
    if not sbatchline.is_shell_script(text):
        raise UsageError(
            f"{line.script}:1: allasrun sbatch wraps shell scripts; put 'allasrun run' inside this one"
        )
    return text, jobscript.plan_of(text, line.script, env, strict=False)


def _missing_inputs(plan: StagePlan, source: TokenSource) -> list[str]:
    """Stage-in sources that do not exist now (those with %j-like placeholders are skipped).

    Stage-out buckets are looked up too: one that is missing is created at stage-out (its
    name has passed Allas's rules already), which the log says now.
    """
    if not plan:
        return []
    found = look_up(plan, source, resolved_only=True)
    for out, exists in found.buckets:
        if not exists:
            log.info("%s: bucket %s does not exist yet; stage-out will create it", out.where, out.bucket)
    return [f"{t.where}: stage-in {t.source}: {t.error}" for t in found.problems]


def _password_env(source: TokenSource, env: Mapping[str, str]) -> dict[str, str]:
    """The old way, for sites without application credentials: the password in the job's env."""
    secret = source.identity.secret
    if not isinstance(secret, Password):
        raise NoCredentials("--password-env needs the password in OS_PASSWORD (or typed at the terminal)")
    return child_environment(env, {"OS_PASSWORD": secret.value}, keep_password=True)

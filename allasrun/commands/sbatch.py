"""`allasrun sbatch [SBATCH OPTIONS] job.sh [ARGS]`: check, hand over credentials, submit.

Before anything waits in the queue: the #ALLAS directives are validated, the credentials
authenticated and the inputs looked up. The job then gets an application credential in a
0600 file instead of a password in its environment, and its batch script runs under
allasrun. sbatch's options and output pass through untouched.
"""

from __future__ import annotations

import getpass
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from allasrun import paths
from allasrun.auth import credstore
from allasrun.auth import identity as credentials
from allasrun.auth.cache import TokenCache
from allasrun.auth.credstore import StoredCredential
from allasrun.auth.identity import AppCredential, ExistingToken, Identity, Password, child_environment
from allasrun.auth.schedule import Schedule
from allasrun.auth.token import Token, utc_text
from allasrun.errors import EXIT_STAGE_IN, AllasrunError, NoCredentials, UsageError
from allasrun.job.keeper import obtain
from allasrun.log import hide, log
from allasrun.slurm import facts as slurm
from allasrun.slurm import sbatchline
from allasrun.staging import jobscript as scripts
from allasrun.staging.plan import StagePlan

DEFAULT_LIMIT = 7 * 86400.0  # when neither the command line nor the script sets --time
SWEEP_AFTER = 3600.0  # a credential whose submission never got a job id


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
    identity = credentials.gather(env)
    cache = TokenCache.for_identity(paths.cache_dir(env), identity.target, identity.secret)
    token = obtain(identity.target, identity.secret, cache, Schedule())
    hide(token.value)
    missing = _missing_inputs(plan, identity, token, cache)
    if missing:
        for problem in missing:
            log.error("%s", problem)
        log.error("not submitted: %d input(s) missing", len(missing))
        return EXIT_STAGE_IN
    job_env, record = _credentials_for_job(options, line, script_text, identity, token, env)
    returncode, job = _submit(line, script_text, job_env)
    if record is not None:
        path, stored = record
        stored = replace(stored, job_id=job)
        waited = any(word in ("--wait", "-W") for word in line.options)
        if job and not waited:
            credstore.write(path, stored)
        elif stored.owned:  # not submitted, or (with --wait) the job has ended: revoke now
            fresh = obtain(identity.target, identity.secret, None, Schedule())
            _forget(identity, fresh, path, stored)
    return returncode


def _read(line: sbatchline.CommandLine, env: Mapping[str, str]) -> tuple[Optional[str], StagePlan]:
    """The script and its plan; --wrap has neither. Any directive error stops here (exit 2)."""
    if line.script is None:
        return None, StagePlan()
    path = Path(line.script)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UsageError(f"{path}: cannot read the job script ({error.strerror})") from None
    if not sbatchline.is_shell_script(text):
        raise UsageError(f"{path}:1: allasrun sbatch wraps shell scripts; put 'allasrun run' inside this one")
    return text, scripts.load_plan(path, env, getpass.getuser(), strict=False)


def _missing_inputs(plan: StagePlan, identity: Identity, token: Token, cache: TokenCache) -> list[str]:
    """Stage-in sources that do not exist now (those with %j-like placeholders are skipped).

    Stage-out buckets are looked up too: one that is missing is created at stage-out (its
    name has passed Allas's rules already), which the log says now.
    """
    if not plan:
        return []
    from allasrun.commands.check import standalone_stager

    stager = standalone_stager(identity, token, cache, plan.settings)
    problems = []
    for spec in plan.stage_in:
        if "%" in spec.bucket + spec.key:
            continue
        _, failed = stager.resolve_in(spec)
        problems += [f"{t.where}: stage-in {t.source}: {t.error}" for t in failed]
    for out in plan.stage_out:
        if "%" not in out.bucket and not stager.store.bucket_exists(out.bucket):
            log.info("%s: bucket %s does not exist yet; stage-out will create it", out.where, out.bucket)
    return problems


def _credentials_for_job(
    options: SbatchOptions,
    line: sbatchline.CommandLine,
    script_text: Optional[str],
    identity: Identity,
    token: Token,
    env: Mapping[str, str],
) -> tuple[dict[str, str], Optional[tuple[Path, StoredCredential]]]:
    """The environment sbatch exports to the job, and the credentials file made for it."""
    secret = identity.secret
    if options.password_env:
        if not isinstance(secret, Password):
            raise NoCredentials("--password-env needs the password in OS_PASSWORD (or typed at the terminal)")
        return child_environment(env, {"OS_PASSWORD": secret.value}, keep_password=True), None
    if isinstance(secret, ExistingToken):
        raise NoCredentials(
            "a token cannot outlive the queue: set OS_PASSWORD, run 'allasrun login', "
            "or export OS_APPLICATION_CREDENTIAL_ID and _SECRET"
        )
    directory = paths.config_dir(env) / "jobs"
    if isinstance(secret, Password):
        _sweep(identity, token, directory, env)
        limit = sbatchline.time_limit(line, script_text or "") or DEFAULT_LIMIT
        expires = time.time() + options.queue_hours * 3600 + limit + options.margin_hours * 3600
        credential = _create(identity, token, expires)
        owned = True
    else:
        credential, expires, owned = secret, 0.0, False
    stored = StoredCredential(
        auth_url=identity.target.auth_url,
        project_name=identity.target.project_name or "",
        project_id=token.project_id,
        user_id=token.user_id,
        id=credential.id,
        secret=credential.secret,
        name=f"allasrun-job-{credential.id}",
        expires_at=utc_text(expires) if expires else "",
        owned=owned,
    )
    path = credstore.write(directory / f"{credential.id}.json", stored)
    return child_environment(env, {"ALLASRUN_CREDENTIALS": str(path)}), (path, stored)


def _create(identity: Identity, token: Token, expires: float) -> AppCredential:
    from allasrun.auth import keystone

    name = f"allasrun-job-{int(time.time())}"
    credential = keystone.create_app_credential(
        identity.target, token, name, expires, "created by 'allasrun sbatch' for one job"
    )
    hide(credential.secret)
    log.info("created application credential %s for the job (expires %s)", credential.id, utc_text(expires))
    return credential


def _submit(
    line: sbatchline.CommandLine, script_text: Optional[str], env: Mapping[str, str]
) -> tuple[int, str]:
    """Run the real sbatch on the wrapped script; its output is passed through."""
    allasrun = f"{shlex.quote(sys.executable)} -m allasrun"
    options = list(line.options)
    with tempfile.TemporaryDirectory(prefix="allasrun-sbatch-") as scratch:
        if script_text is None:  # --wrap: the wrapped command runs under allasrun too
            options = _rewrap(options, allasrun)
            command = ["sbatch", *options, *line.arguments]
        else:
            # The batch step runs under allasrun; inside it, ALLASRUN_DIR lets the script through.
            guard = f'[ -n "${{ALLASRUN_DIR:-}}" ] || exec {allasrun} run "$0" "$@"'
            copy = Path(scratch) / Path(str(line.script)).name  # same name: same default job name
            copy.write_text(sbatchline.wrapped(script_text, guard), encoding="utf-8")
            command = ["sbatch", *options, str(copy), *line.arguments]
        result = subprocess.run(command, env=dict(env), capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    out = result.stdout.strip()
    if result.returncode != 0 or not out:
        return result.returncode, ""
    # `--parsable` prints `ID[;cluster]`, otherwise `Submitted batch job ID`.
    return result.returncode, out.split(";")[0] if "--parsable" in options else out.split()[-1]


def _rewrap(options: list[str], allasrun: str) -> list[str]:
    out = []
    for index, word in enumerate(options):
        if word.startswith("--wrap="):
            out.append(f"--wrap=exec {allasrun} -- sh -c {shlex.quote(word[len('--wrap=') :])}")
        elif index > 0 and options[index - 1] == "--wrap":
            out.append(f"exec {allasrun} -- sh -c {shlex.quote(word)}")
        else:
            out.append(word)
    return out


def _sweep(identity: Identity, token: Token, directory: Path, env: Mapping[str, str]) -> None:
    """Delete the credentials of earlier jobs that have left the queue.

    Keystone does not let a restricted credential delete itself, so a job cannot revoke its
    own; the next submission (which holds the password) does, and expiry bounds the rest.
    """
    for path in sorted(directory.glob("*.json")):
        try:
            stored = credstore.read(path)
        except AllasrunError as error:
            log.warning("skipping %s: %s", path, error)
            continue
        if stored.job_id and slurm.job_active(stored.job_id, env):
            continue
        if not stored.job_id and time.time() - path.stat().st_mtime < SWEEP_AFTER:
            continue
        _forget(identity, token, path, stored)


def _forget(identity: Identity, token: Token, path: Path, stored: StoredCredential) -> None:
    from allasrun.auth import keystone

    if stored.owned:
        try:
            keystone.delete_app_credential(identity.target, token, stored.id)
        except AllasrunError as error:
            log.warning("could not delete application credential %s: %s", stored.id, error)
            return
        log.info("deleted application credential %s of finished job %s", stored.id, stored.job_id or "-")
    path.unlink(missing_ok=True)

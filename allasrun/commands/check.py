"""`allasrun check SCRIPT`: what the directives resolve to, before anything is queued or run.

Each stage-in is listed in Allas (object count, bytes, or what is missing); each stage-out
bucket is looked up (it exists, or will be created) and its local source counted if present.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from allasrun import paths
from allasrun.auth import identity as credentials
from allasrun.auth.cache import TokenCache
from allasrun.auth.identity import Identity
from allasrun.auth.schedule import Schedule
from allasrun.auth.token import Token
from allasrun.errors import EXIT_STAGE_IN
from allasrun.job.keeper import obtain
from allasrun.staging.plan import Settings, StagePlan
from allasrun.staging.report import MIB

if TYPE_CHECKING:  # the stager (and swiftclient) load only when something is looked up
    from allasrun.staging.stager import Stager


def standalone_stager(identity: Identity, token: Token, cache: TokenCache, settings: Settings) -> Stager:
    """A stager for looking things up outside a run: no keeper, the token renewed on a 401."""
    from allasrun.staging.stager import Stager
    from allasrun.staging.swift import Store

    def refresh(stale: Token) -> Token:
        return obtain(identity.target, identity.secret, cache, Schedule(), stale)

    return Stager(Store(lambda: token, refresh), settings, Path.cwd())


def run(plan: StagePlan, env: Mapping[str, str]) -> tuple[str, int]:
    """The report to print and the exit status: 0, or 74 when an input is missing."""
    from allasrun.staging.swift import StoreError

    if plan.settings.project and not env.get("OS_PROJECT_NAME"):
        env = {**env, "OS_PROJECT_NAME": plan.settings.project}
    identity = credentials.gather(env)
    cache = TokenCache.for_identity(paths.cache_dir(env), identity.target, identity.secret)
    token = obtain(identity.target, identity.secret, cache, Schedule())
    stager = standalone_stager(identity, token, cache, plan.settings)
    store = stager.store
    lines, missing = [], 0
    for spec in plan.stage_in:
        fetches, problems = stager.resolve_in(spec)
        source = f"allas:{spec.bucket}/{spec.key}"
        if problems:
            missing += len(problems)
            lines += [f"{spec.where}: stage-in {source}: {p.status.upper()}: {p.error}" for p in problems]
        else:
            found = f"{len(fetches)} object(s), {sum(f.obj.size for f in fetches) / MIB:.1f} MiB"
            lines.append(f"{spec.where}: stage-in {source}: {found} -> {spec.destination}")
    for out in plan.stage_out:
        try:
            state = "exists" if store.bucket_exists(out.bucket) else "does not exist yet; will be created"
        except StoreError as error:
            state = f"cannot be checked: {error}"
        target = f"allas:{out.bucket}/{out.key} (--when={out.when})"
        lines.append(f"{out.where}: stage-out {out.source} -> {target}: bucket {state}")
    if not plan:
        lines.append("no #ALLAS stage-in or stage-out directives")
    verdict = f"{missing} input(s) missing" if missing else "ok"
    return "\n".join([*lines, verdict]) + "\n", EXIT_STAGE_IN if missing else 0

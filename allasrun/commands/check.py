"""`allasrun check SCRIPT`: what the directives resolve to, before anything is queued or run.

Each stage-in is listed in Allas (object count, bytes, or what is missing); each stage-out
bucket is looked up (it exists, or will be created); S3 keys that will not outlive the job are
warned of.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from allasrun.auth import TokenSource
from allasrun.commands import protocol, s3access
from allasrun.errors import EXIT_STAGE_IN
from allasrun.log import log
from allasrun.slurm import sbatchline
from allasrun.staging import MIB, StagePlan, look_up


def run(plan: StagePlan, env: Mapping[str, str], script_text: str = "") -> tuple[str, int]:
    """The report to print and the exit status: 0, or 74 when an input is missing.

    S3 keys that expire before the script's time limit is over are warned of (`s3access`).
    """
    limit = sbatchline.time_limit(sbatchline.split([]), script_text)
    for warning in s3access.expiry_warnings(plan, env, limit):
        log.warning("%s", warning)
    source = None if protocol.keyless(plan, env) else TokenSource.open(env, project=plan.settings.project)
    with source or contextlib.nullcontext():  # S3 keys made for the look-up are deleted after it
        found = look_up(plan, source, s3_keys=s3access.keys_for(plan, env, source))
    lines = []
    for item in found.inputs:
        spec = item.spec
        address = spec.address()
        if item.problems:
            lines += [
                f"{spec.where}: stage-in {address}: {p.status.upper()}: {p.error}" for p in item.problems
            ]
        else:
            size = sum(f.obj.size for f in item.fetches) / MIB
            found_text = f"{len(item.fetches)} object(s), {size:.1f} MiB"
            lines.append(f"{spec.where}: stage-in {address}: {found_text} -> {spec.destination}")
    for out, exists in found.buckets:
        state = "exists" if exists else "does not exist yet; will be created"
        target = f"{out.address()} (--when={out.when})"
        lines.append(f"{out.where}: stage-out {out.source} -> {target}: bucket {state}")
    if not plan:
        lines.append("no #ALLAS stage-in or stage-out directives")
    missing = len(found.problems)
    verdict = f"{missing} input(s) missing" if missing else "ok"
    return "\n".join([*lines, verdict]) + "\n", EXIT_STAGE_IN if missing else 0

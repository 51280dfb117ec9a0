"""Which protocol a bare `bucket/name` address means, when neither the script nor the environment says.

`#ALLAS option protocol=` and `ALLASRUN_PROTOCOL` decide first (the plan reads them). Failing
those: S3 when the user has S3 keys and no Keystone secret at hand (a Roihu user whose
`allas-conf` set up S3 only), else Swift, Allas's protocol until now and what every
`OS_*` secret is for.
"""

from __future__ import annotations

from collections.abc import Mapping

from allasrun.auth import keystone_at_hand
from allasrun.commands import s3access
from allasrun.errors import UsageError
from allasrun.staging import REMOTES, S3, SWIFT, StagePlan


def decide(plan: StagePlan, env: Mapping[str, str]) -> StagePlan:
    """The plan with its bare addresses on the protocol the rule above picks."""
    if "" not in plan.remotes:
        return plan
    return plan.with_protocol(S3 if s3_only(env) else SWIFT)


def s3_only(env: Mapping[str, str]) -> bool:
    """Whether the user has S3 keys and no Keystone secret at hand (a run on S3 needs no Keystone)."""
    return not keystone_at_hand(env) and s3access.user_keys(env) is not None


def keyless(plan: StagePlan, env: Mapping[str, str]) -> bool:
    """Whether this run goes without Keystone: S3 remotes only, and `s3_only`.

    A password prompt would only stop a batch job, so the keys decide. A stage-out that asks
    for Swift segments (`--large=segments`) needs Keystone: without it, that is said now.
    """
    if not (all(REMOTES[name or "allas"].protocol == S3 for name in plan.remotes) and s3_only(env)):
        return False
    for spec in plan.stage_out:
        if spec.large == "segments":
            raise UsageError(
                f"{spec.where}: --large=segments writes Swift segments, which needs Keystone "
                "credentials (OS_PASSWORD, an application credential, 'allasrun login'); "
                "only S3 keys are at hand"
            )
    return True

"""The S3 keys a run stages with, per remote: the user's own, checked to be for that remote.

`allas-conf --lumi` overwrites the same `~/.aws` and `~/.s3cfg` files that `allas-conf --mode S3`
writes, so keys found there may be LUMI-O's: sending them to Allas (or Allas's to LUMI-O) would
only earn a refusal, after the command has run. The endpoint the keys came with decides, unless
`AWS_ENDPOINT_URL` names one for every remote (as the tests do, to reach the local stack).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from allasrun.auth import S3Keys, TokenSource, duration, find_keys, job_s3_keys, utc_text
from allasrun.errors import AllasrunError, BadS3Keys, NoCredentials, UsageError
from allasrun.log import hide, log
from allasrun.staging import REMOTES, S3, KeysFor, Remote, StagePlan, parse_moment

KEYS_EXPIRE_VARIABLE = "ALLASRUN_KEYS_EXPIRE"  # when the S3 keys at hand expire, if the script does not say
UNDECLARED = (
    "lumi-o: LUMI-O keys cannot be renewed, and allasrun cannot see when yours expire: declare it "
    "(#ALLAS option keys-expire=2026-12-07T18:00, as auth.lumidata.eu shows it) to be warned "
    "before a job outlives them"
)


def keys_for(plan: StagePlan, env: Mapping[str, str], source: Optional[TokenSource] = None) -> KeysFor:
    """A function giving each S3 remote its keys; those of the plan's S3 remotes are found now.

    Now, not at stage-out: keys missing or meant for another endpoint must stop a job before
    its command runs for days, not after. A job's own keys (`allasrun sbatch` made them) come
    first; then the user's; a user with none but a password (`source`) gets keys made for the
    run (`TokenSource.run_s3_keys`).
    """

    @cache
    def found() -> S3Keys:
        keys = user_keys(env)
        made = job_s3_keys(env) or (source.run_s3_keys() if keys is None and source is not None else None)
        if made is not None:  # Allas's: made by its Keystone
            keys = replace(made, endpoint=env.get("AWS_ENDPOINT_URL") or REMOTES["s3allas"].endpoint)
        if keys is None:
            raise NoCredentials(
                "no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, run 'allas-conf "
                "--mode S3' (it writes ~/.s3cfg and ~/.aws/credentials), or give allasrun the "
                "password (OS_PASSWORD) to make keys for the run"
            )
        hide(keys.secret)
        return keys

    def keys(remote: Remote) -> S3Keys:
        mine = found()
        chosen = bool(env.get("AWS_ENDPOINT_URL"))  # the user's word for every remote
        if (
            not chosen
            and mine.endpoint
            and remote.endpoint
            and _host(mine.endpoint) != _host(remote.endpoint)
        ):
            raise BadS3Keys(
                f"{remote.name}: the S3 keys in {mine.origin} are for {mine.endpoint}, not "
                f"{remote.endpoint}; set AWS_ENDPOINT_URL if that is where {remote.name}: is"
            )
        return mine

    for name in plan.remotes:
        if REMOTES[name or "allas"].protocol == S3:
            keys(REMOTES[name])
    return keys


def command_keys(plan: StagePlan, keys: Optional[KeysFor], env: Mapping[str, str]) -> Optional[S3Keys]:
    """The S3 keys the command's clients get, with their endpoint: the plan's first S3 remote's.

    A plan on Swift alone still gives the command the user's own keys for s3allas:, if they
    name their endpoint (allas-conf writes it; AWS variables alone may well be Amazon's, which
    the job must keep using there); keys that cannot be read cost a warning, not the job.
    """
    s3 = [REMOTES[name] for name in plan.remotes if name and REMOTES[name].protocol == S3]
    if s3 and keys is not None:
        remote, given = s3[0], keys(s3[0])
    else:
        remote = REMOTES["s3allas"]
        try:
            found = user_keys(env)
        except AllasrunError as error:
            log.warning("the command gets no S3 keys: %s", error)
            return None
        if found is None or not found.endpoint:
            return None
        hide(found.secret)
        given = found
    return replace(given, endpoint=given.endpoint or remote.endpoint)


def command_remote(plan: StagePlan, keys: S3Keys) -> str:
    """The rclone remote the command's S3 keys go under, named as CSC's allas-conf names it.

    The plan's first S3 remote (`lumi-o` for a LUMI-O job, whose rclone calls say `lumi-o:`),
    else the remote whose endpoint the keys came with, else `s3allas`.
    """
    s3 = [name for name in plan.remotes if name and REMOTES[name].protocol == S3]
    if s3:
        return s3[0]
    by_host = [
        r.name
        for r in REMOTES.values()
        if r.endpoint and keys.endpoint and _host(r.endpoint) == _host(keys.endpoint)
    ]
    return by_host[0] if by_host else "s3allas"


def expiry_warnings(
    plan: StagePlan, env: Mapping[str, str], limit: Optional[float], queue: float = 0.0
) -> list[str]:
    """What to tell the user about S3 keys that may die before the job ends, given its time limit.

    LUMI-O's keys live as long as the hours chosen at auth.lumidata.eu, and no API renews them
    or even tells their expiry: the user declares it (`#ALLAS option keys-expire=`, else
    `ALLASRUN_KEYS_EXPIRE`), and a LUMI-O job that declares nothing is told how. A job that
    starts at once can end at `now + limit` at the latest; one that waits `queue` seconds first,
    that much later.
    """
    if not any(REMOTES[name or "allas"].protocol == S3 for name in plan.remotes):
        return []
    expires = plan.settings.keys_expire or _declared(env)
    if expires is None:
        return [UNDECLARED] if "lumi-o" in plan.remotes else []
    left, until = expires - time.time(), utc_text(expires)
    if left <= 0:
        return [f"the S3 keys expired at {until} (keys-expire): the job cannot reach its buckets"]
    if limit is not None and left < limit:
        return [
            f"the S3 keys expire at {until}, {duration(left)} from now (keys-expire), before the job's "
            f"time limit of {duration(limit)} is over even if it starts now: a stage-out after then fails"
        ]
    if limit is not None and left < limit + queue:
        return [
            f"the S3 keys expire at {until} (keys-expire): the job must start within "
            f"{duration(left - limit)} to end its time limit of {duration(limit)} before them"
        ]
    return []


def _declared(env: Mapping[str, str]) -> Optional[float]:
    text = env.get(KEYS_EXPIRE_VARIABLE, "").strip()
    if not text:
        return None
    try:
        return parse_moment(text)
    except ValueError as error:
        raise UsageError(f"{KEYS_EXPIRE_VARIABLE}: {error}") from None


def user_keys(env: Mapping[str, str]) -> Optional[S3Keys]:
    """The user's own S3 keys, from the home `env` names (the caller's, not this process's)."""
    return find_keys(env, Path(env.get("HOME") or Path.home()))


def _host(url: str) -> str:
    return (urlsplit(url if "//" in url else f"//{url}").hostname or url).lower()

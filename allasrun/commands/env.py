"""`allasrun env`: export lines with a token that has time left, for `eval "$(allasrun env)"`."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from allasrun import paths
from allasrun.auth import identity as credentials
from allasrun.auth.cache import TokenCache
from allasrun.auth.schedule import Schedule
from allasrun.job.keeper import obtain


def run(env: Mapping[str, str], schedule: Schedule) -> str:
    """The lines to print: the same two variables allas-conf exports."""
    identity = credentials.gather(env)
    cache = TokenCache.for_identity(paths.cache_dir(env), identity.target, identity.secret)
    token = obtain(identity.target, identity.secret, cache, schedule)
    return (
        f"export OS_AUTH_TOKEN={shlex.quote(token.value)}\n"
        f"export OS_STORAGE_URL={shlex.quote(token.storage_url)}\n"
    )

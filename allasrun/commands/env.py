"""`allasrun env`: export lines with a token that has time left, for `eval "$(allasrun env)"`."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from allasrun.auth import Schedule, TokenSource


def run(env: Mapping[str, str], schedule: Schedule) -> str:
    """The lines to print: the same two variables allas-conf exports."""
    token = TokenSource.open(env, schedule=schedule).token
    return (
        f"export OS_AUTH_TOKEN={shlex.quote(token.value)}\n"
        f"export OS_STORAGE_URL={shlex.quote(token.storage_url)}\n"
    )

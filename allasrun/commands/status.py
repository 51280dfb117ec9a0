"""`allasrun status`: who we are, which project, where Swift is, when the token expires."""

from __future__ import annotations

import time
from collections.abc import Mapping

from allasrun.auth import Schedule, TokenSource


def run(env: Mapping[str, str], schedule: Schedule) -> str:
    """A short report, one `name: value` line each; authenticates only if no token is cached."""
    source = TokenSource.open(env, schedule=schedule)
    target, token = source.identity.target, source.token
    minutes = token.remaining(time.time()) / 60
    rows = [
        ("keystone", target.auth_url),
        ("user", f"{target.username} (domain {target.user_domain})"),
        ("project", f"{target.project_name or '-'} (id {token.project_id})"),
        ("credential", source.identity.origin),
        ("storage URL", token.storage_url),
        ("token", f"expires {token.expiry_text()} (in {minutes:.1f} min)"),
        ("token cache", str(source.cache.path) if source.cache else "-"),
    ]
    if env.get("ALLASRUN_DIR"):
        rows.append(("job files", env["ALLASRUN_DIR"]))
        rows.append(("rclone config", env.get("RCLONE_CONFIG", "-")))
        rows.append(("env file", env.get("ALLASRUN_ENV_FILE", "-")))
    width = max(len(name) for name, _ in rows) + 1
    return "".join(f"{name + ':':<{width}} {value}\n" for name, value in rows)

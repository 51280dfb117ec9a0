"""`allasrun status`: who we are, which project, where Swift is, when the token expires."""

from __future__ import annotations

import time
from collections.abc import Mapping

from allasrun import paths
from allasrun.auth import identity as credentials
from allasrun.auth.cache import TokenCache
from allasrun.auth.schedule import Schedule
from allasrun.job.keeper import obtain


def run(env: Mapping[str, str], schedule: Schedule) -> str:
    """A short report, one `name: value` line each; authenticates only if no token is cached."""
    identity = credentials.gather(env)
    target = identity.target
    cache = TokenCache.for_identity(paths.cache_dir(env), target, identity.secret)
    token = obtain(target, identity.secret, cache, schedule)
    minutes = token.remaining(time.time()) / 60
    rows = [
        ("keystone", target.auth_url),
        ("user", f"{target.username} (domain {target.user_domain})"),
        ("project", f"{target.project_name or '-'} (id {token.project_id})"),
        ("credential", identity.origin),
        ("storage URL", token.storage_url),
        ("token", f"expires {token.expiry_text()} (in {minutes:.1f} min)"),
        ("token cache", str(cache.path)),
    ]
    if env.get("ALLASRUN_DIR"):
        rows.append(("job files", env["ALLASRUN_DIR"]))
        rows.append(("rclone config", env.get("RCLONE_CONFIG", "-")))
        rows.append(("env file", env.get("ALLASRUN_ENV_FILE", "-")))
    width = max(len(name) for name, _ in rows) + 1
    return "".join(f"{name + ':':<{width}} {value}\n" for name, value in rows)

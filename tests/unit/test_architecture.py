"""The layering the package promises, checked from its source and one real start-up.

Data flows one way: commands compose auth, job, staging and slurm through their front
doors; auth knows nothing of jobs or staging; job and staging do not know each other; one
module touches keystoneauth1, one botocore, one http.client (both stores speak through it), and
none swiftclient. And a run served by the token cache never imports any of them, which is what
keeps start-up under its budget.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from allasrun.auth import AppCredential, Target, Token
from allasrun.auth.cache import TokenCache

PACKAGE = Path(__file__).resolve().parents[2] / "allasrun"


def _imports() -> dict[str, set[str]]:
    """Every `allasrun.*` module and the modules it imports anywhere (lazy imports too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names if node.module == "allasrun"}
        graph[module] = found
    return graph


def _importers(prefix: str) -> set[str]:
    return {
        module
        for module, imported in _imports().items()
        if any(name == prefix or name.startswith(prefix + ".") for name in imported)
    }


def _area(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_auth_knows_nothing_of_jobs_staging_slurm_or_commands() -> None:
    for module, imported in _imports().items():
        if _area(module) == "auth":
            above = {
                name for name in imported if _area(name) in ("job", "staging", "slurm", "commands", "cli")
            }
            assert not above, f"{module} imports {above}"


def test_job_and_staging_do_not_know_each_other() -> None:
    for module, imported in _imports().items():
        other = {"job": "staging", "staging": "job"}.get(_area(module))
        if other:
            assert not {name for name in imported if _area(name) == other}, module


def test_only_the_cli_imports_commands_and_commands_use_front_doors() -> None:
    assert _importers("allasrun.commands") <= {"allasrun.cli"} | {
        m for m in _imports() if _area(m) == "commands"
    }
    for module, imported in _imports().items():
        if _area(module) == "commands":
            deep = {
                name
                for name in imported
                if _area(name) in ("auth", "job", "staging") and name.count(".") > 1
                # `from allasrun.auth import credstore` names a module of the package: allowed
            }
            assert not deep, f"{module} reaches behind a front door: {deep}"


def test_third_party_clients_each_have_one_home() -> None:
    assert _importers("keystoneauth1") == {"allasrun.auth.keystone"}
    assert _importers("swiftclient") == set()
    assert _importers("botocore") == {"allasrun.staging.s3"}
    assert _importers("http") == {"allasrun.staging.wire"}
    assert _importers("subprocess") == {"allasrun.slurm.facts", "allasrun.slurm.submit"}


def test_a_cached_token_run_never_imports_keystoneauth_swiftclient_or_botocore(tmp_path: Path) -> None:
    """`allasrun -- true` with an application credential and a cached token: no Keystone at all.

    Keystone's URL is a closed port, so any attempt to authenticate would fail the run.
    """
    auth_url = "http://127.0.0.1:9/v3"
    credential = AppCredential("cred-id", "cred-secret")
    target = Target(auth_url, None, os.environ.get("USER", "user"))
    cache = TokenCache.for_identity(tmp_path / "cache", target, credential)
    now = time.time()
    cache.store(Token("cached-token", now, now + 3600, "http://127.0.0.1:9/v1/AUTH_p", "p", "u"))
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(PACKAGE.parent),
        "HOME": str(tmp_path),
        "OS_AUTH_URL": auth_url,
        "OS_USERNAME": target.username,
        "OS_APPLICATION_CREDENTIAL_ID": credential.id,
        "OS_APPLICATION_CREDENTIAL_SECRET": credential.secret,
        "ALLASRUN_CACHE_DIR": str(tmp_path / "cache"),
        "ALLASRUN_RUNTIME_DIR": str(tmp_path / "run"),
    }
    probe = (
        "import atexit, json, sys\n"
        "def report():\n"
        "    clients = ('keystoneauth1', 'swiftclient', 'botocore')\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in clients)\n"
        f"    open({str(tmp_path / 'modules.json')!r}, 'w').write(json.dumps(loaded))\n"
        "atexit.register(report)\n"
        "sys.argv = ['allasrun', '--', 'true']\n"
        "from allasrun.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "modules.json").read_text()) == []

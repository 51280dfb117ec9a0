"""Application credentials kept in 0600 JSON files.

`allasrun login` keeps one per project; `allasrun sbatch` hands one to each submission.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from allasrun.atomicfile import private_dir, write_atomic
from allasrun.errors import UsageError
from allasrun.paths import check_private


@dataclass(frozen=True)
class StoredCredential:
    """What `login` keeps: enough to authenticate later and to revoke it on the next login."""

    auth_url: str
    project_name: str
    project_id: str
    user_id: str
    id: str
    secret: str
    name: str
    expires_at: str
    # For `allasrun sbatch`: the job it was given to, and whether it was created for that job
    # (and so is deleted once the job has left the queue).
    job_id: str = ""
    owned: bool = False


def path_for(directory: Path, project_name: str) -> Path:
    """One file per project, so several projects can be logged in at once."""
    return directory / "credentials" / f"{project_name}.json"


def load(
    directory: Path, project_name: Optional[str], auth_url: str
) -> Optional[tuple[Path, StoredCredential]]:
    """The stored credential for this project and Keystone, if there is one.

    Without OS_PROJECT_NAME, a single stored credential is used; with several, none is
    guessed. A file for another Keystone is not used.
    """
    if project_name:
        candidates = [path_for(directory, project_name)]
    else:
        candidates = sorted((directory / "credentials").glob("*.json"))
        if len(candidates) != 1:
            return None
    path = candidates[0]
    if not path.exists():
        return None
    stored = read(path)
    if stored.auth_url.rstrip("/") != auth_url.rstrip("/"):
        return None
    return path, stored


def read(path: Path) -> StoredCredential:
    """One credentials file; refused when others can read it or it is not ours."""
    check_private(path)
    try:
        return StoredCredential(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise UsageError(f"{path}: not a credentials file written by allasrun ({error})") from None


def save(directory: Path, stored: StoredCredential) -> Path:
    """Write the credential 0600 in a 0700 directory, replacing any earlier one atomically."""
    return write(path_for(directory, stored.project_name), stored)


def write(path: Path, stored: StoredCredential) -> Path:
    """Write one credentials file, 0600 in a 0700 directory, atomically."""
    private_dir(path.parent)
    write_atomic(path, json.dumps(asdict(stored), indent=2) + "\n")
    return path

"""Application credentials kept in 0600 JSON files.

`allasrun login` keeps one per project; `allasrun sbatch` hands one to each submission.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from allasrun.atomicfile import private_dir, write_atomic
from allasrun.auth.s3keys import S3Keys
from allasrun.errors import UnsafeFile, UsageError
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
    # For `allasrun sbatch`: the job it was given to and that job's cluster, and whether it is
    # to be deleted once no job holds it (made for the job, or a login credential replaced while
    # jobs held it).
    job_id: str = ""
    owned: bool = False
    cluster: str = ""
    # For an S3 job: the EC2 key pair made for it alone, deleted with the record.
    s3_access: str = ""
    s3_secret: str = ""


def job_s3_keys(env: Mapping[str, str]) -> Optional[S3Keys]:
    """The S3 keys `allasrun sbatch` made for this job, in its credentials file; None if none."""
    path = env.get("ALLASRUN_CREDENTIALS")
    if not path:
        return None
    stored = read(Path(path))
    if not stored.s3_access:
        return None
    return S3Keys(stored.s3_access, stored.s3_secret, f"the job's own S3 keys in {path}", None)


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
    """One credentials file; refused when others can read it or it is not ours.

    A file that is gone or cannot be read (ALLASRUN_CREDENTIALS naming a deleted file, a
    job's file swept by a concurrent submission) is a usage error naming it, not a traceback.
    """
    try:
        check_private(path)
        owner = path.stat().st_uid
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"{path}: cannot read the credentials file ({error.strerror or error})") from None
    if owner != os.getuid():
        raise UnsafeFile(f"{path}: the credentials file belongs to uid {owner}, not to this user")
    try:
        return StoredCredential(**json.loads(text))
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


def expiry(stored: StoredCredential) -> Optional[float]:
    """When the credential stops working, as POSIX seconds; None where it is not known."""
    try:
        moment = datetime.strptime(stored.expires_at, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc).timestamp()

"""Credential files: a missing, unreadable or foreign one is one error line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from allasrun.auth import credstore
from allasrun.auth.credstore import StoredCredential, read
from allasrun.errors import EXIT_USAGE, UnsafeFile, UsageError

STORED = StoredCredential("http://k/v3", "project_1", "p", "u", "cid", "secret", "n", "2030-01-01T00:00:00Z")


def test_a_deleted_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"{tmp_path}/gone.json: cannot read the credentials file"):
        read(tmp_path / "gone.json")


def test_a_directory_is_a_usage_error_too(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir(mode=0o700)
    with pytest.raises(UsageError, match="cannot read the credentials file"):
        read(tmp_path / "dir.json")


def test_a_file_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = credstore.write(tmp_path / "c.json", STORED)
    assert read(path) == STORED
    monkeypatch.setattr(os, "getuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(UnsafeFile, match="belongs to uid"):
        read(path)


def test_expiry_reads_back_what_was_written() -> None:
    assert credstore.expiry(STORED) == 1893456000.0
    assert credstore.expiry(StoredCredential("a", "b", "c", "d", "e", "f", "g", "")) is None


@pytest.mark.parametrize("kind", ["deleted", "unreadable"])
def test_allasrun_credentials_naming_a_bad_file_is_exit_2_and_one_line(tmp_path: Path, kind: str) -> None:
    """As a job sees it when its file was swept or its mode changed: `allasrun env` in the job."""
    path = tmp_path / "job.json"
    if kind == "unreadable":
        path.mkdir(mode=0o700)  # unreadable as a file, even for root
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "OS_AUTH_URL": "http://127.0.0.1:9/v3",  # never reached
        "OS_PROJECT_NAME": "project_1",
        "ALLASRUN_CREDENTIALS": str(path),
        "ALLASRUN_CONFIG_DIR": str(tmp_path / "config"),
        "ALLASRUN_CACHE_DIR": str(tmp_path / "cache"),
        "ALLASRUN_RUNTIME_DIR": str(tmp_path / "run"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "allasrun", "env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("allasrun: ") and f"{path}: cannot read the credentials file" in line

"""Every bad input: one clear line, a documented exit code, and the command never started."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from allasrun import errors
from tests.stack.stackutil import Stack, allasrun, app_credential_env, swift_round_only, user_env


def run_marker_job(env: dict[str, str], tmp_path: Path, *options: str) -> tuple[int, str, bool]:
    """Run a job that would leave a marker file; report exit code, stderr, and whether it ran."""
    marker = tmp_path / "ran"
    result = allasrun([*options, "--", "touch", str(marker)], env)
    return result.returncode, result.stderr, marker.exists()


RETRYING = re.compile(r"; retrying in \d+ s$")


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    """One `error:` line; before it, at most the progress of retries against a server that failed."""
    lines = [line for line in stderr.splitlines() if line.strip() and not RETRYING.search(line)]
    assert len(lines) == 1, stderr
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr


def test_unreachable_keystone(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = user_env(stack, home, OS_AUTH_URL="http://127.0.0.1:9/v3")
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_UNAVAILABLE, False)
    assert_one_error_line(stderr, "cannot reach Keystone at http://127.0.0.1:9/v3")


def test_wrong_password(stack: Stack, home: Path, tmp_path: Path) -> None:
    code, stderr, ran = run_marker_job(user_env(stack, home, OS_PASSWORD="Wr0ng-Pa55"), tmp_path)
    assert (code, ran) == (errors.EXIT_AUTH, False)
    assert_one_error_line(stderr, "Keystone refused user 'allasuser'", "HTTP 401")
    assert "Wr0ng-Pa55" not in stderr


def test_unknown_project(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = user_env(stack, home, OS_PROJECT_NAME="project_9999999")
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_AUTH, False)
    assert_one_error_line(stderr, "project 'project_9999999'")


def test_no_object_store_endpoint(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = app_credential_env(stack, home)
    env["OS_REGION_NAME"] = "NoSuchRegion"
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_CONFIG, False)
    assert_one_error_line(stderr, "no object-store endpoint", "'NoSuchRegion'")


def test_storage_url_override_serves_a_catalog_without_swift(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    env = app_credential_env(stack, home)
    env["OS_REGION_NAME"] = "NoSuchRegion"
    code, stderr, ran = run_marker_job(env, tmp_path, "--storage-url", stack.env["OS_STORAGE_URL"])
    assert (code, ran) == (0, True), stderr


def test_no_credentials_at_all(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = user_env(stack, home)
    del env["OS_PASSWORD"]
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_CONFIG, False)
    assert_one_error_line(stderr, "no credentials", "allasrun login")


def test_password_without_project(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = user_env(stack, home)
    del env["OS_PROJECT_NAME"]
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_USAGE, False)
    assert_one_error_line(stderr, "OS_PROJECT_NAME is not set")


def test_missing_command_is_a_usage_error(stack: Stack, home: Path) -> None:
    result = allasrun(["--"], user_env(stack, home))
    assert result.returncode == errors.EXIT_USAGE
    assert "Missing argument" in result.stderr


def test_unknown_option_is_a_usage_error(stack: Stack, home: Path, tmp_path: Path) -> None:
    code, stderr, ran = run_marker_job(user_env(stack, home), tmp_path, "--no-such-option")
    assert (code, ran) == (errors.EXIT_USAGE, False)
    assert "No such option: --no-such-option" in stderr


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_stored_credential_readable_by_others_is_refused(
    stack: Stack, home: Path, tmp_path: Path, mode: int
) -> None:
    env = user_env(stack, home, ALLASRUN_CONFIG_DIR=str(home / "conf"))
    path = home / "conf" / "credentials" / f"{env['OS_PROJECT_NAME']}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"auth_url": env["OS_AUTH_URL"]}))
    path.chmod(mode)
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_CONFIG, False)
    assert_one_error_line(stderr, str(path), f"mode {mode:04o}", "chmod 600")


def test_corrupt_stored_credential_names_the_file(stack: Stack, home: Path, tmp_path: Path) -> None:
    env = user_env(stack, home, ALLASRUN_CONFIG_DIR=str(home / "conf"))
    path = home / "conf" / "credentials" / f"{env['OS_PROJECT_NAME']}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    path.chmod(0o600)
    code, stderr, ran = run_marker_job(env, tmp_path)
    assert (code, ran) == (errors.EXIT_USAGE, False)
    assert_one_error_line(stderr, str(path), "not a credentials file")


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """An object store in trouble: every request gets 503."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def failing_swift() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/AUTH_x"
    server.shutdown()


@pytest.mark.parametrize("swift", ["refused", "503"])
@pytest.mark.parametrize("command", ["check", "sbatch"])
def test_a_failing_object_store_is_exit_69_naming_the_url(
    stack: Stack, home: Path, tmp_path: Path, failing_swift: str, swift: str, command: str
) -> None:
    """Swift down or answering 5xx says nothing about the inputs: 69 with the URL, never 74 or 2.

    The token is real (Keystone validates it); the storage URL it is used with is not.
    """
    swift_round_only(stack, "the failing store is a fake")
    storage_url = "http://127.0.0.1:9/v1/AUTH_x" if swift == "refused" else failing_swift
    env = user_env(
        stack, home, OS_AUTH_TOKEN=stack.user_session().get_token() or "", OS_STORAGE_URL=storage_url
    )
    del env["OS_PASSWORD"]
    script = tmp_path / "job.sh"
    # One retry: the answer is the same after the default five, only half a minute later.
    script.write_text("#!/bin/bash\n#ALLAS stage-in stage-data/x\n#ALLAS option retries=1\ntouch ran\n")
    result = allasrun([command, str(script)], env)
    assert result.returncode == errors.EXIT_UNAVAILABLE, result.stderr
    assert_one_error_line(result.stderr, f"{storage_url}/stage-data")
    assert not (tmp_path / "ran").exists()

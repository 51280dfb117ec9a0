"""The run's token service against the real stack: Keystone sees only the keeper, clients last.

Client calls (rclone, swift, a bash script calling swift as CSC's a-commands do) re-authenticate
at the run's loopback service, so they cost Keystone nothing, and transfers longer than two
token lifetimes go through for every origin of the credential. Strangers, malformed requests
and a flood get status lines only; a given token is served until it expires, and then the
clients are told why; a run that cannot listen falls back to the files it wrote before.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import pytest

from tests.stack.stackutil import (
    ALLASRUN,
    OrdinaryUser,
    Stack,
    allasrun,
    app_credential_env,
    make_bucket,
    rclone,
    swift_round_only,
    user_env,
    wait_for,
)
from tests.stack.tcpproxy import ThrottledRelay

BUCKET = "token-service"


def _without_password(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name != "OS_PASSWORD"}


def _origin_env(stack: Stack, home: Path, origin: str) -> tuple[list[str], dict[str, str]]:
    """allasrun's options and the user's environment for one origin of the credential."""
    if origin == "app-credential":
        return [], app_credential_env(stack, home)
    if origin == "login":
        login = allasrun(["login"], user_env(stack, home))
        assert login.returncode == 0, login.stderr
        return [], _without_password(user_env(stack, home))
    if origin == "password-pinned":  # the password itself renews; no credential is minted
        return ["--no-job-credential"], user_env(stack, home)
    return [], user_env(stack, home)


def _renewals(stderr: str) -> int:
    return int(re.findall(r"after (\d+) renewal\(s\)", stderr)[-1])


CALLS = """
set -e
seq "$N" | xargs -P 3 -I{} rclone lsf "allas:$BUCKET/calls/" > /dev/null
seq "$N" | xargs -P 3 -I{} rclone copyto "$DATA" "allas:$BUCKET/calls/$RUN/copy-{}"
seq "$N" | xargs -P 3 -I{} swift list "$BUCKET" --prefix "calls/$RUN/" > /dev/null
test "$(swift list "$BUCKET" --prefix "calls/$RUN/" | wc -l)" -eq "$N"
"""


def _client_calls(stack: Stack, home: Path, tmp_path: Path, origin: str, each: int) -> tuple[int, int, int]:
    """Run 3 x `each` client calls under allasrun: Keystone token requests (all, clients') and renewals."""
    options, env = _origin_env(stack, home, origin)
    data = tmp_path / "data.txt"
    data.write_text("one small file\n")
    env.update(N=str(each), DATA=str(data), RUN=uuid.uuid4().hex, BUCKET=BUCKET)
    before, ours_before = stack.keystone_requests(), stack.allasrun_logins()
    result = allasrun([*options, "--", "bash", "-c", CALLS], env, timeout=900)
    assert result.returncode == 0, result.stderr
    total = stack.keystone_requests() - before
    return total, total - (stack.allasrun_logins() - ours_before), _renewals(result.stderr)


@pytest.mark.exclusive  # counts Keystone's requests
@pytest.mark.parametrize("origin", ["password", "app-credential", "login"])
def test_sixty_client_calls_cost_keystone_at_most_three_token_requests(
    stack: Stack, home: Path, tmp_path: Path, origin: str
) -> None:
    make_bucket(stack, BUCKET)
    total, clients, renewals = _client_calls(stack, home, tmp_path, origin, 20)
    assert clients == 0, f"rclone and swift logged in to Keystone {clients} time(s)"
    assert total <= 3, f"{total} token requests, {renewals} of them renewals"


@pytest.mark.exclusive  # counts Keystone's requests
def test_ten_times_the_calls_cost_no_more_than_the_renewals_they_outlast(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    """600 calls against 60: the only extra Keystone traffic is the keeper's, once per half token life."""
    make_bucket(stack, BUCKET)
    small, small_clients, small_renewals = _client_calls(stack, home / "a", tmp_path, "app-credential", 20)
    large, large_clients, large_renewals = _client_calls(stack, home / "b", tmp_path, "app-credential", 200)
    assert small_clients == large_clients == 0
    assert large - large_renewals <= small - small_renewals, (small, small_renewals, large, large_renewals)


A_COMMAND = """#!/bin/bash
# As CSC's a-list calls swift: with the OS_AUTH_TOKEN and OS_STORAGE_URL it inherited, nothing else.
unset ST_AUTH ST_USER ST_KEY ST_AUTH_VERSION
printf '%s' "$OS_AUTH_TOKEN" > "$OUT/a-command-token.txt"
swift list "$1" --prefix "$2"
"""

LONG_JOB = """
set -u
first="$OS_AUTH_TOKEN"
rclone copy --bwlimit 50k --transfers 1 --checkers 1 --retries 1 --low-level-retries 2 \\
  "$SOURCE" "allas:$BUCKET/$PREFIX/rclone" > "$OUT/rclone.log" 2>&1 &
copying=$!
swift upload --segment-size 262144 "$MANIFEST" --object-name "$PREFIX/swift.bin" "$BUCKET" "$BLOB" \\
  > "$OUT/swift.log" 2>&1 &
uploading=$!
wait $copying; echo $? > "$OUT/rclone.rc"
wait $uploading; echo $? > "$OUT/swift.rc"
# Two token lifetimes later, a new bash script sees the token of this moment...
"$A_COMMAND" "$BUCKET" "$PREFIX/" > "$OUT/a-command.txt" 2> "$OUT/a-command.err"
echo $? > "$OUT/a-command.rc"
# ...where this shell still holds the first, expired one, which swift alone cannot renew.
(unset ST_AUTH ST_USER ST_KEY; swift list "$BUCKET" --prefix "$PREFIX/") > "$OUT/stale.txt" 2>&1
echo $? > "$OUT/stale.rc"
test "$first" != "$(cat "$OUT/a-command-token.txt")"
"""

ORIGINS = ("password", "app-credential", "password-pinned")
# Each run uploads 10 MiB with rclone (held to 50 KiB/s by rclone) and 10 MiB with swift, in 40
# segments, through a link of 100 KiB/s: about 205 s, more than two of the stack's 90 s tokens.
# (Not `swift upload -` from a pipe: swiftclient cannot resend a piped segment, so any 401 or
# 5xx on one ends such an upload, token service or not.) On OpenStack Swift the manifest is a DLO:
# with keystone's delay_auth_decision, Swift's SLO middleware checks the segments before the token
# is refused, so an SLO manifest sent with an expired token gets 400, not the 401 that makes
# swiftclient re-authenticate; radosgw, which Allas runs, answers 401, and gets an SLO.
MIB = 1024 * 1024
RATE = 100 * 1024


def test_transfers_longer_than_two_tokens_succeed_for_every_origin(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    make_bucket(stack, BUCKET)
    source = tmp_path / "source"
    source.mkdir()
    for n in range(10):
        (source / f"part-{n:02d}.bin").write_bytes(bytes([n]) * MIB)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"".join(bytes([n]) * 262144 for n in range(40)))
    a_command = tmp_path / "a-list-like"
    a_command.write_text(A_COMMAND)
    a_command.chmod(0o755)
    storage = urlsplit(stack.env["OS_STORAGE_URL"])
    run = uuid.uuid4().hex
    runs, links = {}, []
    for origin in ORIGINS:
        out = tmp_path / origin
        out.mkdir()
        link = ThrottledRelay(storage.port or 80, RATE)
        link.start()
        links.append(link)
        options, env = _origin_env(stack, home / origin, origin)
        env.update(
            SOURCE=str(source),
            BLOB=str(blob),
            A_COMMAND=str(a_command),
            BUCKET=BUCKET,
            PREFIX=f"long/{run}/{origin}",
            OUT=str(out),
            MANIFEST="--use-slo" if stack.backend == "rgw" else "--use-dlo",
        )
        url = f"http://127.0.0.1:{link.port}{storage.path}"
        runs[origin] = subprocess.Popen(
            [*ALLASRUN, *options, "--storage-url", url, "--", "bash", "-c", LONG_JOB],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        logs = {origin: proc.communicate(timeout=900)[1] for origin, proc in runs.items()}
    finally:
        for link in links:
            link.close()
    for origin, proc in runs.items():
        out, log = tmp_path / origin, logs[origin]
        prefix = f"long/{run}/{origin}"
        report = f"{origin}: {log}\n{_read(out / 'rclone.log')}\n{_read(out / 'swift.log')}"
        assert (out / "rclone.rc").read_text().strip() == "0", report
        assert (out / "swift.rc").read_text().strip() == "0", report
        assert _renewals(log) >= 2, report  # the transfers really outlived two tokens
        rclone(stack, tmp_path, "check", "--one-way", str(source), f"ref:{BUCKET}/{prefix}/rclone")
        uploaded = rclone(stack, tmp_path, "md5sum", "--download", f"ref:{BUCKET}/{prefix}/swift.bin").stdout
        assert uploaded.split()[0] == hashlib.md5(blob.read_bytes()).hexdigest(), report
        assert (out / "a-command.rc").read_text().strip() == "0", _read(out / "a-command.err")
        assert f"{prefix}/swift.bin" in (out / "a-command.txt").read_text().split(), report
        stale = (out / "stale.txt").read_text()
        assert (out / "stale.rc").read_text().strip() != "0", "the first token was still valid: no proof"
        assert "401" in stale or "Unauthorized" in stale, stale
        assert proc.returncode == 0, report


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path.name} missing)"


STRANGERS_JOB = """
set -e
printf '%s' "$ST_AUTH" > "$OUT/url.part"; mv "$OUT/url.part" "$OUT/url"
printf '%s' "$OS_AUTH_TOKEN" > "$OUT/token"
while [ ! -e "$OUT/go" ]; do sleep 0.1; done
rclone lsf "allas:$BUCKET" > /dev/null
swift list "$BUCKET" > /dev/null
echo unharmed > "$OUT/done"
"""


def _ask(url: str, head: bytes) -> bytes:
    """One raw request to the service; the whole answer."""
    host, port = url.split("/")[2].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


class WaitingJob:
    """A run whose command says where its service is, waits for a go, then calls rclone and swift."""

    def __init__(self, stack: Stack, home: Path, out: Path) -> None:
        make_bucket(stack, BUCKET)
        env = app_credential_env(stack, home)
        env.update(OUT=str(out), BUCKET=BUCKET)
        self.out = out
        self.stderr = ""
        self.returncode: Optional[int] = None
        self._proc = subprocess.Popen(
            [*ALLASRUN, "--", "bash", "-c", STRANGERS_JOB],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> WaitingJob:
        url = self.out / "url"
        self.url: str = wait_for(lambda: url.exists() and url.read_text(), timeout=60, what="the service")
        self.token = (self.out / "token").read_text()
        return self

    def __exit__(self, *exception: object) -> None:
        """Let the command go on and wait for the run's end (kill it on a failure meanwhile)."""
        (self.out / "go").touch()
        try:
            self.returncode = self._proc.wait(timeout=120)
        finally:
            self._proc.kill()
            self.stderr = self._proc.communicate()[1]


def test_strangers_bad_requests_and_a_flood_get_status_lines_and_the_job_goes_on(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    with WaitingJob(stack, home, tmp_path) as job:
        path = "/" + job.url.split("/", 3)[3]
        get = f"GET {path} HTTP/1.1\r\nX-Auth-User: allasrun\r\n"
        asks = {
            "no key": f"{get}\r\n".encode(),
            "wrong key": f"{get}X-Auth-Key: guess\r\n\r\n".encode(),
            "other path": b"GET /v1/AUTH_x HTTP/1.1\r\n\r\n",
            "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello, say
        }
        answers = {what: _ask(job.url, head) for what, head in asks.items()}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            flood = list(pool.map(lambda _: _ask(job.url, asks["wrong key"]), range(10_000)))
    assert {what: _status(answer) for what, answer in answers.items()} == {
        "no key": 401,
        "wrong key": 401,
        "other path": 404,
        "garbage": 400,
    }
    assert {_status(answer) for answer in flood} == {401}
    assert not any(job.token.encode() in answer for answer in [*answers.values(), *flood])
    assert job.returncode == 0, job.stderr
    assert (tmp_path / "done").read_text() == "unharmed\n", job.stderr
    assert job.token not in job.stderr
    assert len(re.findall("token service: refused", job.stderr)) == 3, job.stderr  # once per kind
    assert re.search(r"token service: \d+ answer\(s\), 10004 refusal\(s\)", job.stderr), job.stderr


def test_another_user_on_the_node_gets_401(
    stack: Stack, home: Path, tmp_path: Path, other_user: OrdinaryUser
) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    with WaitingJob(stack, home, tmp_path) as job:
        curl = ["curl", "-s", "-D", "-", "-H", "X-Auth-User: allasrun", "-H", "X-Auth-Key: guessed", job.url]
        answer = subprocess.run(
            other_user.command(curl), capture_output=True, text=True, check=False, timeout=60, cwd="/"
        )
    assert job.returncode == 0, job.stderr
    assert answer.stdout.startswith("HTTP/1.1 401"), answer
    assert job.token not in answer.stdout
    assert "X-Auth-Token" not in answer.stdout and "X-Storage-Url" not in answer.stdout


GIVEN_TOKEN_JOB = """
rclone lsf "allas:$BUCKET" > "$OUT/before.txt" 2>&1; echo $? > "$OUT/before.rc"
while [ "$(date +%s)" -le "$EXPIRES" ]; do sleep 1; done
sleep 2
swift list "$BUCKET" > "$OUT/after.txt" 2>&1; echo $? > "$OUT/after.rc"
"""


def test_a_given_token_is_served_until_it_expires_and_then_clients_are_told_why(
    stack: Stack, home: Path, tmp_path: Path
) -> None:
    swift_round_only(stack, "the token service and Keystone only")
    make_bucket(stack, BUCKET)
    session = stack.user_session()
    token = session.get_token()
    assert token
    expires = session.auth.get_access(session).expires.timestamp()  # type: ignore[union-attr]
    env = _without_password(user_env(stack, home))
    env.update(
        OS_AUTH_TOKEN=token,
        OS_STORAGE_URL=stack.env["OS_STORAGE_URL"],
        OUT=str(tmp_path),
        BUCKET=BUCKET,
        EXPIRES=str(int(expires)),
    )
    result = allasrun(["--", "bash", "-c", GIVEN_TOKEN_JOB], env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "before.rc").read_text().strip() == "0", _read(tmp_path / "before.txt")
    after = (tmp_path / "after.txt").read_text()
    assert (tmp_path / "after.rc").read_text().strip() != "0", after
    assert "OS_AUTH_TOKEN expired at" in after and "not renewable" in after, after
    assert "the token from OS_AUTH_TOKEN expired at" in result.stderr
    assert "clients can no longer reach Allas" in result.stderr


# The namespace's only ephemeral port is held by a process of the user's; then allasrun starts.
FALLBACK_JOB = """
echo "40000 40000" > /proc/sys/net/ipv4/ip_local_port_range
coproc HOLD { exec python3 -c 'import socket, time
s = socket.create_server(("127.0.0.1", 0)); print(flush=True); time.sleep(600)'; }
read -r _ <&"${HOLD[0]}"
"$@"; status=$?
kill "$HOLD_PID"
exit $status
"""


def test_without_a_free_port_the_run_falls_back_to_its_files(stack: Stack, home: Path) -> None:
    """Port exhaustion, for real: in a network namespace of the user's whose one port is taken."""
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("unprivileged user and network namespaces are not allowed here")
    env = app_credential_env(stack, home)
    warm = allasrun(["--", "true"], env)  # a cached token: Keystone is out of reach in there
    assert warm.returncode == 0, warm.stderr
    show = 'cat "$RCLONE_CONFIG"; env | grep "^ST_" || true'
    argv = ["unshare", "-rn", "bash", "-c", FALLBACK_JOB, "fallback", *ALLASRUN, "--", "sh", "-c", show]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "cannot start the token service on 127.0.0.1 (Address already in use)" in result.stderr
    assert f"application_credential_id = {stack.env['MINI_ALLAS_APP_CRED_ID']}" in result.stdout
    assert "ST_AUTH" not in result.stdout and "auth_version = 1" not in result.stdout


NESTED = """
printf '%s' "$ST_AUTH" > "$OUT/outer.txt"
allasrun -- sh -c 'printf "%s" "$ST_AUTH" > "$OUT/inner.txt"; rclone lsf "allas:$BUCKET" > /dev/null'
"""


def test_a_nested_allasrun_uses_the_outer_runs_service(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, BUCKET)
    env = app_credential_env(stack, home)
    env.update(OUT=str(tmp_path), BUCKET=BUCKET)
    result = allasrun(["--", "bash", "-c", NESTED], env)
    assert result.returncode == 0, result.stderr
    outer = (tmp_path / "outer.txt").read_text()
    assert outer.startswith("http://127.0.0.1:") and outer == (tmp_path / "inner.txt").read_text()
    assert "reusing the token and files of the enclosing allasrun" in result.stderr
    assert result.stderr.count("clients re-authenticate at") == 1, result.stderr  # the outer's only

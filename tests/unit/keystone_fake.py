"""A fake Keystone v3 on requests_mock: tokens, validation and application credentials.

The unit tests of `TokenSource`, the keeper and the handover need Keystone's answers, and its
failures, without a server, and they count its requests. Every token and every credential
this fake issues is new (so a test can tell which login produced what, and a secret registered
with the log's redactor by an earlier test cannot make a later one pass), and `fail` makes one
kind of request answer an HTTP error or a refused connection until `heal`.

keystoneauth1.fixture.V3Token would build the token bodies, but importing keystoneauth1.fixture
needs the `fixtures` package, which the test extras do not install; a v3 body is small enough
to write here.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
import requests_mock

from allasrun.auth.identity import Identity, Password, Target
from allasrun.log import log

AUTH_URL = "http://keystone.example/v3"
STORAGE_URL = "http://swift.example/v1/AUTH_p"
USER_ID = "u-alice"
PROJECT_ID = "p-2001234"
PROJECT = "project_2001234"

REFUSED = 0  # for `fail`: the connection is refused instead of answered

TOKENS = "/v3/auth/tokens"
CREDENTIALS = re.compile(r"/v3/users/[^/]+/application_credentials$")
CREDENTIAL = re.compile(r"/v3/users/[^/]+/application_credentials/([^/]+)$")
EC2_KEYS = re.compile(r"/v3/users/[^/]+/credentials/OS-EC2$")
EC2_KEY = re.compile(r"/v3/users/[^/]+/credentials/OS-EC2/([^/]+)$")


def env_for(tmp_path: Path, **variables: str) -> dict[str, str]:
    """An OpenStack environment for the fake, with every allasrun directory under `tmp_path`."""
    env = {
        "OS_AUTH_URL": AUTH_URL,
        "OS_USERNAME": "alice",
        "OS_PROJECT_NAME": PROJECT,
        "ALLASRUN_CACHE_DIR": str(tmp_path / "cache"),
        "ALLASRUN_CONFIG_DIR": str(tmp_path / "config"),
    }
    env.update(variables)
    return {name: value for name, value in env.items() if value}


def app_credential_env(tmp_path: Path, secret: str = "cs") -> dict[str, str]:
    """`env_for` with the application credential `cid` (and no password)."""
    return env_for(tmp_path, OS_APPLICATION_CREDENTIAL_ID="cid", OS_APPLICATION_CREDENTIAL_SECRET=secret)


def capture_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """`caplog` for allasrun's logger, whether or not an earlier test ran `log.configure`.

    `configure` stops propagation; pytest (9 here) then attaches `caplog` to the logger
    itself, and propagating as well would record every message twice.
    """
    if caplog.handler not in log.handlers:
        monkeypatch.setattr(log, "propagate", True)
    caplog.set_level(logging.INFO, logger=log.name)
    return caplog


def password_identity(password: str = "pw") -> Identity:
    """A password identity for the fake's project, as `gather` would build it."""
    return Identity(Target(AUTH_URL, PROJECT, "alice"), Password(password))


def unique(prefix: str) -> str:
    """A value no other test has seen (nor registered with the log's redactor)."""
    return f"{prefix}-{uuid.uuid4().hex}"


@contextlib.contextmanager
def running(lifetime: float = 90.0) -> Iterator[FakeKeystone]:
    """A fake Keystone answering for as long as the `with` lasts (every other URL is refused)."""
    with requests_mock.Mocker(case_sensitive=True) as mocker:
        yield FakeKeystone(mocker, lifetime)


class FakeKeystone:
    """Keystone's token and application-credential API on a `requests_mock.Mocker`."""

    def __init__(self, mocker: requests_mock.Mocker, lifetime: float = 90.0) -> None:
        self.mocker = mocker
        self.lifetime = lifetime
        self.failing: dict[str, int] = {}  # "auth", "validate", "create", "delete": status or REFUSED
        self.methods: dict[str, str] = {}  # token -> how it was obtained
        self.created: list[str] = []  # application credential ids, in order
        self.deleted: list[str] = []
        self.ec2: dict[str, str] = {}  # S3 keys now held: access -> secret
        self.login_times: list[float] = []  # when each POST /auth/tokens arrived
        self.delay = 0.0  # seconds each login takes, so concurrent logins overlap
        mocker.post(AUTH_URL + "/auth/tokens", json=self._login)
        mocker.get(AUTH_URL + "/auth/tokens", json=self._validate)
        mocker.post(CREDENTIALS, json=self._create)
        mocker.delete(CREDENTIAL, json=self._delete)
        mocker.post(EC2_KEYS, json=self._create_ec2)
        mocker.delete(EC2_KEY, json=self._delete_ec2)

    def fail(self, kind: str, status: int) -> None:
        """Answer every `kind` request with HTTP `status` (or refuse it: REFUSED) until `heal`."""
        self.failing[kind] = status

    def heal(self) -> None:
        """Answer everything again."""
        self.failing.clear()

    def requests(self, method: str, path: str | re.Pattern[str] = TOKENS) -> list[requests_mock.Request]:
        """The requests made so far with this method to this path (or path pattern)."""
        return [
            request
            for request in self.mocker.request_history
            if request.method == method
            and (path.search(request.path) if isinstance(path, re.Pattern) else request.path == path)
        ]

    @property
    def logins(self) -> int:
        """How many times someone asked for a token (answered or not)."""
        return len(self.requests("POST"))

    def login_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every POST /auth/tokens so far."""
        return [request.json() for request in self.requests("POST")]

    def _refused_or_failed(self, kind: str, context: requests_mock.Context) -> Optional[dict[str, Any]]:
        status = self.failing.get(kind)
        if status is None:
            return None
        if status == REFUSED:
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        context.status_code = status
        return {"error": {"code": status, "title": "Fake", "message": f"fake {kind} failure"}}

    def _issue(self, context: requests_mock.Context, method: str, value: str, project: str) -> dict[str, Any]:
        context.status_code = 201 if method != "validate" else 200
        context.headers["X-Subject-Token"] = value
        self.methods[value] = method
        now = time.time()
        return {"token": _token_body(now, now + self.lifetime, method, project)}

    def _login(self, request: requests_mock.Request, context: requests_mock.Context) -> Any:
        self.login_times.append(time.time())
        time.sleep(self.delay)
        error = self._refused_or_failed("auth", context)
        if error is not None:
            return error
        auth = request.json()["auth"]
        method = auth["identity"]["methods"][0]
        project = auth.get("scope", {}).get("project", {}).get("name", PROJECT)
        return self._issue(context, method, unique("tok"), project)

    def _validate(self, request: requests_mock.Request, context: requests_mock.Context) -> Any:
        error = self._refused_or_failed("validate", context)
        if error is not None:
            return error
        return self._issue(context, "validate", request.headers["X-Subject-Token"], PROJECT)

    def _create(self, request: requests_mock.Request, context: requests_mock.Context) -> Any:
        error = self._refused_or_failed("create", context)
        if error is not None:
            return error
        context.status_code = 201
        credential_id = unique("cred")
        self.created.append(credential_id)
        body: Mapping[str, Any] = request.json()["application_credential"]
        return {"application_credential": {**body, "id": credential_id, "secret": unique("csecret")}}

    def _delete(self, request: requests_mock.Request, context: requests_mock.Context) -> Any:
        error = self._refused_or_failed("delete", context)
        if error is not None:
            return error
        match = CREDENTIAL.search(request.path)
        assert match is not None
        self.deleted.append(match.group(1))
        context.status_code = 204
        return None

    def _create_ec2(self, request: requests_mock.Request, context: requests_mock.Context) -> Any:
        refused = self._delegated(request, context)
        if refused is not None:
            return refused
        context.status_code = 201
        access, secret = unique("ec2access"), unique("ec2secret")
        self.ec2[access] = secret
        return {"credential": {"access": access, "secret": secret, "tenant_id": request.json()["tenant_id"]}}

    def _delete_ec2(self, request: requests_mock.Request, context: requests_mock.Context) -> Any:
        error = self._refused_or_failed("ec2", context) or self._delegated(request, context)
        if error is not None:
            return error
        match = EC2_KEY.search(request.path)
        assert match is not None
        context.status_code = 204 if self.ec2.pop(match.group(1), None) else 404
        return None

    def _delegated(
        self, request: requests_mock.Request, context: requests_mock.Context
    ) -> Optional[dict[str, Any]]:
        """Debian 12's Keystone: a token from an application credential may not touch EC2 keys."""
        if self.methods.get(request.headers["X-Auth-Token"]) != "application_credential":
            return None
        context.status_code = 403
        message = (
            "You are not authorized to perform the requested action: "
            "Delegated tokens cannot access credentials directly."
        )
        return {"error": {"code": 403, "title": "Forbidden", "message": message}}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _token_body(issued: float, expires: float, method: str, project: str) -> dict[str, Any]:
    domain = {"id": "default", "name": "Default"}
    endpoint = {"id": "e-1", "interface": "public", "region": "RegionOne", "region_id": "RegionOne"}
    return {
        "methods": [method],
        "issued_at": _iso(issued),
        "expires_at": _iso(expires),
        "user": {"id": USER_ID, "name": "alice", "domain": domain},
        "project": {"id": PROJECT_ID, "name": project, "domain": domain},
        "roles": [{"id": "r-1", "name": "member"}],
        "catalog": [
            {
                "id": "s-1",
                "type": "object-store",
                "name": "swift",
                "endpoints": [{**endpoint, "url": STORAGE_URL}],
            }
        ],
    }

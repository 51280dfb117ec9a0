"""Talking to Keystone v3: turning a secret into a token, and managing job credentials.

The only module that imports keystoneauth1 (about 100 ms of imports), so a run that starts
from a cached token never pays for it. Each call authenticates afresh through the plugin
rather than a Session's cached token: a Session re-authenticates whenever fewer than 120 s
are left, which the keeper's own schedule already decides better.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn, Optional, Union

from keystoneauth1 import access
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.access.access import AccessInfo, AccessInfoV3
from keystoneauth1.identity import v3

from allasrun import __version__
from allasrun.auth.identity import AppCredential, ExistingToken, Password, Secret, Target
from allasrun.auth.s3keys import S3Keys
from allasrun.auth.token import Token
from allasrun.errors import (
    AuthenticationFailed,
    KeystoneUnreachable,
    NoObjectStore,
    UsageError,
)

TIMEOUT = 30.0
DELEGATED = (
    "Delegated tokens cannot access credentials directly"  # Keystone's 403 to an app credential's token
)


def authenticate(target: Target, secret: Secret) -> Token:
    """Get a new project-scoped token and the Swift storage URL from its catalog.

    An existing token is validated instead: Keystone refuses to exchange a token that came
    from an application credential for another one, but tells its owner when it expires.
    """
    try:
        if isinstance(secret, ExistingToken):
            auth = _validate(target, secret)
        else:
            auth = _plugin(target, secret).get_auth_ref(_session())
    except ks_exc.ClientException as error:
        _raise_mapped(error, target, "authenticate")
    if not isinstance(auth, AccessInfoV3) or auth.expires is None or auth.auth_token is None:
        raise KeystoneUnreachable(f"Keystone at {target.auth_url} returned no usable v3 token")
    storage_url = target.storage_url
    if storage_url is None and isinstance(secret, ExistingToken):
        storage_url = secret.storage_url
    if storage_url is None:
        storage_url = _storage_url(auth, target)
    issued = auth.issued.timestamp() if auth.issued else datetime.now(timezone.utc).timestamp()
    return Token(
        value=auth.auth_token,
        issued_at=issued,
        expires_at=auth.expires.timestamp(),
        storage_url=storage_url,
        project_id=auth.project_id or "",
        user_id=auth.user_id or "",
        renewable=not isinstance(secret, ExistingToken),
    )


@dataclass(frozen=True)
class Check:
    """What Keystone says of a token we hold: whether it still accepts it, and its clock."""

    accepted: bool
    keystone_time: Optional[float]  # Keystone's clock when it answered (its Date header), if shown


def check_token(target: Target, token: Token) -> Check:
    """Ask Keystone whether it still accepts `token` (the token validating itself), and its time.

    A user may validate their own token. Any 4xx (expired, revoked, or a policy that forbids
    it) counts as a refusal: the caller then authenticates, which is always right. A token
    Keystone accepts comes with its clock if the answer has a `Date` header (a web server in
    front of Keystone adds one; uwsgi alone does not). KeystoneUnreachable if it cannot answer.
    """
    headers = {"X-Auth-Token": token.value, "X-Subject-Token": token.value}
    url = target.auth_url.rstrip("/") + "/auth/tokens"
    try:
        response = _session().get(url, headers=headers, raise_exc=False)
    except ks_exc.ClientException as error:
        _raise_mapped(error, target, "validate the cached token")
    if 400 <= response.status_code < 500:
        return Check(False, None)
    if response.status_code != 200:
        raise KeystoneUnreachable(
            f"Keystone at {target.auth_url} answered HTTP {response.status_code} to validate the cached token"
        )
    return Check(True, _http_date(response.headers.get("Date")))


def _http_date(text: Optional[str]) -> Optional[float]:
    """POSIX seconds of an HTTP Date header; None if there is none or it is malformed.

    The header has whole seconds: half a second is added, the mean of what was cut off.
    """
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp() + 0.5
    except (TypeError, ValueError):
        return None


def create_app_credential(
    target: Target, token: Token, name: str, expires_at: float, description: str
) -> AppCredential:
    """Create a restricted application credential (it cannot create further credentials).

    Its expiry bounds the damage if the job dies before it can revoke it.
    """
    expiry = datetime.fromtimestamp(expires_at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    body = {
        "application_credential": {
            "name": name,
            "description": description,
            "expires_at": expiry,
            "unrestricted": False,
        }
    }
    response = _request(target, token, "POST", f"/users/{token.user_id}/application_credentials", body)
    created = response.json()["application_credential"]
    return AppCredential(created["id"], created["secret"], f"created for this run ({name})")


def delete_app_credential(target: Target, token: Token, credential_id: str) -> None:
    """Revoke an application credential; tokens issued from it stop working at once.

    One that is already gone (deleted, or expired and purged) counts as revoked.
    """
    path = f"/users/{token.user_id}/application_credentials/{credential_id}"
    _request(target, token, "DELETE", path, missing_ok=True)


def create_s3_keys(target: Target, token: Token) -> S3Keys:
    """New EC2 credentials (S3 keys) for the token's user and project.

    Only a password's token may: Keystone answers any application credential's with 403
    ("Delegated tokens cannot access credentials directly", measured on Debian 12's Keystone),
    so keys bound to an application credential cannot be made. The keys open the whole project
    until they are deleted, and radosgw keeps accepting a key it has used until the Keystone
    token it cached for it expires (90 s in the lab, up to a token's life on Allas).
    """
    body = {"tenant_id": token.project_id}
    response = _request(target, token, "POST", f"/users/{token.user_id}/credentials/OS-EC2", body)
    created = response.json()["credential"]
    return S3Keys(
        created["access"], created["secret"], f"S3 keys {created['access']} made for this run", None
    )


def delete_s3_keys(target: Target, token: Token, access: str) -> None:
    """Delete EC2 credentials; keys already gone count as deleted."""
    _request(target, token, "DELETE", f"/users/{token.user_id}/credentials/OS-EC2/{access}", missing_ok=True)


def _request(
    target: Target,
    token: Token,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    missing_ok: bool = False,
) -> Any:
    session = _session()
    url = target.auth_url.rstrip("/") + path
    try:
        return session.request(url, method, headers={"X-Auth-Token": token.value}, json=body)
    except ks_exc.NotFound as error:
        if missing_ok:
            return None
        _raise_mapped(error, target, f"{method} {path}")
    except ks_exc.ClientException as error:
        _raise_mapped(error, target, f"{method} {path}")


def _session() -> ks_session.Session:
    """A session whose User-Agent says `allasrun/VERSION`, so Keystone's log tells our logins apart."""
    return ks_session.Session(timeout=TIMEOUT, app_name="allasrun", app_version=__version__)


def _validate(target: Target, secret: ExistingToken) -> AccessInfo:
    """Ask Keystone about a token we hold (GET /v3/auth/tokens): expiry, project, catalog."""
    session = _session()
    headers = {"X-Auth-Token": secret.value, "X-Subject-Token": secret.value}
    response = session.get(target.auth_url.rstrip("/") + "/auth/tokens", headers=headers)
    return access.create(resp=response, body=response.json())


def _plugin(target: Target, secret: Union[AppCredential, Password]) -> v3.Auth:
    if isinstance(secret, AppCredential):
        return v3.ApplicationCredential(
            auth_url=target.auth_url,
            application_credential_id=secret.id,
            application_credential_secret=secret.secret,
        )
    if target.project_name is None:
        raise UsageError(
            "OS_PROJECT_NAME is not set: name the Allas project (for example "
            "export OS_PROJECT_NAME=project_2001234)"
        )
    return v3.Password(
        auth_url=target.auth_url,
        username=target.username,
        password=secret.value,
        user_domain_name=target.user_domain,
        project_name=target.project_name,
        project_domain_name=target.project_domain,
    )


def _storage_url(auth: AccessInfoV3, target: Target) -> str:
    where = f"interface {target.interface!r}" + (f", region {target.region!r}" if target.region else "")
    try:
        url = auth.service_catalog.url_for(
            service_type="object-store", interface=target.interface, region_name=target.region
        )
    except (ks_exc.EndpointNotFound, ks_exc.EmptyCatalog):
        url = None
    if not url:
        raise NoObjectStore(
            f"the Keystone catalog at {target.auth_url} has no object-store endpoint for {where}; "
            "pass --storage-url to name it"
        )
    return url


def _raise_mapped(error: ks_exc.ClientException, target: Target, action: str) -> NoReturn:
    """Turn keystoneauth's exceptions into allasrun's, with the URL and user but no secret."""
    if isinstance(error, ks_exc.Unauthorized):
        raise AuthenticationFailed(
            f"Keystone refused {target.describe()} (HTTP 401): wrong password or application "
            "credential, unknown user or project, or an expired secret"
        ) from None
    if isinstance(error, ks_exc.Forbidden) and DELEGATED in str(error.message):
        raise AuthenticationFailed(
            f"Keystone forbade {target.describe()} to {action}: a token from an application credential "
            "may not manage S3 keys (EC2 credentials); use the password (OS_PASSWORD)"
        ) from None
    if isinstance(error, ks_exc.Forbidden):
        raise AuthenticationFailed(
            f"Keystone forbade {target.describe()} to {action}: {error.message}"
        ) from None
    if isinstance(error, ks_exc.HttpError):
        raise KeystoneUnreachable(
            f"Keystone at {target.auth_url} answered HTTP {error.http_status} to {action}: {error.message}"
        ) from None
    if isinstance(error, ks_exc.ConnectionError):
        raise KeystoneUnreachable(f"cannot reach Keystone at {target.auth_url}: {error}") from None
    raise KeystoneUnreachable(f"Keystone at {target.auth_url} failed to {action}: {error}") from None

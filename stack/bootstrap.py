#!/usr/bin/python3
"""Python steps of ``stack/mini-allas``: the local Keystone v3 + Swift ("mini-Allas").

Runs under Debian's ``/usr/bin/python3`` with Debian's packages (python3-swift,
python3-keystoneclient, python3-keystoneauth1), never in the project's venv.
Each subcommand is one step of ``mini-allas start``:

``free-ports N``
    print N distinct free TCP ports on 127.0.0.1;
``rings STATE``
    build the one-device, one-replica account/container/object rings;
``keystone STATE``
    create projects, users, roles, the object-store service and endpoints, the
    user's application credential and EC2 credential, through Keystone's API;
``env STATE``
    write ``STATE/env``, the ``export NAME=value`` lines the clients source.

``STATE/stack.conf`` (written by the shell script: ports, passwords, names,
token lifetime) is the input; ``STATE/bootstrap.json`` holds what Keystone
returned (ids and secrets). Both files, and ``STATE/env``, are mode 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

KEYSTONE_DOMAIN = "default"
REGION = "RegionOne"
APP_CRED_NAME = "mini-allas"
RING_PART_POWER = 6


def read_stack_conf(state: Path) -> dict[str, str]:
    """Parse ``STATE/stack.conf``: ``NAME=value`` lines, values shell-quoted."""
    conf: dict[str, str] = {}
    for line in (state / "stack.conf").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words:
            name, _, value = words[0].partition("=")
            conf[name] = value
    return conf


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now.

    All sockets are held open until every port is known, so the ports differ;
    another process may still take one before the servers bind it.
    """
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def build_rings(state: Path) -> None:
    """Build account, container and object rings with one device ``d1`` each.

    Uses Swift's RingBuilder in this process (about 0.5 s, against about 4 s for
    nine ``swift-ring-builder`` runs).
    """
    from swift.common.ring import RingBuilder  # type: ignore[import-not-found, import-untyped, unused-ignore]

    conf = read_stack_conf(state)
    swift_dir = state / "swift"
    for kind in ("account", "container", "object"):
        builder = RingBuilder(RING_PART_POWER, 1, 0)
        builder.add_dev(
            {
                "id": 0,
                "region": 1,
                "zone": 1,
                "ip": "127.0.0.1",
                "port": int(conf[f"{kind.upper()}_PORT"]),
                "device": "d1",
                "weight": 100.0,
                "meta": "",
            }
        )
        builder.rebalance()
        builder.save(str(swift_dir / f"{kind}.builder"))
        builder.get_ring().save(str(swift_dir / f"{kind}.ring.gz"))


def authenticate(auth_url: str, user: str, password: str, project: str) -> Any:
    """Authenticate once by password, project-scoped; return keystoneauth's AccessInfo.

    With token lifetimes of 120 s or less a keystoneauth Password session would
    re-authenticate before every request (``MIN_TOKEN_LIFE_SECONDS``), so the
    token is taken once and reused through :func:`client_for`.
    """
    from keystoneauth1 import session  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from keystoneauth1.identity import v3  # type: ignore[import-not-found, import-untyped, unused-ignore]

    auth = v3.Password(
        auth_url=auth_url,
        username=user,
        password=password,
        project_name=project,
        user_domain_id=KEYSTONE_DOMAIN,
        project_domain_id=KEYSTONE_DOMAIN,
    )
    return auth.get_access(session.Session())


def client_for(auth_url: str, token: str) -> Any:
    """Return a keystoneclient v3 Client that sends ``token`` to ``auth_url``."""
    from keystoneauth1 import session, token_endpoint
    from keystoneclient.v3 import client  # type: ignore[import-not-found, import-untyped, unused-ignore]

    sess = session.Session(auth=token_endpoint.Token(auth_url, token))
    return client.Client(session=sess)


def create_user_in_project(
    ks: Any, roles: dict[str, str], user: str, password: str, project: str, role: str
) -> tuple[str, str]:
    """Create ``project`` and ``user`` in the default domain and grant ``role``.

    ``roles`` maps role names to ids. Ids (not keystoneclient objects) are
    passed on, since the objects fetch themselves again lazily. Returns
    ``(user_id, project_id)``.
    """
    project_id = ks.projects.create(name=project, domain=KEYSTONE_DOMAIN).id
    user_id = ks.users.create(
        name=user, domain=KEYSTONE_DOMAIN, password=password, default_project=project_id
    ).id
    ks.roles.grant(roles[role], user=user_id, project=project_id)
    return user_id, project_id


def register_swift(ks: Any, proxy_port: str) -> None:
    """Register service ``swift`` (object-store) with public/internal/admin endpoints."""
    service_id = ks.services.create(name="swift", type="object-store", description="mini-Allas Swift").id
    url = f"http://127.0.0.1:{proxy_port}/v1/AUTH_%(project_id)s"
    for interface in ("public", "internal", "admin"):
        ks.endpoints.create(service=service_id, url=url, interface=interface, region=REGION)


def create_user_credentials(ks: Any, user_id: str, project_id: str) -> dict[str, str]:
    """As the user: create application credential ``mini-allas`` and an EC2 credential.

    The application credential has Keystone's defaults: restricted (it cannot
    manage other application credentials) and no expiry.
    """
    app_cred = ks.application_credentials.create(
        name=APP_CRED_NAME, user=user_id, description="mini-Allas test credential"
    )
    ec2 = ks.ec2.create(user_id, project_id)
    return {
        "app_cred_id": app_cred.id,
        "app_cred_secret": app_cred.secret,
        "ec2_access": ec2.access,
        "ec2_secret": ec2.secret,
    }


def bootstrap_keystone(state: Path) -> None:
    """Create everything the stack needs in Keystone; save ids and secrets.

    Runs after ``keystone-manage bootstrap`` (admin user, project and role,
    roles member and reader, identity endpoints) with Keystone serving.
    Writes ``STATE/bootstrap.json``.
    """
    conf = read_stack_conf(state)
    auth_url = f"http://127.0.0.1:{conf['KS_PORT']}/v3"
    admin = authenticate(auth_url, "admin", conf["ADMIN_PASSWORD"], "admin")
    ks_admin = client_for(auth_url, admin.auth_token)

    roles = {role.name: role.id for role in ks_admin.roles.list()}
    create_user_in_project(ks_admin, roles, "swift", conf["SWIFT_PASSWORD"], "service", "admin")
    user_id, project_id = create_user_in_project(
        ks_admin, roles, conf["USER_NAME"], conf["USER_PASSWORD"], conf["PROJECT_NAME"], "member"
    )
    register_swift(ks_admin, conf["PROXY_PORT"])

    user = authenticate(auth_url, conf["USER_NAME"], conf["USER_PASSWORD"], conf["PROJECT_NAME"])
    result = {"user_id": user_id, "project_id": project_id}
    result |= create_user_credentials(client_for(auth_url, user.auth_token), user_id, project_id)
    write_private(state / "bootstrap.json", json.dumps(result, indent=2) + "\n")


def env_lines(state: Path) -> list[tuple[str, str]]:
    """Return the (name, value) pairs of ``STATE/env``, in order."""
    conf = read_stack_conf(state)
    ids = json.loads((state / "bootstrap.json").read_text())
    swift_url = f"http://127.0.0.1:{conf['PROXY_PORT']}"
    return [
        ("OS_AUTH_URL", f"http://127.0.0.1:{conf['KS_PORT']}/v3"),
        ("OS_IDENTITY_API_VERSION", "3"),
        ("OS_AUTH_TYPE", "password"),
        ("OS_USERNAME", conf["USER_NAME"]),
        ("OS_PASSWORD", conf["USER_PASSWORD"]),
        ("OS_PROJECT_NAME", conf["PROJECT_NAME"]),
        ("OS_PROJECT_ID", ids["project_id"]),
        ("OS_USER_DOMAIN_NAME", "Default"),
        ("OS_PROJECT_DOMAIN_NAME", "Default"),
        ("OS_REGION_NAME", REGION),
        ("OS_INTERFACE", "public"),
        ("OS_STORAGE_URL", f"{swift_url}/v1/AUTH_{ids['project_id']}"),
        ("MINI_ALLAS_STATE", str(state)),
        ("MINI_ALLAS_SWIFT_URL", swift_url),
        ("MINI_ALLAS_TOKEN_TTL", conf["TOKEN_TTL"]),
        ("MINI_ALLAS_USER_ID", ids["user_id"]),
        ("MINI_ALLAS_APP_CRED_ID", ids["app_cred_id"]),
        ("MINI_ALLAS_APP_CRED_SECRET", ids["app_cred_secret"]),
        ("MINI_ALLAS_EC2_ACCESS", ids["ec2_access"]),
        ("MINI_ALLAS_EC2_SECRET", ids["ec2_secret"]),
        ("MINI_ALLAS_ADMIN_PASSWORD", conf["ADMIN_PASSWORD"]),
        ("MINI_ALLAS_KEYSTONE_LOG", str(state / "log" / "keystone.log")),
    ]


def write_env(state: Path) -> None:
    """Write ``STATE/env`` (mode 0600): ``export NAME=value``, values shell-quoted.

    The application credential is deliberately not exported as
    ``OS_APPLICATION_CREDENTIAL_*``: next to OS_USERNAME/OS_PASSWORD it would
    confuse clients that read the environment.
    """
    lines = [f"export {name}={shlex.quote(value)}\n" for name, value in env_lines(state)]
    write_private(state / "env", "# written by stack/mini-allas start; source it\n" + "".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``bootstrap.py STEP ARG``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("free-ports", help="print N free ports").add_argument("count", type=int)
    for step in ("rings", "keystone", "env"):
        sub.add_parser(step).add_argument("state", type=Path)
    args = parser.parse_args(argv)

    if args.step == "free-ports":
        print(" ".join(str(p) for p in free_ports(args.count)))
    elif args.step == "rings":
        build_rings(args.state.resolve())
    elif args.step == "keystone":
        bootstrap_keystone(args.state.resolve())
    elif args.step == "env":
        write_env(args.state.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

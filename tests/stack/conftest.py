"""The real services for these tests: Keystone + Swift (stack/mini-allas) and Slurm (stack/mini-slurm).

tests/run starts both once and passes their env files in MINI_ALLAS_ENV and MINI_SLURM_ENV
(shared by the pytest-xdist workers); without them, this session starts private ones and
stops them after. tests/run, as root, runs pytest as the ordinary user (MINI_USER), so
permissions hold; a developer's run as root acts as that user (and the second one) with runuser.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.stackutil import ROOT, OrdinaryUser, Slurm, Stack, read_env_file


@contextlib.contextmanager
def _service(
    factory: pytest.TempPathFactory, script: str, variable: str, *options: str
) -> Iterator[dict[str, str]]:
    given = os.environ.get(variable)
    if given:
        yield read_env_file(Path(given))
        return
    state = factory.mktemp(script)
    subprocess.run(["bash", str(ROOT / "stack" / script), "start", *options, str(state)], check=True)
    try:
        yield read_env_file(state / "env")
    finally:
        subprocess.run(["bash", str(ROOT / "stack" / script), "stop", str(state)], check=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _service(tmp_path_factory, "mini-allas", "MINI_ALLAS_ENV") as env:
        yield Stack(env)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    with _service(tmp_path_factory, "mini-slurm", "MINI_SLURM_ENV") as env:
        yield Slurm(env)


@pytest.fixture(scope="session")
def slurm2(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[Slurm]:
    """Two slurmd nodes in their own network namespaces, each with its own $TMPDIR (root only)."""
    if os.geteuid() != 0 and not os.environ.get("MINI_SLURM2_ENV"):
        pytest.skip("a two-node Slurm needs network namespaces, which need root")
    forward = ("--forward", os.environ.get("MINI_ALLAS_ENV", ""))
    with _service(tmp_path_factory, "mini-slurm", "MINI_SLURM2_ENV", "--nodes", "2", *forward) as env:
        yield Slurm(env)


@pytest.fixture(scope="session")
def ordinary_user() -> OrdinaryUser:
    """The user stack/with-stack made (MINI_USER), with allasrun in a venv it can run."""
    name, python = os.environ.get("MINI_USER"), os.environ.get("MINI_USER_PYTHON")
    if not name or not python:
        pytest.skip("no ordinary user to run jobs as (stack/with-stack --slurm makes one as root)")
    return OrdinaryUser(name, python)


@pytest.fixture(scope="session")
def other_user(ordinary_user: OrdinaryUser) -> OrdinaryUser:
    """A second user on the same node (MINI_OTHER_USER), who must never read the first one's files.

    Root acts as it with runuser; the ordinary user with the sudo rule stack/with-stack writes.
    """
    name = os.environ.get("MINI_OTHER_USER") or "allasrun-other"
    try:
        pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no second user {name!r} on this machine (stack/with-stack --slurm makes one as root)")
    other = OrdinaryUser(name, ordinary_user.python)
    if not other.can_act():
        pytest.skip(f"cannot act as {name}: neither root nor allowed by with-stack's sudo rule")
    return other


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private home for one test: its own token cache, login file and run directories."""
    path = tmp_path / "home"
    path.mkdir()
    return path

"""The real stack for these tests: Keystone + Swift from stack/mini-allas, Debian's rclone.

tests/run starts one stack and passes its env file in MINI_ALLAS_ENV (shared by pytest-xdist
workers); without it, this session starts a private stack of its own and stops it after.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack.stackutil import ROOT, Slurm, Stack, read_env_file


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    given = os.environ.get("MINI_ALLAS_ENV")
    if given:
        yield Stack(read_env_file(Path(given)))
        return
    state = tmp_path_factory.mktemp("mini-allas")
    subprocess.run(["bash", str(ROOT / "stack/mini-allas"), "start", str(state)], check=True)
    try:
        yield Stack(read_env_file(state / "env"))
    finally:
        subprocess.run(["bash", str(ROOT / "stack/mini-allas"), "stop", str(state)], check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private home for one test: its own token cache, login file and run directories."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    given = os.environ.get("MINI_SLURM_ENV")
    if given:
        yield Slurm(read_env_file(Path(given)))
        return
    state = tmp_path_factory.mktemp("mini-slurm")
    subprocess.run(["bash", str(ROOT / "stack/mini-slurm"), "start", str(state)], check=True)
    try:
        yield Slurm(read_env_file(state / "env"))
    finally:
        subprocess.run(["bash", str(ROOT / "stack/mini-slurm"), "stop", str(state)], check=False)

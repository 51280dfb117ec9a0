"""Where the run directories go: a foreign, missing or symlinked place is refused or avoided, never used.

The unit tier may run as root, which can enter any directory: ownership is judged against
`os.geteuid()`, which these tests move to a uid that owns nothing here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

import pytest

from allasrun import paths
from allasrun.errors import LocalFileError, UnsafeFile


def _someone_else(monkeypatch: pytest.MonkeyPatch, path: Path) -> int:
    """Make `path`'s owner someone other than us, whoever runs the tests."""
    owner = path.stat().st_uid
    me = owner + 4242
    monkeypatch.setattr(os, "geteuid", lambda: me)
    return me


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    os.chmod(path, 0o700)
    return path


def test_a_missing_xdg_runtime_dir_falls_back_to_tmpdir(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "nonexistent"), "TMPDIR": str(tmp_path / "tmp")}
    base = paths.runtime_dir(env)
    assert base == tmp_path / "tmp" / f"allasrun-{os.geteuid()}"
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert not (tmp_path / "nonexistent").exists()


def test_a_usable_xdg_runtime_dir_is_used(tmp_path: Path) -> None:
    xdg = _private(tmp_path / "xdg")
    assert paths.runtime_dir({"XDG_RUNTIME_DIR": str(xdg), "TMPDIR": str(tmp_path)}) == xdg / "allasrun"


def test_an_xdg_runtime_dir_of_someone_else_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = _private(tmp_path / "xdg")
    me = _someone_else(monkeypatch, xdg)
    env = {"XDG_RUNTIME_DIR": str(xdg), "TMPDIR": str(tmp_path / "tmp")}
    with contextlib.suppress(UnsafeFile):  # the fallback we make is not "ours" under the fake uid
        assert paths.runtime_dir(env) == tmp_path / "tmp" / f"allasrun-{me}"
    assert not (xdg / "allasrun").exists()


def test_an_xdg_runtime_dir_others_can_enter_falls_back(tmp_path: Path) -> None:
    xdg = _private(tmp_path / "xdg")
    os.chmod(xdg, 0o755)
    base = paths.runtime_dir({"XDG_RUNTIME_DIR": str(xdg), "TMPDIR": str(tmp_path / "tmp")})
    assert base == tmp_path / "tmp" / f"allasrun-{os.geteuid()}"


def test_a_symlinked_xdg_runtime_dir_falls_back(tmp_path: Path) -> None:
    real = _private(tmp_path / "real")
    (tmp_path / "xdg").symlink_to(real)
    base = paths.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "TMPDIR": str(tmp_path / "tmp")})
    assert base == tmp_path / "tmp" / f"allasrun-{os.geteuid()}"
    assert not (real / "allasrun").exists()


def test_a_precreated_fallback_of_someone_else_is_refused_as_unsafe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    me = _someone_else(monkeypatch, tmp)
    planted = tmp / f"allasrun-{me}"  # made by the real test user: someone else to `me`
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    with pytest.raises(UnsafeFile) as raised:
        paths.runtime_dir({"TMPDIR": str(tmp)})
    assert raised.value.exit_code == 78
    assert str(planted) in str(raised.value)
    assert "\n" not in str(raised.value)
    assert stat.S_IMODE(planted.stat().st_mode) == 0o777  # not chmodded on the way to the refusal


def test_a_symlink_in_place_of_the_fallback_is_refused_and_not_followed(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    (tmp / f"allasrun-{os.geteuid()}").symlink_to(target)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        paths.runtime_dir({"TMPDIR": str(tmp)})
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # never chmodded through the link
    assert list(target.iterdir()) == []


def test_a_dangling_symlink_in_place_of_the_fallback_is_refused(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / f"allasrun-{os.geteuid()}").symlink_to(tmp_path / "not-yet")
    with pytest.raises(UnsafeFile, match="symbolic link"):
        paths.runtime_dir({"TMPDIR": str(tmp)})
    assert not (tmp_path / "not-yet").exists()


def test_owned_private_dir_refuses_a_directory_of_someone_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chmod(theirs, 0o755)
    _someone_else(monkeypatch, theirs)
    with pytest.raises(UnsafeFile, match="owned by another user") as raised:
        paths.owned_private_dir(theirs)
    assert str(theirs) in str(raised.value)
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755


def test_owned_private_dir_tightens_our_own_directory(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    os.chmod(ours, 0o755)
    assert paths.owned_private_dir(ours) == ours
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700


def test_an_explicit_runtime_dir_that_cannot_be_made_is_one_local_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(LocalFileError) as raised:
        paths.runtime_dir({"ALLASRUN_RUNTIME_DIR": str(tmp_path / "run")})
    assert raised.value.exit_code == 73
    assert "Permission denied" in str(raised.value)

"""What a directive names and where it lands: globs, object selection, the escape guard, local files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from allasrun.staging.plan import StageIn
from allasrun.staging.select import glob_regex, inside, local_files, local_path, select_objects
from allasrun.staging.store import RemoteObject

NAMES = ["data.txt", "data/a.txt", "data/sub/b.txt", "database/c.txt", "logs/x.log"]


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "data/a.txt", False),  # `*` stays within one segment
        ("data/?.txt", "data/a.txt", True),
        ("data/?.txt", "data/ab.txt", False),
        ("data?a.txt", "data/a.txt", False),  # so does `?`
        ("**.txt", "data/sub/b.txt", True),  # `**` crosses segments
        ("data/**/b.txt", "data/sub/deeper/b.txt", True),
        ("[ab].txt", "b.txt", True),
        ("[!a].txt", "b.txt", True),
        ("[!a].txt", "a.txt", False),
        ("a.txt", "abtxt", False),  # regex metacharacters in names are literal
        ("(x)+$^|{1}.txt", "(x)+$^|{1}.txt", True),
        ("(x)+.*", "xx.txt", False),
    ],
)
def test_glob_regex(pattern: str, name: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(name)) is matches


def select(key: str) -> tuple[list[str], str, bool]:
    """select_objects on what a store lists for the spec's prefix, as names."""
    spec = StageIn("job.sh:1", "bkt", key, "in/")
    listed = [RemoteObject(name, 1, "0" * 32) for name in NAMES if name.startswith(spec.listing_prefix)]
    chosen, base, single = select_objects(spec, listed)
    return [o.name for o in chosen], base, single


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("data.txt", (["data.txt"], "data.txt", True)),  # an exact object wins
        ("data/a.txt", (["data/a.txt"], "data/a.txt", True)),
        ("data", (["data/a.txt", "data/sub/b.txt"], "data/", False)),  # a directory, not `database/`
        ("data/", (["data/a.txt", "data/sub/b.txt"], "data/", False)),
        ("", (NAMES, "", False)),  # the whole bucket
        ("data/*.txt", (["data/a.txt"], "data/", False)),
        ("data/**.txt", (["data/a.txt", "data/sub/b.txt"], "data/", False)),
        ("dat*/*.txt", (["data/a.txt", "database/c.txt"], "", False)),
        ("*.txt", (["data.txt"], "", False)),
        ("nothing", ([], "nothing/", False)),
    ],
)
def test_select_objects(key: str, expected: tuple[list[str], str, bool]) -> None:
    assert select(key) == expected


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "a/..", "/etc/passwd", ""])
def test_inside_refuses_escapes(tmp_path: Path, name: str) -> None:
    assert inside(tmp_path, name) is None


@pytest.mark.parametrize(
    ("name", "parts"), [("a", ("a",)), ("a/b/c.txt", ("a", "b", "c.txt")), ("..a", ("..a",))]
)
def test_inside_accepts_nested_names(tmp_path: Path, name: str, parts: tuple[str, ...]) -> None:
    assert inside(tmp_path, name) == tmp_path.joinpath(*parts)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """out/x1.txt, out/x2.log, out/sub/deep/y.txt, lone.txt; in out/, links to a directory and to nothing."""
    for name in ("out/x1.txt", "out/x2.log", "out/sub/deep/y.txt", "elsewhere/z.txt", "lone.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "out" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "out" / "dangling").symlink_to(tmp_path / "gone")
    return tmp_path


def relative(text: str, workdir: Path) -> list[tuple[str, str]]:
    return [(p.relative_to(workdir).as_posix(), r) for p, r in local_files(local_path(text, workdir), text)]


def test_local_files_single_file(tree: Path) -> None:
    assert relative("lone.txt", tree) == [("lone.txt", "")]


def test_local_files_directory_recursive_regular_files_only(tree: Path) -> None:
    assert relative("out", tree) == [
        ("out/sub/deep/y.txt", "sub/deep/y.txt"),
        ("out/x1.txt", "x1.txt"),
        ("out/x2.log", "x2.log"),
    ]


def test_local_files_glob_keeps_paths_below_its_fixed_part(tree: Path) -> None:
    assert relative("out/x*", tree) == [("out/x1.txt", "x1.txt"), ("out/x2.log", "x2.log")]


def test_local_files_nothing(tree: Path) -> None:
    assert relative("missing", tree) == []
    assert relative("out/*.csv", tree) == []


def test_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    workdir = tmp_path / "job"
    assert local_path("~/x.txt", workdir) == tmp_path / "home" / "x.txt"
    assert local_path("res/x.txt", workdir) == workdir / "res" / "x.txt"
    assert local_path("./", workdir) == workdir
    assert local_path(os.fspath(tmp_path / "abs"), workdir) == tmp_path / "abs"

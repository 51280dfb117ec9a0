"""What a directive names and where it lands: globs, object selection, the escape guard, local files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from allasrun.staging.plan import StageIn
from allasrun.staging.select import (
    glob_regex,
    inside,
    local_files,
    local_path,
    select_objects,
    without_companions,
)
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
        ("a[]b", "a[]b", True),  # an empty set is no set: `[` is literal, as in the shell
        ("a[!]b", "a[!]b", True),
        ("[]]", "]", True),  # a `]` first in a set is a member
        ("[!]]", "a", True),
        ("[z-a]", "[z-a]", True),  # a range that cannot be one: literal too
        ("[\\]", "\\", True),  # regex escapes in a set are literal characters
        ("[a^]", "^", True),
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


@pytest.mark.parametrize(
    ("names", "kept"),
    [
        (["d.tar", "d.tar_ameta", "f.zst", "f.zst_ameta"], ["d.tar", "f.zst"]),  # a-put's pairs
        (["sub/d.tar", "sub/d.tar_ameta", "sub/e.txt"], ["sub/d.tar", "sub/e.txt"]),
        (["notes_ameta", "x.txt"], ["notes_ameta", "x.txt"]),  # no object of its own: a file
        (["d.tar_ameta", "e.tar_ameta"], ["d.tar_ameta", "e.tar_ameta"]),  # a glob `*_ameta` asked
        (["d.tar_ameta_ameta", "d.tar_ameta", "d.tar"], ["d.tar"]),
    ],
)
def test_a_put_companions_are_left_out(names: list[str], kept: list[str]) -> None:
    chosen, left_out = without_companions([RemoteObject(n, 1, "0" * 32) for n in names])
    assert [o.name for o in chosen] == kept
    assert left_out == len(names) - len(kept)


@pytest.mark.parametrize(
    "name",
    ["..", "../x", "a/../../x", "a/..", "/etc/passwd", "", ".", "./x", "data/.", "a/./b", "a//b", "a/"],
)
def test_inside_refuses_escapes(tmp_path: Path, name: str) -> None:
    assert inside(tmp_path, name) is None


@pytest.mark.parametrize(
    ("name", "parts"), [("a", ("a",)), ("a/b/c.txt", ("a", "b", "c.txt")), ("..a", ("..a",))]
)
def test_inside_accepts_nested_names(tmp_path: Path, name: str, parts: tuple[str, ...]) -> None:
    assert inside(tmp_path, name) == tmp_path.joinpath(*parts)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """out/x1.txt, out/x2.log, out/sub/deep/y.txt, lone.txt, and in out/ links of every kind.

    Out of the tree: to a directory, to a private file, to nothing. In it: to a file, to a
    directory, and two to out/ itself (a glob that followed them would never end).
    """
    for name in ("out/x1.txt", "out/x2.log", "out/sub/deep/y.txt", "elsewhere/z.txt", "lone.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    out = tmp_path / "out"
    (out / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (out / "secret").symlink_to("../elsewhere/z.txt")
    (out / "dangling").symlink_to(tmp_path / "gone")
    (out / "alias.txt").symlink_to("sub/deep/y.txt")
    (out / "sub" / "up").symlink_to("..", target_is_directory=True)
    (out / "sub" / "deep" / "again").symlink_to(out, target_is_directory=True)
    return tmp_path


def relative(text: str, workdir: Path) -> list[tuple[str, str]]:
    """What a stage-out source names: each file as found and its name below the source."""
    files, _ = local_files(local_path(text, workdir), text)
    return [(f.path.relative_to(workdir).as_posix(), f.relative) for f in files]


def unfollowed(text: str, workdir: Path) -> dict[str, bool]:
    """The links a stage-out source does not follow, and whether each is refused."""
    _, links = local_files(local_path(text, workdir), text)
    return {link.path.relative_to(workdir).as_posix(): link.refused for link in links}


def test_local_files_single_file(tree: Path) -> None:
    assert relative("lone.txt", tree) == [("lone.txt", "")]


def test_local_files_named_link_is_followed(tree: Path) -> None:
    """The user named it: the link is the source, and what it names is what is read."""
    (tree / "named").symlink_to(tree / "elsewhere" / "z.txt")
    (found,), links = local_files(tree / "named", "named")
    assert (found.path, found.relative, found.real, links) == (
        tree / "named",
        "",
        tree / "elsewhere/z.txt",
        [],
    )


def test_local_files_directory_recursive_links_stay_in_the_tree(tree: Path) -> None:
    assert relative("out", tree) == [
        ("out/alias.txt", "alias.txt"),
        ("out/sub/deep/y.txt", "sub/deep/y.txt"),
        ("out/x1.txt", "x1.txt"),
        ("out/x2.log", "x2.log"),
    ]
    files, _ = local_files(tree / "out", "out")
    assert files[0].real == tree / "out" / "sub" / "deep" / "y.txt"  # a link's content, under its name
    assert {f.tree for f in files} == {tree / "out"}
    assert unfollowed("out", tree) == {
        "out/dangling": True,  # out of the tree, whatever it names
        "out/linked": True,
        "out/secret": True,
        "out/sub/deep/again": False,  # a directory in the tree: its files are there already
        "out/sub/up": False,
    }


def test_local_files_link_reasons_name_the_target(tree: Path) -> None:
    _, links = local_files(tree / "out", "out")
    reasons = {link.path.name: link.reason for link in links}
    assert reasons["secret"] == f"a symbolic link to {tree / 'elsewhere/z.txt'}, outside {tree / 'out'}"
    assert reasons["up"] == f"a symbolic link to the directory {tree / 'out'} in the tree: not followed"


def test_local_files_tree_reached_through_a_link(tree: Path) -> None:
    """A source directory that is itself a link is the tree; links into it from inside stay in."""
    (tree / "via").symlink_to(tree / "out", target_is_directory=True)
    assert ("via/alias.txt", "alias.txt") in relative("via", tree)
    assert unfollowed("via", tree)["via/secret"] is True


def test_local_files_glob_names_below_its_fixed_part(tree: Path) -> None:
    """`out/*` and `out/x*` name files alike: relative to `out/`, as stage-in does."""
    assert relative("out/x*", tree) == [("out/x1.txt", "x1.txt"), ("out/x2.log", "x2.log")]
    assert relative("out/*.txt", tree) == [("out/alias.txt", "alias.txt"), ("out/x1.txt", "x1.txt")]
    assert relative("*.txt", tree) == [("lone.txt", "lone.txt")]
    assert relative("./out/s*", tree) == [("out/sub/deep/y.txt", "sub/deep/y.txt")]  # a directory matched
    assert unfollowed("out/*.txt", tree) == {}
    assert unfollowed("out/s*", tree) == {
        "out/secret": True,
        "out/sub/deep/again": False,
        "out/sub/up": False,
    }


def test_local_files_glob_double_star_crosses_levels_without_following_links(tree: Path) -> None:
    assert relative("out/**.txt", tree) == [
        ("out/alias.txt", "alias.txt"),
        ("out/sub/deep/y.txt", "sub/deep/y.txt"),
        ("out/x1.txt", "x1.txt"),
    ]
    assert relative("out/**/y.txt", tree) == [("out/sub/deep/y.txt", "sub/deep/y.txt")]


def test_local_files_glob_enters_no_linked_directory(tree: Path) -> None:
    assert relative("out/*/deep/*.txt", tree) == [("out/sub/deep/y.txt", "sub/deep/y.txt")]
    assert relative("out/*/z.txt", tree) == []  # out/linked/z.txt, through a link out of the tree
    assert relative("out/**z.txt", tree) == []


def test_local_files_nothing(tree: Path) -> None:
    assert relative("missing", tree) == []
    assert relative("out/*.csv", tree) == []
    assert relative("missing/*.csv", tree) == []


def test_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    workdir = tmp_path / "job"
    assert local_path("~/x.txt", workdir) == tmp_path / "home" / "x.txt"
    assert local_path("res/x.txt", workdir) == workdir / "res" / "x.txt"
    assert local_path("./", workdir) == workdir
    assert local_path(os.fspath(tmp_path / "abs"), workdir) == tmp_path / "abs"

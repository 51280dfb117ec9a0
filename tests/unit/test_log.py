"""The log line: secrets masked, and other people's bytes shown, never acted on by the terminal."""

from __future__ import annotations

import logging
from typing import Callable

import pytest

from allasrun import log as logsetup

Fresh = Callable[..., logging.Logger]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Fresh:
    """allasrun's log configured anew, put back as it was after the test (other tests use it).

    Called in the test, so that its handler writes to capsys's stderr, the stderr of that moment.
    """
    log = logsetup.log
    monkeypatch.setattr(log, "handlers", [])  # `configure` replaces the handlers in this list
    monkeypatch.setattr(log, "propagate", log.propagate)
    monkeypatch.setattr(log, "level", log.level)

    def make(verbosity: int = 0) -> logging.Logger:
        logsetup.configure(verbosity)
        return log

    return make


def only_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line logged: a name must not have split it."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_name_with_a_newline_cannot_forge_a_line(fresh: Fresh, capsys: pytest.CaptureFixture[str]) -> None:
    fresh().info("stage-in of %s failed", "x\nallasrun: 2026-11-30T00:00:00Z stage-in: all done\r")
    line = only_line(capsys)
    assert line.endswith("stage-in of x\\nallasrun: 2026-11-30T00:00:00Z stage-in: all done\\r failed")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),  # clear screen
        ("\x07\x00\x7f\x85", "\\x07\\x00\\x7f\\x85"),  # bell, NUL, DEL, a C1 control
        ("\u202egnp.exe", "\\u202egnp.exe"),  # right-to-left override: shows as exe.png
        ("\udcff", "\\udcff"),  # a non-UTF-8 file name's byte: stderr could not encode it
        ("tab\there", "tab\\there"),
        ("räksmörgås ✓ 日本", "räksmörgås ✓ 日本"),  # printable text stays as it is
    ],
    ids=["escape", "c0-c1", "bidi", "surrogate", "tab", "printable"],  # xdist cannot send a surrogate id
)
def test_control_characters_are_escaped(
    fresh: Fresh, capsys: pytest.CaptureFixture[str], raw: str, shown: str
) -> None:
    fresh().warning("name %s", raw)
    line = only_line(capsys)
    assert line.endswith(f"name {shown}")


def test_a_secret_next_to_control_characters_is_still_masked(
    fresh: Fresh, capsys: pytest.CaptureFixture[str]
) -> None:
    logsetup.hide("s3cr\net-value")
    fresh().error("got \x1bs3cr\net-value\x1b")
    line = only_line(capsys)
    assert line.endswith("got \\x1b***\\x1b")


def test_a_traceback_under_verbose_keeps_its_lines(fresh: Fresh, capsys: pytest.CaptureFixture[str]) -> None:
    log = fresh(1)
    try:
        raise ValueError("bad\x1b")
    except ValueError:
        log.debug("the defect's traceback:", exc_info=True)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and len(err.splitlines()) > 3

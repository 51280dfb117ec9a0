"""Reading `#ALLAS` lines from a job script's header, the way sbatch reads `#SBATCH`.

Only syntax is checked here (verbs, argument counts, option names and values); meaning
(substitutions, bucket names, local paths) is the stage plan's job.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from allasrun.errors import DirectiveError
from allasrun.slurm.sbatchline import header_length, lines_of

VERBS = ("stage-in", "stage-out", "option")
WHEN = ("success", "failure", "always")
LARGE = ("segments", "multipart")  # the form of a large object over S3: Swift's segments, or S3's parts
SETTINGS = (
    "project",
    "threads",
    "segment-size",
    "retries",
    "report",
    "progress",
    "stage-out-lead",
    "grace",
    "deadline-signal",
    "protocol",
    "keys-expire",
    "bundles",
)
_PREFIX = re.compile(r"#ALLAS(\s|$)")


@dataclass(frozen=True)
class Directive:
    """One `#ALLAS` line: its verb, positional arguments and `--options`."""

    where: str
    text: str
    verb: str
    args: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)

    def fail(self, message: str) -> DirectiveError:
        """An error about this line, to raise."""
        return DirectiveError(self.where, message, self.text)


def parse(text: str, path: str) -> tuple[list[Directive], list[str]]:
    """The directives of a script's header, and warnings for `#ALLAS` lines after it.

    The header ends where sbatch's does (`header_length`), and lines are counted as it counts them.
    """
    directives: list[Directive] = []
    warnings: list[str] = []
    lines = lines_of(text)
    header = header_length(lines)
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not _PREFIX.match(stripped):
            continue
        where = f"{path}:{number}"
        if number > header:
            warnings.append(f"{where}: #ALLAS after the first command is ignored: {stripped}")
            continue
        directives.append(_directive(where, stripped))
    return directives, warnings


def _directive(where: str, line: str) -> Directive:
    try:
        words = shlex.split(line[len("#ALLAS") :], comments=True)
    except ValueError as error:
        raise DirectiveError(where, f"cannot split the line ({error})", line) from None
    if not words:
        raise DirectiveError(where, f"missing verb (one of {', '.join(VERBS)})", line)
    verb, rest = words[0], words[1:]
    if verb not in VERBS:
        raise DirectiveError(where, f"unknown verb {verb!r} (expected one of {', '.join(VERBS)})", line)
    args = tuple(word for word in rest if not word.startswith("--"))
    options = dict(_option(where, line, word) for word in rest if word.startswith("--"))
    directive = Directive(where, line, verb, args, options)
    _check(directive)
    return directive


def _option(where: str, line: str, word: str) -> tuple[str, str]:
    name, _, value = word[2:].partition("=")
    if not name:
        raise DirectiveError(where, f"bad option {word!r}", line)
    return name, value


def _check(directive: Directive) -> None:
    """Argument counts and option names/values for each verb."""
    if directive.verb == "stage-in":
        _count(directive, 1, 2, "SOURCE [DESTINATION]")
        _allowed(directive, {"node-local": None, "ameta": None, "unpack": None})
    elif directive.verb == "stage-out":
        _count(directive, 2, 2, "SOURCE DESTINATION")
        options = {"when": WHEN, "no-overwrite": None, "node-local": None, "large": LARGE, "pack": None}
        _allowed(directive, {**options, "compress": None})
        if "compress" in directive.options and "pack" not in directive.options:
            raise directive.fail("--compress goes with --pack (a-put's .tar.zst)")
    else:
        _count(directive, 1, len(SETTINGS), "NAME=VALUE ...")
        _allowed(directive, {})
        for word in directive.args:
            name, equals, value = word.partition("=")
            if name not in SETTINGS or not equals or not value:
                raise directive.fail(
                    f"bad setting {word!r} (expected NAME=VALUE, NAME one of {', '.join(SETTINGS)})"
                )


def _count(directive: Directive, low: int, high: int, usage: str) -> None:
    if not low <= len(directive.args) <= high:
        raise directive.fail(f"{directive.verb} takes {usage}, got {len(directive.args)} argument(s)")


def _allowed(directive: Directive, allowed: dict[str, Optional[tuple[str, ...]]]) -> None:
    for name, value in directive.options.items():
        if name not in allowed:
            known = ", ".join(f"--{option}" for option in allowed) or "none"
            raise directive.fail(f"unknown option --{name} for {directive.verb} (allowed: {known})")
        choices = allowed[name]
        if choices is None and value:
            raise directive.fail(f"--{name} takes no value")
        if choices is not None and value not in choices:
            raise directive.fail(f"--{name} must be one of {', '.join(choices)}, not {value!r}")

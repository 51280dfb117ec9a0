"""Reading an sbatch command line and job script the way sbatch does (pure, no I/O).

allasrun sbatch passes every option through untouched; it only needs to know which word is
the script, the time limit (for the credential's expiry), and where the header ends.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

# sbatch options that take no value, or an optional one only after `=` (--nice[=N],
# --propagate[=RLIMIT], --exclusive[=user], --get-user-env[=T]); every other option without
# `=` takes the next word.
FLAGS = {
    "--parsable", "--wait", "-W", "--hold", "-H", "--exclusive", "--requeue", "--no-requeue",
    "--test-only", "--quiet", "-Q", "--overcommit", "-O", "--contiguous", "--spread-job",
    "--use-min-nodes", "--ignore-pbs", "--no-kill", "-k", "--verbose", "-v", "--help", "-h",
    "--usage", "--version", "-V", "--get-user-env", "--oversubscribe", "-s", "--reboot",
    "--nice", "--propagate",
}  # fmt: skip
_BLANKS = " \t\n\v\f\r"  # isspace() in the C locale, as sbatch tests it before a `#`
_SHELLS = re.compile(r"(^|/)(env\s+)?(ba|z|k|da)?sh\b")


@dataclass(frozen=True)
class CommandLine:
    """sbatch's options, the script (None with --wrap) and the script's own arguments."""

    options: tuple[str, ...]
    script: Optional[str]
    arguments: tuple[str, ...]

    def has(self, *flags: str) -> bool:
        """Whether any of these value-less options was given (`--wait`, `-W`)."""
        return any(word in flags for word in self.options)

    def option(self, *names: str) -> Optional[str]:
        """The value of the last of these options given (`--time=5`, `--time 5`, `-t5`, `-t 5`)."""
        found = None
        words = list(self.options)
        for index, word in enumerate(words):
            for name in names:
                if word == name and index + 1 < len(words):
                    found = words[index + 1]
                elif word.startswith(name + "=") and name.startswith("--"):
                    found = word[len(name) + 1 :]
                elif len(name) == 2 and word.startswith(name) and len(word) > 2 and not word.startswith("--"):
                    found = word[2:]
        return found


def split(argv: Sequence[str]) -> CommandLine:
    """Options up to the first word that is not an option or an option's value."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        takes_value = word not in FLAGS and "=" not in word and not _short_with_value(word)
        index += 2 if takes_value else 1
    options = tuple(argv[: min(index, len(argv))])
    rest = argv[index:]
    if any(w == "--wrap" or w.startswith("--wrap=") for w in options):
        return CommandLine(options, None, tuple(rest))
    return CommandLine(options, rest[0] if rest else None, tuple(rest[1:]))


def _short_with_value(word: str) -> bool:
    return len(word) > 2 and word[1] != "-"


def time_limit(line: CommandLine, script_text: str) -> Optional[float]:
    """The job's time limit in seconds, from the command line or `#SBATCH` lines."""
    given = setting(line, script_text, "--time", "-t")
    return parse_time(given) if given else None


def setting(line: CommandLine, script_text: str, *names: str) -> Optional[str]:
    """An option's value as sbatch settles it: the command line first, then the `#SBATCH` lines."""
    given = line.option(*names)
    if given is None:
        for header in _sbatch_lines(script_text):
            given = split(header).option(*names) or given
    return given


def given(line: CommandLine, script_text: str, *names: str) -> bool:
    """Whether any of these options is set, as a flag or with a value, on the command line or in `#SBATCH`."""
    lines = [line, *(split(header) for header in _sbatch_lines(script_text))]
    return any(one.has(*names) or one.option(*names) is not None for one in lines)


def exporting(
    line: CommandLine, script_text: str, env_export: Optional[str], names: Sequence[str]
) -> CommandLine:
    """The command line with `names` added to an `--export` that does not pass the whole environment.

    `--export=NONE` or `--export=A,B` (on the command line, in SBATCH_EXPORT or in `#SBATCH`)
    would keep the job from ever seeing its credentials file; the command line wins over the
    other two, so the widened list goes there.
    """
    given = line.option("--export") or env_export or setting(line, script_text, "--export")
    if given is None or given == "ALL" or given.startswith("ALL,"):
        return line
    listed = [] if given == "NONE" else given.split(",")
    wanted = [*listed, *(name for name in names if name not in {item.split("=")[0] for item in listed})]
    kept: list[str] = []
    words = list(line.options)
    for index, word in enumerate(words):
        if word == "--export" or word.startswith("--export=") or (index and words[index - 1] == "--export"):
            continue
        kept.append(word)
    return CommandLine((*kept, "--export=" + ",".join(wanted)), line.script, line.arguments)


def parse_time(text: str) -> Optional[float]:
    """Slurm's formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for UNLIMITED or nonsense."""
    days, _, rest = text.partition("-") if "-" in text else ("0", "", text)
    parts = rest.split(":")
    try:
        numbers = [int(days), *(int(p) for p in parts)]
    except ValueError:
        return None
    if "-" in text:  # D-H[:M[:S]]
        d, h, m, s = ([*numbers, 0, 0, 0])[:4]
    elif len(parts) == 3:
        d, (h, m, s) = 0, numbers[1:]
    else:  # M or M:S
        d, h, (m, s) = 0, 0, ([*numbers[1:], 0])[:2]
    return float(((d * 24 + h) * 60 + m) * 60 + s)


def lines_of(text: str) -> list[str]:
    """A script's lines as sbatch and the shell count them: split at line feeds only.

    `str.splitlines` also splits at form feeds, NEL and U+2028 (among others), which neither
    counts: an error would name the wrong line, and the guard could land inside a comment.
    """
    return text.split("\n")


def header_length(lines: Sequence[str]) -> int:
    """How many lines a job script's header has, `#!` line included.

    sbatch reads `#SBATCH` (and allasrun `#ALLAS`) up to the first line that is neither
    blank nor a comment, skipping only C's blanks before the `#`: a line starting with a
    no-break space is a command to sbatch and to the shell.
    """
    return next((i for i, line in enumerate(lines) if line.lstrip(_BLANKS)[:1] not in ("", "#")), len(lines))


def _sbatch_lines(text: str) -> list[list[str]]:
    lines = lines_of(text)
    header = (line.strip() for line in lines[: header_length(lines)])
    return [_words(line[len("#SBATCH") :]) for line in header if line.startswith("#SBATCH")]


def _words(text: str) -> list[str]:
    """An `#SBATCH` line's words; one shlex cannot split (`--job-name=bob's`) is split at blanks.

    sbatch reads such a line anyway (an open quote runs to the end of the line), and allasrun
    only looks in it for --time, --export, --clusters and --hold.
    """
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return text.partition(" #")[0].split()


def is_shell_script(text: str) -> bool:
    """Whether the script runs under a POSIX shell (no #! line means /bin/sh, as sbatch)."""
    first = text.split("\n", 1)[0]
    return not first.startswith("#!") or bool(_SHELLS.search(first[2:].strip()))


def wrapped(text: str, guard: str) -> str:
    """The script with `guard` inserted before its first command, after every #SBATCH line."""
    lines = lines_of(text)
    at = min(len(text), sum(len(line) + 1 for line in lines[: header_length(lines)]))
    head = text[:at] if text[:at].endswith("\n") or not at else text[:at] + "\n"
    return head + guard + "\n" + text[at:]

"""Handing a job to sbatch: the batch step wrapped to run under allasrun, sbatch's output passed on.

The only module that runs sbatch. Every option the user gave reaches sbatch untouched;
the script is copied with one guard line that makes its batch step `allasrun run` itself.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from allasrun.errors import EXIT_NOT_FOUND
from allasrun.log import log
from allasrun.slurm.sbatchline import CommandLine, wrapped

# The interpreter that runs this allasrun, so the job finds the same one on the compute node.
ALLASRUN = f"{shlex.quote(sys.executable)} -m allasrun"


@dataclass(frozen=True)
class Submitted:
    """What sbatch said: its exit status, and the job and cluster its output named ("" if none)."""

    returncode: int
    job_id: str = ""
    cluster: str = ""


def submit(
    line: CommandLine,
    script_text: Optional[str],
    env: Mapping[str, str],
    on_job: Callable[[Submitted], object] = lambda submitted: None,
) -> Submitted:
    """Run the real sbatch on the wrapped script; `on_job` hears of the job as soon as sbatch names it.

    sbatch's output is passed on as it comes: with `--wait` the job id is printed long before
    sbatch returns, and the caller records it then. With `-Q` sbatch prints no id, so it is
    asked for one (`--parsable`) that is not passed on.
    """
    quiet = line.has("-Q", "--quiet")
    options = [w for w in line.options if w not in ("-Q", "--quiet")] + (["--parsable"] if quiet else [])
    with tempfile.TemporaryDirectory(prefix="allasrun-sbatch-") as scratch:
        if script_text is None:  # --wrap: the wrapped command runs under allasrun too
            command = ["sbatch", *rewrap(options), *line.arguments]
        else:
            # The batch step runs under allasrun; inside it, ALLASRUN_DIR lets the script through.
            guard = f'[ -n "${{ALLASRUN_DIR:-}}" ] || exec {ALLASRUN} run "$0" "$@"'
            copy = Path(scratch) / Path(str(line.script)).name  # same name: same default job name
            copy.write_text(wrapped(script_text, guard), encoding="utf-8")
            command = ["sbatch", *options, str(copy), *line.arguments]
        try:
            process = subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, text=True)
        except OSError as error:
            log.error("cannot run sbatch: %s", error.strerror)
            return Submitted(EXIT_NOT_FOUND)
        found = Submitted(0)
        with process:
            assert process.stdout is not None
            for text in process.stdout:
                named = None if found.job_id else job_named(text)
                if named is not None:
                    found = named
                    on_job(named)
                if not (quiet and named is not None):
                    sys.stdout.write(text)
                    sys.stdout.flush()
    return replace(found, returncode=process.returncode)


def job_named(text: str) -> Optional[Submitted]:
    """The job in one line of sbatch's output: `Submitted batch job ID[ on cluster C]` or `ID[;C]`.

    Any other line (a site wrapper's notice, say) names no job, so no wrong id is recorded.
    """
    found = _SUBMITTED.match(text.strip()) or _PARSABLE.match(text.strip())
    return Submitted(0, found.group(1), found.group(2) or "") if found else None


_SUBMITTED = re.compile(r"^Submitted batch job (\d+)(?: on cluster (\S+))?$")
_PARSABLE = re.compile(r"^(\d+)(?:;(\S+))?$")


def rewrap(options: list[str]) -> list[str]:
    """Sbatch options with every `--wrap` command run under allasrun."""
    out = []
    for index, word in enumerate(options):
        if word.startswith("--wrap="):
            out.append(f"--wrap=exec {ALLASRUN} -- sh -c {shlex.quote(word[len('--wrap=') :])}")
        elif index > 0 and options[index - 1] == "--wrap":
            out.append(f"exec {ALLASRUN} -- sh -c {shlex.quote(word)}")
        else:
            out.append(word)
    return out

"""Handing a job to sbatch: the batch step wrapped to run under allasrun, sbatch's output passed on.

The only module that runs sbatch. Every option the user gave reaches sbatch untouched;
the script is copied with one guard line that makes its batch step `allasrun run` itself.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from allasrun.errors import EXIT_NOT_FOUND
from allasrun.log import log
from allasrun.slurm.sbatchline import CommandLine, wrapped

# The interpreter that runs this allasrun, so the job finds the same one on the compute node.
ALLASRUN = f"{shlex.quote(sys.executable)} -m allasrun"


def submit(line: CommandLine, script_text: Optional[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run the real sbatch on the wrapped script: its exit status and the job id ("" if none)."""
    options = list(line.options)
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
            result = subprocess.run(command, env=dict(env), capture_output=True, text=True, check=False)
        except OSError as error:
            log.error("cannot run sbatch: %s", error.strerror)
            return EXIT_NOT_FOUND, ""
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    out = result.stdout.strip()
    if result.returncode != 0 or not out:
        return result.returncode, ""
    # `--parsable` prints `ID[;cluster]`, otherwise `Submitted batch job ID`.
    return result.returncode, out.split(";")[0] if line.has("--parsable") else out.split()[-1]


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

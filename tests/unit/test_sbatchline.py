"""Finding the script, the time limit and the header in sbatch command lines and scripts."""

from __future__ import annotations

import pytest

from allasrun.slurm.sbatchline import is_shell_script, parse_time, split, time_limit, wrapped


def test_script_after_options_of_every_form() -> None:
    line = split(["--parsable", "-t", "10", "--job-name", "x", "--array=1-3", "-n4", "job.sh", "a", "-b"])
    assert line.script == "job.sh"
    assert line.arguments == ("a", "-b")
    assert line.option("--time", "-t") == "10"
    assert line.option("--array") == "1-3"
    assert line.option("--ntasks", "-n") == "4"


def test_wrap_has_no_script() -> None:
    line = split(["--wrap", "echo hi"])
    assert (line.script, line.option("--wrap")) == (None, "echo hi")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 300),
        ("5:30", 330),
        ("1:00:00", 3600),
        ("2-12", 216000),
        ("1-0:30:15", 88215),
        ("UNLIMITED", None),
    ],
)
def test_slurm_time_formats(text: str, seconds: float | None) -> None:
    assert parse_time(text) == seconds


def test_time_limit_from_the_script_header() -> None:
    script = "#!/bin/bash\n#SBATCH --job-name=a\n#SBATCH -t 2:00:00\necho\n#SBATCH --time=5\n"
    assert time_limit(split(["job.sh"]), script) == 7200
    assert time_limit(split(["--time=10", "job.sh"]), script) == 600


def test_shell_detection() -> None:
    assert is_shell_script("#!/bin/bash\n")
    assert is_shell_script("#!/usr/bin/env bash\n")
    assert is_shell_script("echo no shebang\n")
    assert not is_shell_script("#!/usr/bin/env python3\n")


def test_guard_goes_after_the_header() -> None:
    script = "#!/bin/bash\n#SBATCH -t 5\n\n#ALLAS stage-in b1x/a\nrun this\nand this\n"
    assert (
        wrapped(script, "GUARD")
        == "#!/bin/bash\n#SBATCH -t 5\n\n#ALLAS stage-in b1x/a\nGUARD\nrun this\nand this\n"
    )
    assert wrapped("#!/bin/sh\n#SBATCH -t 5", "GUARD") == "#!/bin/sh\n#SBATCH -t 5\nGUARD\n"

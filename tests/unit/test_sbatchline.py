"""Finding the script, the time limit and the header in sbatch command lines and scripts."""

from __future__ import annotations

import pytest

from allasrun.slurm.sbatchline import (
    exporting,
    given,
    is_shell_script,
    parse_time,
    setting,
    split,
    time_limit,
    wrapped,
)


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


@pytest.mark.parametrize("option", ["--nice", "--propagate", "--exclusive", "--get-user-env"])
def test_an_option_with_an_optional_value_never_takes_the_script(option: str) -> None:
    line = split([option, "job.sh", "arg"])
    assert (line.options, line.script, line.arguments) == ((option,), "job.sh", ("arg",))
    assert split([f"{option}=5", "job.sh"]).script == "job.sh"


NAMES = ["ALLASRUN_CREDENTIALS", "OS_AUTH_URL"]


@pytest.mark.parametrize(
    ("argv", "header", "env_export", "expected"),
    [
        (["--export=NONE"], "", None, "--export=ALLASRUN_CREDENTIALS,OS_AUTH_URL"),
        (["--export", "A,B=1"], "", None, "--export=A,B=1,ALLASRUN_CREDENTIALS,OS_AUTH_URL"),
        (["--export=A,OS_AUTH_URL"], "", None, "--export=A,OS_AUTH_URL,ALLASRUN_CREDENTIALS"),
        ([], "#SBATCH --export=NONE\n", None, "--export=ALLASRUN_CREDENTIALS,OS_AUTH_URL"),
        ([], "", "NONE", "--export=ALLASRUN_CREDENTIALS,OS_AUTH_URL"),
        (["--export=ALL"], "#SBATCH --export=NONE\n", None, None),  # the command line wins
        (["--export=ALL,A=1"], "", None, None),
        ([], "", None, None),
    ],
    ids=["none", "list", "listed-already", "header", "env", "all-wins", "all-plus", "default"],
)
def test_a_narrow_export_still_passes_what_the_job_needs(
    argv: list[str], header: str, env_export: str | None, expected: str | None
) -> None:
    line = split([*argv, "-t", "5", "job.sh"])
    widened = exporting(line, f"#!/bin/sh\n{header}true\n", env_export, NAMES)
    if expected is None:
        assert widened == line
        return
    assert [w for w in widened.options if w.startswith("--export")] == [expected]
    assert "-t" in widened.options and widened.script == "job.sh"
    assert not {"A,B=1", "NONE"} & set(widened.options)  # the old value went with its option


def test_setting_takes_the_command_line_then_the_header() -> None:
    script = "#!/bin/sh\n#SBATCH -M mahti\ntrue\n"
    assert setting(split(["job.sh"]), script, "--clusters", "-M") == "mahti"
    assert setting(split(["--clusters=lumi", "job.sh"]), script, "--clusters", "-M") == "lumi"


def test_given_finds_flags_and_values_on_the_line_and_in_the_header() -> None:
    script = "#!/bin/sh\n#SBATCH --hold\n#SBATCH -d afterok:5\ntrue\n"
    assert given(split(["job.sh"]), script, "--hold", "-H")
    assert given(split(["job.sh"]), script, "--dependency", "-d")
    assert given(split(["--begin=now+1day", "job.sh"]), "", "--begin", "-b")
    assert not given(split(["job.sh"]), script, "--begin", "-b")

"""What `allasrun sbatch` hands to sbatch: the wrapped script or --wrap, options untouched.

A stand-in `sbatch` on PATH records its argv and the script it was given, so the wrapping
is checked as sbatch would see it, without a Slurm.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from allasrun.errors import EXIT_NOT_FOUND
from allasrun.slurm import sbatchline, submit

FAKE_SBATCH = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD/argv"
for word; do case "$word" in *.sh) [ -f "$word" ] && cp "$word" "$RECORD/script";; esac; done
echo "${REPLY_LINE:-Submitted batch job 4242}"
"""


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH)
    sbatch.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "RECORD": str(tmp_path)}


def _argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_text().splitlines()


def test_script_gets_a_guard_before_its_first_command_and_options_pass_through(
    tmp_path: Path, fake_env: dict[str, str]
) -> None:
    text = "#!/bin/bash\n#SBATCH -t 10\n\n#ALLAS stage-in b/x\necho hello\n"
    line = sbatchline.split(["-J", "name", "--hold", "job.sh", "arg1"])
    assert submit.submit(line, text, fake_env) == submit.Submitted(0, "4242")
    argv = _argv(tmp_path)
    assert argv[:3] == ["-J", "name", "--hold"]
    assert argv[3].endswith("/job.sh") and argv[4:] == ["arg1"]  # same name: same default job name
    lines = (tmp_path / "script").read_text().splitlines()
    guard = lines.index(next(line for line in lines if "ALLASRUN_DIR" in line))
    assert lines[:guard] == text.splitlines()[:4] and lines[guard + 1] == "echo hello"
    assert f"exec {submit.ALLASRUN} run" in lines[guard]


def test_parsable_output_with_a_cluster_name_gives_the_job_id(
    tmp_path: Path, fake_env: dict[str, str]
) -> None:
    fake_env["REPLY_LINE"] = "777;cluster2"
    line = sbatchline.split(["--parsable", "job.sh"])
    assert submit.submit(line, "#!/bin/sh\ntrue\n", fake_env) == submit.Submitted(0, "777", "cluster2")


def test_wrap_runs_the_wrapped_command_under_allasrun(tmp_path: Path, fake_env: dict[str, str]) -> None:
    line = sbatchline.split(["--wrap", "rclone lsf allas: | wc -l", "-t", "5"])
    assert line.script is None
    submit.submit(line, None, fake_env)
    argv = _argv(tmp_path)
    wrapped = argv[argv.index("--wrap") + 1]
    assert wrapped == f"exec {submit.ALLASRUN} -- sh -c {shlex.quote('rclone lsf allas: | wc -l')}"
    assert argv[-2:] == ["-t", "5"]
    equals = submit.rewrap(["--wrap=hostname"])
    assert equals == [f"--wrap=exec {submit.ALLASRUN} -- sh -c hostname"]


def test_the_wrapped_guard_runs_the_script_under_allasrun_only_once(tmp_path: Path) -> None:
    """The guard line, run by a real shell: outside allasrun it execs allasrun; inside, it passes."""
    script = tmp_path / "job.sh"
    script.write_text(
        sbatchline.wrapped("#!/bin/sh\necho body\n", '[ -n "${ALLASRUN_DIR:-}" ] || exec echo wrapped "$0"')
    )
    outside = subprocess.run(["sh", str(script)], capture_output=True, text=True, env={}, check=True)
    inside = subprocess.run(
        ["sh", str(script)], capture_output=True, text=True, env={"ALLASRUN_DIR": "/x"}, check=True
    )
    assert outside.stdout == f"wrapped {script}\n"
    assert inside.stdout == "body\n"


def test_a_missing_sbatch_is_exit_127_not_a_traceback(tmp_path: Path) -> None:
    line = sbatchline.split(["job.sh"])
    env = {"PATH": str(tmp_path)}  # no sbatch here
    assert submit.submit(line, "#!/bin/sh\ntrue\n", env) == submit.Submitted(EXIT_NOT_FOUND)
    assert not os.path.exists(tmp_path / "argv")


@pytest.mark.parametrize(
    ("output", "job", "cluster"),
    [
        ("Submitted batch job 4242\n", "4242", ""),
        ("Submitted batch job 4242 on cluster mahti\n", "4242", "mahti"),
        ("4242;mahti\n", "4242", "mahti"),
        ("Submitted batch job 4242\nRemember to cite the cluster: doi 10.1/x 99\n", "4242", ""),
        ("site notice: queue is busy\nSubmitted batch job 4242\n", "4242", ""),
        ("sbatch: warning: something 77\n", "", ""),
        ("", "", ""),
    ],
    ids=["plain", "on-cluster", "parsable-cluster", "line-after", "line-before", "no-id", "nothing"],
)
def test_the_job_id_is_read_from_sbatchs_own_line_only(
    tmp_path: Path, fake_env: dict[str, str], output: str, job: str, cluster: str
) -> None:
    fake = Path(fake_env["PATH"].split(":")[0]) / "sbatch"
    fake.write_text(f"#!/bin/sh\nprintf %s {shlex.quote(output)}\n")
    heard: list[submit.Submitted] = []
    found = submit.submit(sbatchline.split(["job.sh"]), "#!/bin/sh\ntrue\n", fake_env, heard.append)
    assert (found.job_id, found.cluster) == (job, cluster)
    assert [h.job_id for h in heard] == ([job] if job else [])


def test_quiet_asks_sbatch_for_the_id_and_passes_nothing_on(
    tmp_path: Path, fake_env: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    found = submit.submit(sbatchline.split(["-Q", "job.sh"]), "#!/bin/sh\ntrue\n", fake_env)
    argv = _argv(tmp_path)
    assert "-Q" not in argv and "--parsable" in argv
    assert found.job_id == "4242"
    assert capfd.readouterr().out == ""

"""The command line's shape: `allasrun [OPTIONS] -- CMD` means exec; errors become one line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from allasrun import cli
from allasrun.errors import EXIT_CONFIG, EXIT_LOCAL_FILE, EXIT_SOFTWARE, EXIT_USAGE


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--", "rclone", "lsf"], ["exec", "--", "rclone", "lsf"]),
        (["--renew-margin", "60", "--", "true"], ["exec", "--renew-margin", "60", "--", "true"]),
        (["run", "job.sh", "a"], ["exec", "--run-script", "job.sh", "a"]),
        (["check", "job.sh"], ["check", "job.sh"]),
        (["sbatch", "-t", "5", "job.sh"], ["sbatch", "-t", "5", "job.sh"]),
        (["--help"], ["--help"]),
        (["--version"], ["--version"]),
        ([], []),
    ],
)
def test_a_command_line_without_a_subcommand_runs_exec(argv: list[str], expected: list[str]) -> None:
    assert cli._with_default_command(argv) == expected


def test_an_allasrun_error_is_one_line_and_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No credentials at all, no terminal: 78 and one `error:` line, no traceback."""
    for name in (
        "OS_PASSWORD",
        "OS_AUTH_TOKEN",
        "OS_APPLICATION_CREDENTIAL_ID",
        "OS_APPLICATION_CREDENTIAL_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALLASRUN_CONFIG_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["allasrun", "env"])
    monkeypatch.setattr("os.isatty", lambda fd: False)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == EXIT_CONFIG
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "error: no credentials" in lines[0]


@pytest.mark.parametrize(("size", "says"), [("6G", "more than 5G"), ("0", "--segment-size")])
def test_a_segment_size_out_of_bounds_is_a_usage_error_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], size: str, says: str
) -> None:
    """Swift refuses a segment over 5 GiB only after every retry; 0 would divide by zero mid-transfer."""
    monkeypatch.setattr("sys.argv", ["allasrun", "--segment-size", size, "--", "true"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and says in lines[0], lines


@pytest.mark.parametrize(
    ("raised", "code", "says"),
    [
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/x"), EXIT_LOCAL_FILE, "/home/u/x: Disk quota"),
        (KeyError("surprise"), EXIT_SOFTWARE, "internal error"),
    ],
)
def test_what_escapes_every_layer_is_still_one_line_and_a_documented_code(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: Exception,
    code: int,
    says: str,
) -> None:
    def parse(argv: list[str]) -> list[str]:
        raise raised

    monkeypatch.setattr(cli, "_with_default_command", parse)
    monkeypatch.setattr("sys.argv", ["allasrun", "env"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err

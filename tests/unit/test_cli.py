"""The command line's shape: `allasrun [OPTIONS] -- CMD` means exec; errors become one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from allasrun import cli
from allasrun.errors import EXIT_CONFIG


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

"""The command line: parse, call one command module, map errors to exit codes.

`allasrun [OPTIONS] -- CMD` is the main use, so a command line that does not start with a
subcommand name runs `exec`.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from allasrun import __version__
from allasrun import log as logsetup
from allasrun.auth import Schedule
from allasrun.errors import EXIT_LOCAL_FILE, EXIT_SOFTWARE, AllasrunError, LocalFileError, UsageError
from allasrun.staging.plan import StagePlan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Keep an Allas (Keystone + Swift) token alive for as long as a batch job runs.\n\n"
    "allasrun [OPTIONS] -- CMD runs CMD (see 'allasrun exec -h' for OPTIONS); "
    "allasrun run [OPTIONS] SCRIPT [ARGS] runs a job script with its #ALLAS stage-in/stage-out.",
)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also log debug detail.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Log only warnings and errors.")]
Threads = Annotated[
    Optional[int], typer.Option(min=1, metavar="N", help="Parallel transfers (default 8, or #ALLAS option).")
]
SegmentSize = Annotated[
    Optional[str],
    typer.Option(metavar="SIZE", help="Upload files larger than this as segments, e.g. 64M (default 5G)."),
]
Report = Annotated[Optional[str], typer.Option(metavar="FILE", help="Write a JSON report of every transfer.")]
Margin = Annotated[
    Optional[float],
    typer.Option(
        "--renew-margin",
        metavar="SECONDS",
        help="Renew when this much token life is left (default: half its lifetime).",
    ),
]


def _setup(verbose: bool, quiet: bool) -> None:
    logsetup.configure(-1 if quiet else (1 if verbose else 0))


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
    help="Run CMD with a token kept valid (the default: allasrun [OPTIONS] -- CMD).",
)
def exec_command(
    command: Annotated[List[str], typer.Argument(metavar="CMD [ARGS]...", show_default=False)],
    remote: Annotated[
        str, typer.Option(metavar="NAME", help="Name of the rclone remote to write.")
    ] = "allas",
    update_user_config: Annotated[
        bool, typer.Option(help="Also keep the remote current in your own rclone.conf.")
    ] = False,
    keep_password: Annotated[
        bool, typer.Option(help="Pass OS_PASSWORD on to the command (off: it is removed).")
    ] = False,
    job_credential: Annotated[
        bool,
        typer.Option(
            help="With a password, create an application credential for this run, revoked at the end.",
        ),
    ] = True,
    job_credential_hours: Annotated[
        float, typer.Option(metavar="HOURS", help="Expiry of that credential, if the run cannot revoke it.")
    ] = 24.0 * 14,
    storage_url: Annotated[
        Optional[str], typer.Option(metavar="URL", help="Swift URL to use instead of the catalog's.")
    ] = None,
    cache: Annotated[bool, typer.Option(help="Reuse a still-valid token from an earlier run.")] = True,
    token_service: Annotated[
        bool,
        typer.Option(
            help="Let the command's rclone and swift re-authenticate at this run's loopback "
            "token service (off: at Keystone, or not at all).",
        ),
    ] = True,
    renew_margin: Margin = None,
    script: Annotated[
        Optional[Path],
        typer.Option(metavar="FILE", help="Stage in/out as the #ALLAS directives of this job script say."),
    ] = None,
    run_script: Annotated[bool, typer.Option(hidden=True)] = False,
    threads: Threads = None,
    segment_size: SegmentSize = None,
    report: Report = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from allasrun.commands import launch
    from allasrun.staging import jobscript

    _setup(verbose, quiet)
    if run_script:  # `allasrun run SCRIPT [ARGS]`: the script is both the plan and the command
        script = Path(command[0])
        command = [*jobscript.command_for(script), *command[1:]]
    plan = _plan(script, threads, segment_size, report, strict=True)
    options = launch.LaunchOptions(
        plan=plan,
        command=command,
        remote=remote,
        update_user_config=update_user_config,
        keep_password=keep_password,
        job_credential=job_credential,
        job_credential_hours=job_credential_hours,
        storage_url=storage_url,
        use_cache=cache,
        token_service=token_service,
        schedule=Schedule(margin=renew_margin),
    )
    raise typer.Exit(launch.run(options, os.environ))


@app.command("check", help="Validate a job script's #ALLAS directives and look its inputs up in Allas.")
def check(
    script: Annotated[Path, typer.Argument(metavar="SCRIPT")],
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from allasrun.commands import check as check_command

    _setup(verbose, quiet)
    from allasrun.staging import jobscript

    plan = _plan(script, None, None, None, strict=False)
    text, status = check_command.run(plan, os.environ, jobscript.read(str(script)))
    typer.echo(text, nl=False)
    raise typer.Exit(status)


def _plan(
    script: Optional[Path],
    threads: Optional[int],
    segment_size: Optional[str],
    report: Optional[str],
    strict: bool,
) -> StagePlan:
    """The script's stage plan with command-line settings on top (they win)."""
    from allasrun.commands import protocol
    from allasrun.staging import jobscript, parse_segment_size

    plan = jobscript.load_plan(script, os.environ, strict) if script else jobscript.discover_plan(os.environ)
    size = None
    if segment_size is not None:
        try:
            size = parse_segment_size(segment_size)
        except ValueError as error:
            raise UsageError(f"--segment-size: {error}") from None
    return protocol.decide(plan, os.environ).overridden(threads=threads, segment_size=size, report=report)


@app.command(
    "sbatch",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    help="Check a job script and its Allas inputs, give the job credentials that outlive the queue "
    "(no password in its environment), and submit it with sbatch, its batch step under allasrun.",
)
def sbatch(
    argv: Annotated[List[str], typer.Argument(metavar="[SBATCH OPTIONS] SCRIPT [ARGS]...")],
    password_env: Annotated[
        bool,
        typer.Option(help="Export OS_PASSWORD to the job instead (sites without application credentials)."),
    ] = False,
    queue_hours: Annotated[
        float, typer.Option(metavar="HOURS", help="Queue wait the job credential must outlive.")
    ] = 72.0,
    margin_hours: Annotated[
        float, typer.Option(metavar="HOURS", help="Added to queue wait + time limit for its expiry.")
    ] = 1.0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from allasrun.commands import sbatch as sbatch_command

    _setup(verbose, quiet)
    options = sbatch_command.SbatchOptions(argv, password_env, queue_hours, margin_hours)
    raise typer.Exit(sbatch_command.run(options, os.environ))


@app.command(
    "stage-out",
    help="Upload the files a failed stage-out's report says did not land, where the job meant them.",
)
def stage_out(
    report: Annotated[Path, typer.Argument(metavar="REPORT")],
    storage_url: Annotated[
        Optional[str], typer.Option(metavar="URL", help="Swift URL to use instead of the catalog's.")
    ] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from allasrun.commands import stageout

    _setup(verbose, quiet)
    raise typer.Exit(stageout.run(report, os.environ, storage_url))


@app.command("login", help="Store an application credential so later runs need no password.")
def login(
    days: Annotated[float, typer.Option(metavar="DAYS", help="Days until the credential expires.")] = 30.0,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    from allasrun.commands import login as login_command

    _setup(verbose, quiet)
    typer.echo(login_command.run(os.environ, days), nl=False)


@app.command("env", help='Print export lines with a fresh token: eval "$(allasrun env)".')
def env(renew_margin: Margin = None, verbose: Verbose = False, quiet: Quiet = False) -> None:
    from allasrun.commands import env as env_command

    _setup(verbose, quiet)
    typer.echo(env_command.run(os.environ, Schedule(margin=renew_margin)), nl=False)


@app.command("status", help="Show user, project, storage URL, token expiry and files in use.")
def status(renew_margin: Margin = None, verbose: Verbose = False, quiet: Quiet = False) -> None:
    from allasrun.commands import status as status_command

    _setup(verbose, quiet)
    typer.echo(status_command.run(os.environ, Schedule(margin=renew_margin)), nl=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"allasrun {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Keep an Allas (Keystone + Swift) token alive for as long as a batch job runs."""


def _with_default_command(argv: List[str]) -> List[str]:
    """`allasrun [OPTIONS] -- CMD` means `allasrun exec [OPTIONS] -- CMD`.

    `allasrun run [OPTIONS] SCRIPT [ARGS]` is exec with the script as plan and command.
    """
    if argv and argv[0] == "run":
        return ["exec", "--run-script", *argv[1:]]
    commands = {command.name for command in app.registered_commands}
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help", "--version"):
        return ["exec", *argv]
    return argv


def main() -> None:
    """Console entry point: every failure becomes one `allasrun: ... error:` line and its exit code.

    AllasrunError carries its own code. An OSError that escaped every lower layer is still the
    machine's doing (quota, permission, a vanished file), so it is named, not dumped. Anything
    else is a defect in allasrun: one line that says so, exit 70, the traceback only with -v.
    """
    try:
        app(args=_with_default_command(sys.argv[1:]), prog_name="allasrun")
    except AllasrunError as error:
        _fail(error, error.exit_code)
    except OSError as error:
        _fail(LocalFileError.of(error, "use"), EXIT_LOCAL_FILE)
    except Exception as error:  # the last line of defence, by design
        defect = f"{type(error).__name__}: {error}"
        _fail(f"internal error (a defect in allasrun, please report it): {defect}", EXIT_SOFTWARE, error)


def _fail(error: object, code: int, defect: Optional[BaseException] = None) -> None:
    """One line on the current stderr, at the level the command set (-v keeps the traceback)."""
    verbose = logsetup.log.level == logging.DEBUG
    logsetup.configure(1 if verbose else 0)
    if defect is not None:
        logsetup.log.debug("the defect's traceback:", exc_info=defect)
    logsetup.log.error("error: %s", error)
    sys.exit(code)

"""Fuzzing what users and stores hand allasrun: never a traceback, errors name `file:line`.

Hypothesis drives `#ALLAS` directives and the environment through the plan builder, sbatch
command lines and script headers through their readers, object names from a listing through
the stage-in guard into real files, and OpenStack variables through identity; a few cases of
each run the console entry point in-process, where an escaped exception would be exit 70
(`internal error`). Derandomized and without a database, so CI sees the same examples every
run; each falsifying example found while writing this suite is kept as an `@example`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
import requests_mock
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from allasrun import cli
from allasrun import log as log_module
from allasrun.auth.identity import choose_secret, target_from_env
from allasrun.errors import (
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_LOCAL_FILE,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    NoCredentials,
    UsageError,
)
from allasrun.log import log
from allasrun.slurm import sbatchline, submit
from allasrun.staging import jobscript
from allasrun.staging.plan import Settings, StageIn, parse_size
from allasrun.staging.select import inside
from allasrun.staging.stager import Stager
from allasrun.staging.transfer import DONE, FAILED, MISSING, REFUSED, SKIPPED
from tests.unit.fakestore import FakeStore
from tests.unit.keystone_fake import FakeKeystone, env_for


def fuzz(examples: int) -> settings:
    """Settings for one property: deterministic, no deadline (CI machines stall), no database."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Characters that have broken parsers: line breaks Python splits at and the shell does not,
# quotes, escapes, NUL, a lone surrogate (a variable's non-UTF-8 byte), look-alikes of ASCII.
ODD = st.sampled_from(
    ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\x00", "\xa0", "\udc80", "\u212a", "\u0130",
     "\u0661", "é", "'", '"', "\\", "#", "%", "$", "/", "..", "*", "?", "[", "]", " ", "\t", "=", "-"]
)  # fmt: skip
ODD_TEXT = st.lists(st.one_of(st.text(max_size=4), ODD), max_size=10).map("".join)
ENV_TEXT = st.one_of(ODD_TEXT, st.just("x" * 5000), st.just(""))  # longer than PATH_MAX, empty, odd


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """allasrun's log off: a logged lone surrogate breaks pytest-xdist's report to its controller.

    (allasrun's own stderr escapes them: Python writes it with `backslashreplace`.)
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(log, "disabled", True)
        yield


# ---------------------------------------------------------------- #ALLAS directives and the plan

WORDS = st.one_of(
    st.sampled_from(
        ["stage-in", "stage-out", "option", "b/k", "allas:bkt/", "bkt/p/%j/", "x/", "$X/y", "${X}", "$$",
         "%a", "%q", "%%", "--when=success", "--when", "--when=x", "--no-overwrite", "--node-local",
         "--node-local=1", "--=", "--", "threads=3", "threads=0", "threads=" + "9" * 5000,
         "segment-size=64M", "segment-size=5\u212a", "segment-size=6G", "deadline-signal=USR1",
         "deadline-signal=SIG_DFL", "progress=1e3", "project=$X", "report=r-%j.json", "grace=-1"]
    ),
    ODD_TEXT,
)  # fmt: skip
LINE = st.one_of(
    st.lists(WORDS, max_size=5).map(lambda words: "#ALLAS " + " ".join(words)),
    st.sampled_from(["", "#!/bin/bash", "#SBATCH -t 5", "# comment", "echo run", "\xa0#ALLAS stage-in b/x"]),
    ODD_TEXT,
)
SCRIPTS = st.lists(LINE, max_size=8).map("\n".join)
SLURM_ENV = st.dictionaries(
    st.sampled_from(["X", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME", "TMPDIR", "USER"]),
    ENV_TEXT,
    max_size=4,
)


def directive_line(error: UsageError, label: str, text: str) -> str:
    """The script line a directive error names, as sbatch and editors count lines."""
    found = re.match(rf"{re.escape(label)}:(\d+): ", str(error))
    assert found, f"no {label}:LINE: in {error}"
    return sbatchline.lines_of(text)[int(found.group(1)) - 1]


@fuzz(250)
@given(SCRIPTS, SLURM_ENV, st.booleans())
@example("\x0c#ALLAS b/k\n", {}, False)  # `splitlines` counted the form feed as a line: job.sh:2
@example("#!/bin/sh\u2028x\n#ALLAS stage-in\n", {}, True)  # ... and U+2028
@example("#ALLAS stage-out r/ $X/p/\n", {"X": "b\udc80b"}, True)  # a non-UTF-8 variable: exit 70
@example("#ALLAS stage-in $X/p d/\n", {"X": "b\udc80b"}, False)
@example("#ALLAS option project=$X\n", {"X": "p\udc80"}, True)
def test_a_script_gives_a_plan_or_an_error_naming_its_directive_line(
    text: str, env: dict[str, str], strict: bool
) -> None:
    try:
        with muted():
            plan = jobscript.plan_of(text, "job.sh", env, strict)
    except UsageError as error:
        assert directive_line(error, "job.sh", text).strip().startswith("#ALLAS")
        assert "\n" not in str(error)
        return
    for where in [spec.where for spec in plan.stage_in] + [spec.where for spec in plan.stage_out]:
        assert sbatchline.lines_of(text)[int(where.rpartition(":")[2]) - 1].strip().startswith("#ALLAS")


@pytest.mark.parametrize("size", ["5\u212a", "5\u0130B", "\u0661G"])
def test_a_size_is_ascii(size: str) -> None:
    """The Kelvin sign matched `K` case-insensitively, then failed with 'substring not found'."""
    with pytest.raises(ValueError, match="not a size"):
        parse_size(size)


@contextlib.contextmanager
def console(env: Mapping[str, str]) -> Iterator[io.StringIO]:
    """The process as `allasrun` starts: of the OpenStack, Slurm and allasrun variables only `env`; no tty."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith(("OS_", "SLURM", "ALLASRUN_")):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setattr("os.isatty", lambda fd: False)
        # Each run starts as a fresh process: no secret an earlier example registered (a fuzzed
        # password "cs", say) masks the text of this one's messages.
        patch.setattr(log_module._secrets, "known", frozenset())
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            yield err


def run_cli(argv: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """`allasrun ARGV` through the console entry point in-process: exit code and stderr."""
    with console(env) as err, pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["allasrun", *argv])
        try:
            cli.main()
        except SystemExit as stopped:
            return int(stopped.code or 0), err.getvalue()
    return 0, err.getvalue()


def no_defect(code: int, err: str) -> None:
    event(f"exit {code}")  # `pytest --hypothesis-show-statistics` shows how the runs ended
    assert code != EXIT_SOFTWARE and "Traceback" not in err and "internal error" not in err, err


@fuzz(40)
@given(SCRIPTS.map(lambda text: text.replace("\x00", "").replace("\udc80", "")), SLURM_ENV)
@example("\x0c#ALLAS b/k\n", {})
@example("#ALLAS stage-out r/ $X/p/\n", {"X": "b\udc80b"})
def test_allasrun_check_ends_in_one_error_line_never_a_traceback(text: str, env: dict[str, str]) -> None:
    """No credentials: a directive error is exit 2 naming `job.sh:LINE`; a good plan goes on to exit 78."""
    with tempfile.TemporaryDirectory() as home:
        script = Path(home) / "job.sh"
        script.write_text(text, encoding="utf-8")
        env = {**env, "ALLASRUN_CONFIG_DIR": home, "OS_PROJECT_NAME": "project_2001234"}
        code, err = run_cli(["check", str(script)], {k: v for k, v in env.items() if "\x00" not in v})
    no_defect(code, err)
    assert code in (EXIT_USAGE, EXIT_CONFIG)
    if code == EXIT_USAGE:
        assert f"{script}:" in err.rstrip("\n").split("\n")[-1]  # not splitlines: it splits at \f


# ---------------------------------------------------------------- sbatch command lines and headers

SBATCH_WORDS = st.one_of(
    st.sampled_from(
        ["-t", "5", "--time=1-0", "--time", "-t5", "--export=NONE", "--export", "A,B", "--hold", "-M",
         "mahti", "--wrap", "--wrap=hostname", "-Q", "--parsable", "--", "-", "--nice", "-J",
         "--job-name=bob's"]
    ),
    ODD_TEXT,
)  # fmt: skip
ARGV = st.lists(SBATCH_WORDS, max_size=8)
HEADERS = st.lists(
    st.one_of(st.lists(SBATCH_WORDS, max_size=3).map(lambda words: "#SBATCH " + " ".join(words)), LINE),
    max_size=6,
).map("\n".join)


@fuzz(200)
@given(ARGV, HEADERS)
@example(["job.sh"], "#!/bin/sh\n#SBATCH --job-name=bob's\n#SBATCH -t 5\n")  # shlex: ValueError, exit 70
@example(["job.sh"], '#SBATCH --comment="open\n')
def test_a_command_line_and_header_are_read_without_an_error(argv: list[str], text: str) -> None:
    line = sbatchline.split(argv)
    assert [*line.options, *([line.script] if line.script is not None else []), *line.arguments] == argv
    sbatchline.time_limit(line, text)
    sbatchline.given(line, text, "--hold", "-H")
    exported = sbatchline.exporting(line, text, None, ["ALLASRUN_CREDENTIALS"])
    assert (exported.script, exported.arguments) == (line.script, line.arguments)
    submit.rewrap(list(line.options))


def test_an_unsplittable_header_line_still_gives_its_time_limit() -> None:
    text = "#!/bin/sh\n#SBATCH --job-name=bob's --time=7\n#SBATCH -t 5\necho\n"
    assert sbatchline.time_limit(sbatchline.split(["job.sh"]), text) == 300


@fuzz(200)
@given(HEADERS, st.sampled_from(["", "\n", "echo run\n", "\xa0echo run\n"]))
@example("#!/bin/sh\n#SBATCH -t 5\x0cecho hi", "")  # the guard went into the #SBATCH comment
@example("#!/bin/sh\n#ALLAS stage-in b/x\u2028echo hi\n", "true\n")
def test_the_guard_is_a_line_of_its_own_before_the_first_command(header: str, body: str) -> None:
    """Every line before the guard is blank or a comment to sbatch; removing it gives the script back."""
    text = header + ("\n" if header and body else "") + body
    lines = sbatchline.lines_of(sbatchline.wrapped(text, "GUARD"))
    at = lines.index("GUARD")
    assert sbatchline.header_length(lines[:at]) == at
    rest = "\n".join(lines[:at] + lines[at + 1 :])
    assert rest in (text, text + "\n")


@fuzz(200)
@given(st.one_of(ODD_TEXT, st.text(max_size=40)))
def test_slurm_text_never_raises(text: str) -> None:
    sbatchline.parse_time(text)
    submit.job_named(text)
    sbatchline.is_shell_script(text)


FAKE_SBATCH = '#!/bin/sh\necho "Submitted batch job 4242"\n'


@contextlib.contextmanager
def keystone() -> Iterator[FakeKeystone]:
    """The fake Keystone; every other URL is a refused connection (as a real one would be)."""
    with requests_mock.Mocker() as mocker:
        mocker.register_uri(requests_mock.ANY, requests_mock.ANY, exc=requests.exceptions.ConnectionError)
        yield FakeKeystone(mocker)


@fuzz(30)
@given(ARGV.map(lambda words: [w for w in words if "\x00" not in w and "\udc80" not in w]), HEADERS)
@example(["-t", "5"], "#!/bin/sh\n#SBATCH --job-name=bob's\n#SBATCH -t 5\n")
def test_allasrun_sbatch_submits_or_fails_in_one_line(argv: list[str], header: str) -> None:
    """Through the console entry point, with the fake Keystone and an sbatch that takes anything.

    This reaches what reads the header after the credentials: the time limit, --export, -M.
    """
    with tempfile.TemporaryDirectory() as home:
        bin_dir = Path(home, "bin")
        bin_dir.mkdir()
        (bin_dir / "sbatch").write_text(FAKE_SBATCH)
        (bin_dir / "sbatch").chmod(0o755)
        script = Path(home, "job.sh")
        script.write_text(f"#!/bin/bash\n{header}\ntrue\n".replace("\x00", "").replace("\udc80", ""))
        env = env_for(Path(home), OS_PASSWORD="pw", PATH=str(bin_dir))
        with keystone():
            code, err = run_cli(["sbatch", *argv, str(script)], env)
    no_defect(code, err)
    assert code in (0, EXIT_USAGE)  # submitted, or a word before the script that is no file (2)


# ---------------------------------------------------------------- object names into local paths

SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "", "a", "A", "x" * 1024, "é" * 128, "a\nb", "a\x00b", "\udc80", "\ud800",
                     "\\..\\x", "~", "-", " "]),
    ODD_TEXT,
)  # fmt: skip
NAMES = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)


@fuzz(300)
@given(NAMES)
@example("../escape")
@example("/etc/passwd")
@example("a/\x00/b")  # NUL: refused, not an 'unexpected error' at open
@example("a\ud800")  # a lone surrogate no file name can hold
def test_an_object_name_never_maps_outside_the_destination(name: str) -> None:
    destination = Path("/work/in")
    path = inside(destination, name)
    if path is None:
        return
    assert path.parent == destination or destination in path.parents
    assert path.relative_to(destination).as_posix() == name  # one name, one file, nothing dropped
    assert os.path.normpath(path) == str(path) and "\x00" not in str(path)


def walk(root: Path) -> list[Path]:
    return [Path(top, name) for top, dirs, files in os.walk(root) for name in dirs + files]


@fuzz(60)
@given(st.lists(NAMES, min_size=1, max_size=5, unique=True), st.sampled_from(["d/", "d/**", "d/*/x", "ONE"]))
@example(["A", "a"], "d/")  # differ only in case: two files on a case-sensitive file system
@example(["x" * 1024, "\x00", "../../up", "\ud800"], "d/")
@example(["a", "a/b"], "d/")  # a file where a directory must go: that object fails, the other lands
def test_a_stage_in_writes_only_below_its_destination(names: list[str], key: str) -> None:
    """Each object lands intact under `in/`, or its record says why; nothing else on disk changes.

    `ONE` names the first object itself, which lands under its base name.
    """
    key = f"d/{names[0]}" if key == "ONE" else key
    store = FakeStore()
    contents = {f"d/{name}": f"{index}:{name!r}".encode() for index, name in enumerate(names)}
    for name, data in contents.items():
        store.put_object("bkt", name, data)
    with tempfile.TemporaryDirectory() as root:
        work = Path(root, "work")
        work.mkdir()
        stager = Stager(store, Settings(threads=2, retries=1, progress=3600.0), work)
        with muted():
            records = stager.stage_in([StageIn("job.sh:2", "bkt", key, "in/")], lambda: False)
        assert all(path.is_relative_to(work / "in") for path in walk(Path(root)) if path != work)
        for record in records:
            event(record.status)
            assert record.status in (DONE, SKIPPED, REFUSED, FAILED, MISSING), record
            assert "unexpected error" not in record.error, record
            if record.status == DONE:
                name = record.source.removeprefix("allas:bkt/")
                assert Path(record.destination).read_bytes() == contents[name]


def test_names_that_differ_only_in_case_are_two_files(tmp_path: Path) -> None:
    """Each keeps its content on Linux's case-sensitive file systems.

    On a case-insensitive one (a macOS or SMB mount) both would land on one file, the last
    renamed winning; Lustre, GPFS and local Linux file systems are case-sensitive.
    """
    store = FakeStore()
    store.put_object("bkt", "d/Data.txt", b"upper\n")
    store.put_object("bkt", "d/data.txt", b"lower\n")
    records = Stager(store, Settings(threads=2, progress=3600.0), tmp_path).stage_in(
        [StageIn("job.sh:2", "bkt", "d/", "in/")], lambda: False
    )
    assert sorted(r.status for r in records) == [DONE, DONE]
    assert (tmp_path / "in/Data.txt").read_bytes() == b"upper\n"
    assert (tmp_path / "in/data.txt").read_bytes() == b"lower\n"


# ---------------------------------------------------------------- environment values

OS_NAMES = st.sampled_from(
    ["OS_AUTH_URL", "OS_PROJECT_NAME", "OS_USERNAME", "OS_USER_DOMAIN_NAME", "OS_PROJECT_DOMAIN_NAME",
     "OS_REGION_NAME", "OS_INTERFACE", "OS_PASSWORD", "OS_AUTH_TOKEN", "OS_STORAGE_URL",
     "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET"]
)  # fmt: skip
URLS = st.sampled_from(
    ["http://keystone.example/v3", "http://keystone.example/v3\n", "http://[::1", "ftp://x", "http://:5/v3",
     "http://keystone.example:99999/v3", "http://keystone.example/v3 x", "http://keystone.example/\udc80"]
)  # fmt: skip
OS_ENV = st.dictionaries(OS_NAMES, st.one_of(ENV_TEXT, URLS), max_size=5)
SECRETS = ("OS_PASSWORD", "OS_APPLICATION_CREDENTIAL_SECRET", "OS_AUTH_TOKEN")


@fuzz(250)
@given(OS_ENV, st.booleans())
@example({"OS_AUTH_URL": "http://[::1"}, False)  # ValueError: Invalid IPv6 URL, exit 70
@example({"OS_PASSWORD": "pw\udc80"}, False)  # UnicodeEncodeError in Keystone's request, exit 70
@example({"OS_AUTH_TOKEN": "t\nX-Injected: 1"}, False)
def test_openstack_variables_give_an_identity_or_a_typed_error(env: dict[str, str], prompt: bool) -> None:
    """A typed error in one line, which never shows a secret (each is marked here to be found)."""
    env = {name: f"s3cr3t{value}" if name in SECRETS else value for name, value in env.items()}
    try:
        target_from_env(env, "login")
        choose_secret(env, None, prompt)
    except (UsageError, NoCredentials) as error:
        assert "\n" not in str(error) and "s3cr3t" not in str(error)


@fuzz(60)
@given(OS_ENV.map(lambda env: {k: v for k, v in env.items() if "\x00" not in v}))
@example({"OS_AUTH_URL": "http://keystone.example/v3\udc80"})
@example({"OS_REGION_NAME": "\udc80"})
@example({"OS_AUTH_URL": "http://[::1"})
def test_allasrun_env_with_odd_variables_never_tracebacks(variables: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {**env_for(Path(home), OS_PASSWORD="pw"), **variables}
        with keystone():
            code, err = run_cli(["env"], env)
    no_defect(code, err)
    assert code in (0, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_LOCAL_FILE, EXIT_AUTH, EXIT_CONFIG)


NODELISTS = st.from_regex(r"[a-z]{0,3}(\[[0-9a-z,\-]{0,12}\])?[a-z0-9]{0,3}(,[a-z\[\]0-9\-]{0,8})?")
JOB_VARIABLES = ["SLURM_JOB_ID", "SLURM_JOB_NODELIST", "ALLASRUN_DIR", "ALLASRUN_NODE", "SLURMD_NODENAME"]


@fuzz(200)
@given(st.one_of(ODD_TEXT, NODELISTS))
@example("n[a-b]")  # ValueError: invalid literal for int()
@example("n[1-99999999999]")  # a list that fills the memory
@example("n[1-60000][1-60000]")  # ... and one that multiplies
def test_a_node_list_is_names_or_a_usage_error(nodelist: str) -> None:
    try:
        names = jobscript.hostnames(nodelist)
    except UsageError as error:
        assert "SLURM_JOB_NODELIST" in str(error)
        return
    assert len(names) <= jobscript.MAX_HOSTS


@fuzz(100)
@given(st.dictionaries(st.sampled_from(JOB_VARIABLES), st.one_of(ENV_TEXT, NODELISTS)))
@example({"SLURM_JOB_ID": "1", "ALLASRUN_DIR": "x" * 5000, "ALLASRUN_NODE": "c1", "SLURMD_NODENAME": "c1"})
@example({"SLURM_JOB_ID": "1", "ALLASRUN_DIR": "/r", "ALLASRUN_NODE": "c1", "SLURM_JOB_NODELIST": "c[a-b]"})
def test_a_jobs_environment_gives_a_plan_or_a_usage_error(env: dict[str, str]) -> None:
    """Without scontrol on PATH: no batch script to read, so no plan, whatever the variables say."""
    try:
        with muted():
            assert not jobscript.discover_plan({**env, "PATH": "/nonexistent"})
    except UsageError as error:
        assert "SLURM_JOB_NODELIST" in str(error)

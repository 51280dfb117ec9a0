"""The Supervisor with real processes: stop signals reach the whole job, not only the direct child.

Most cases run the Supervisor in a driver process of its own (it blocks signals and becomes a
child subreaper, which must not leak into pytest), with a command whose worker is a grandchild
of the Supervisor: a shell that starts a loop in the background, as a batch script does.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allasrun.job import supervisor

# The driver: the Supervisor runs `command`. With killer "deadline" it sends SIGTERM to the job
# once the `started` file exists (as the deadline does), and SIGKILL `grace` seconds later.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from allasrun.job.supervisor import Supervisor

    command, started_file, grace_text, killer, slurm = sys.argv[1:6]
    started, grace = Path(started_file), float(grace_text)
    child = Supervisor(grace=grace, slurm=slurm)
    child.prepare("/bin/sh", ["sh", "-c", command])
    child.start(dict(os.environ))
    state = {"sent": None}

    def timer():
        if killer != "deadline":
            return None
        now = time.monotonic()
        if state["sent"] is None:
            if not started.exists():
                return 0.05
            child.send(signal.SIGTERM)
            state["sent"] = now
            return grace
        if now >= state["sent"] + grace:
            child.send(signal.SIGKILL)
            return None
        return state["sent"] + grace - now

    print("status", child.wait(timer), flush=True)
    """
)

# A worker that appends to a file until stopped, as a grandchild of the Supervisor.
LOOP = 'while :; do echo tick >> "$OUT/ticks"; sleep 0.05; done'
# The deadline fires once the worker has ticked: before that, its TERM could land before the
# worker exists (the test would see no worker, not a worker left running).
STARTED = 'until [ -s "$OUT/ticks" ]; do sleep 0.01; done; touch "$OUT/started"'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def _wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll until `predicate()` is true; False if it never became true (a generous bound)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def _no_worker_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing case left running is killed here, not left to spin."""
    yield
    pid_file = tmp_path / "worker"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _drive(
    tmp_path: Path, command: str, killer: str = "none", grace: float = 2.0, slurm: str = "batch"
) -> subprocess.Popen[str]:
    """The driver, its output to a file: a pipe would stay open as long as a stray worker lives."""
    env = {**os.environ, "OUT": str(tmp_path)}
    argv = [sys.executable, "-c", DRIVER, command, str(tmp_path / "started"), str(grace), killer, slurm]
    with (tmp_path / "driver.out").open("w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, text=True, stdin=subprocess.DEVNULL)


def _status(driver: subprocess.Popen[str], tmp_path: Path) -> str:
    """The driver's last line, once it has ended (within a bound that tells ended from hung)."""
    driver.wait(timeout=30)
    return (tmp_path / "driver.out").read_text().strip()


def _worker(tmp_path: Path) -> int:
    assert _wait_until((tmp_path / "worker").exists), "the worker never started"
    return int((tmp_path / "worker").read_text())


def _quiet_after(driver: subprocess.Popen[str], tmp_path: Path) -> str:
    """The driver's status line once it has returned; the ticks file must not grow after that."""
    out = _status(driver, tmp_path)
    size = (tmp_path / "ticks").stat().st_size
    time.sleep(0.5)
    assert (tmp_path / "ticks").stat().st_size == size, "the worker still writes after wait() returned"
    return out


def test_the_deadlines_term_reaches_a_grandchild(tmp_path: Path) -> None:
    command = f"sh -c 'echo $$ > \"$OUT/worker\"; {LOOP}' & {STARTED}; wait"
    driver = _drive(tmp_path, command, killer="deadline")
    worker = _worker(tmp_path)
    assert _quiet_after(driver, tmp_path) == f"status {128 + signal.SIGTERM}"
    assert not _alive(worker)


def test_the_grace_kill_reaches_a_grandchild_that_ignores_term(tmp_path: Path) -> None:
    command = f'sh -c \'trap "" TERM; echo $$ > "$OUT/worker"; {LOOP}\' & {STARTED}; wait'
    driver = _drive(tmp_path, command, killer="deadline", grace=1.0)
    worker = _worker(tmp_path)
    assert _quiet_after(driver, tmp_path).startswith("status ")
    assert not _alive(worker)


def test_a_forwarded_term_reaches_a_grandchild(tmp_path: Path) -> None:
    command = f"sh -c 'echo $$ > \"$OUT/worker\"; {LOOP}' & wait"
    driver = _drive(tmp_path, command)
    worker = _worker(tmp_path)
    driver.send_signal(signal.SIGTERM)  # a kill of allasrun alone (not from Slurm)
    assert _quiet_after(driver, tmp_path) == f"status {128 + signal.SIGTERM}"
    assert not _alive(worker)


def test_wait_returns_only_when_nothing_the_command_left_behind_is_writing(tmp_path: Path) -> None:
    """The command exits at once; its background writer is stopped before wait() returns."""
    command = f"sh -c 'echo $$ > \"$OUT/worker\"; {LOOP}' & sleep 0.5; exit 3"
    driver = _drive(tmp_path, command, grace=1.0)
    worker = _worker(tmp_path)
    assert _quiet_after(driver, tmp_path) == "status 3"
    assert not _alive(worker)


def test_sigkill_of_the_supervisor_kills_the_grandchild_too(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG reaches only the direct child; the watchdog takes the whole group."""
    command = f"sh -c 'echo $$ > \"$OUT/worker\"; {LOOP}' & wait"
    driver = _drive(tmp_path, command)
    worker = _worker(tmp_path)
    driver.kill()
    driver.wait(timeout=10)
    assert _wait_until(lambda: not _alive(worker)), f"worker {worker} outlived a SIGKILLed allasrun"


SLURMSTEPD = textwrap.dedent(
    """
    import os, signal, sys, time
    # What slurmstepd does to end a step: SIGCONT, then SIGTERM, to every process of it (the
    # job's group, if given, and the driver).
    driver, groups = int(sys.argv[1]), [int(group) for group in sys.argv[2:]]
    for signum in (signal.SIGCONT, signal.SIGTERM):
        for group in groups:
            os.killpg(group, signum)
        time.sleep(0.1)  # the worker takes this one before allasrun could send another
        os.kill(driver, signum)
        time.sleep(0.05)
    """
)


def _fake_slurmstepd(tmp_path: Path) -> Path:
    """A python named `slurmstepd`, so the kernel names its process so (comm)."""
    link = tmp_path / "bin" / "slurmstepd"
    link.parent.mkdir()
    link.symlink_to(sys.executable)
    return link


# A worker that notes who sent each SIGTERM it gets, for a second after the first one.
COUNTING = textwrap.dedent(
    """
    import os, signal, sys, time
    out = sys.argv[1]
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    with open(f"{out}/worker", "w") as pid_file:
        pid_file.write(str(os.getpid()))
    first = None
    while first is None or time.monotonic() < first + 1.0:
        info = signal.sigtimedwait({signal.SIGTERM}, 0.1)
        if info is not None:
            first = first or time.monotonic()
            with open(f"{out}/terms", "a") as terms:
                terms.write(f"{info.si_pid}\\n")
    """
)


def _counting(tmp_path: Path) -> str:
    (tmp_path / "counting.py").write_text(COUNTING)
    return f'{sys.executable} "$OUT/counting.py" "$OUT" & wait'


def test_a_term_slurm_delivered_to_the_whole_step_is_not_sent_again(tmp_path: Path) -> None:
    driver = _drive(tmp_path, _counting(tmp_path))
    group = os.getpgid(_worker(tmp_path))
    fake = subprocess.Popen([str(_fake_slurmstepd(tmp_path)), "-c", SLURMSTEPD, str(driver.pid), str(group)])
    assert fake.wait(timeout=30) == 0
    assert _status(driver, tmp_path).startswith("status ")
    assert (tmp_path / "terms").read_text().split() == [str(fake.pid)]  # Slurm's, and no other


def test_a_term_slurmstepd_sent_to_allasrun_alone_is_forwarded(tmp_path: Path) -> None:
    """`scancel --batch --signal=TERM`, `--signal=B:TERM@N`: the batch shell alone gets it."""
    driver = _drive(tmp_path, _counting(tmp_path))
    _worker(tmp_path)
    only_term = SLURMSTEPD.replace("(signal.SIGCONT, signal.SIGTERM)", "(signal.SIGTERM,)")
    subprocess.run([str(_fake_slurmstepd(tmp_path)), "-c", only_term, str(driver.pid)], check=True)
    assert _status(driver, tmp_path).startswith("status ")
    assert (tmp_path / "terms").read_text().split() == [str(driver.pid)]  # allasrun passed it on


def test_in_an_srun_step_any_term_from_slurmstepd_reached_the_whole_step(tmp_path: Path) -> None:
    """srun passes a TERM on to its step's tasks through slurmstepd, to every process: no CONT."""
    driver = _drive(tmp_path, _counting(tmp_path), slurm="step")
    group = os.getpgid(_worker(tmp_path))
    only_term = SLURMSTEPD.replace("(signal.SIGCONT, signal.SIGTERM)", "(signal.SIGTERM,)")
    fake = subprocess.Popen([str(_fake_slurmstepd(tmp_path)), "-c", only_term, str(driver.pid), str(group)])
    assert fake.wait(timeout=30) == 0
    assert _status(driver, tmp_path).startswith("status ")
    assert (tmp_path / "terms").read_text().split() == [str(fake.pid)]


GROUP_OF_THE_COMMAND = textwrap.dedent(
    """
    import os
    from allasrun.job.supervisor import Supervisor
    child = Supervisor()
    pid = child.prepare("/bin/true", ["true"])
    print("own group" if os.getpgid(pid) != os.getpgrp() else "allasrun's group", flush=True)
    child.abandon()
    """
)


def test_in_the_foreground_of_a_terminal_the_command_stays_in_allasruns_group() -> None:
    """The terminal's job control (Ctrl-C, Ctrl-Z, reads) keeps working as for any command."""
    pid, terminal = pty.fork()
    if pid == 0:  # pragma: no cover - the child: in the foreground of a new terminal
        os.execv(sys.executable, [sys.executable, "-c", GROUP_OF_THE_COMMAND])
    output = b""
    with contextlib.suppress(OSError):  # EIO: the terminal's other side has closed
        while chunk := os.read(terminal, 1024):
            output += chunk
    os.close(terminal)
    os.waitpid(pid, 0)
    assert output.decode().strip() == "allasrun's group"
    batch = subprocess.run(
        [sys.executable, "-c", GROUP_OF_THE_COMMAND],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    assert batch.stdout.strip() == "own group"  # no terminal: a batch job


def test_slurms_term_taken_before_its_cont_still_counts_as_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both pending when allasrun looks: sigwaitinfo gives the TERM (15) before the CONT (18)."""
    monkeypatch.setattr(supervisor, "_is_slurmstepd", lambda info: info.si_pid == os.getpid())
    child = supervisor.Supervisor(slurm="batch")
    child._own_group = True
    term = signal.struct_siginfo((signal.SIGTERM, 0, 0, os.getpid(), 0, 0, 0))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCONT})
    try:
        assert not child._slurm_delivered(term)  # a TERM alone: the batch shell's only
        # To this thread: under pytest-xdist another thread, not blocking CONT, would take a
        # process-directed one (allasrun blocks its signals before it starts any thread).
        signal.pthread_kill(threading.get_ident(), signal.SIGCONT)
        assert child._slurm_delivered(term)
        assert signal.SIGCONT not in signal.sigpending()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCONT})

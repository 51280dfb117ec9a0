"""Running the job command like a small init (tini): spawn, forward signals, reap, report.

Signals are blocked in allasrun and collected with sigwaitinfo, so none is lost between
spawning and waiting, and the keeper's and stager's threads (started after the fork, so
they inherit the mask) never receive one.

The command is a job, not a process: a batch script's shell is the direct child and the work
runs under it. So the command gets a process group of its own, every signal allasrun sends
goes to the whole group, and `wait` returns only once nothing of the group is left (what the
command left behind is stopped, TERM then KILL after the grace): stage-out then reads files
nobody writes. allasrun is a child subreaper, so orphans of the job are its children, are
reaped, and stay in Slurm's process tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, Optional

from allasrun.errors import CommandNotExecutable, CommandNotFound
from allasrun.log import log
from allasrun.slurm import facts

# The signals a batch system or a user sends to stop, checkpoint or wake a job.
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
)
# A terminal sends these to its whole foreground process group: the command has its own copy.
_TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
_SI_KERNEL = 0x80
_SI_USER = 0
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
POLL = 0.25  # seconds between looks at a group whose leader has exited
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Python ignores these; a command must start with the default action, as from a shell.
_RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


def resolve(command: str, env: Mapping[str, str]) -> str:
    """The executable's path, or the shell's 127/126 error before any Keystone call is made."""
    if "/" in command:
        if not os.path.exists(command):
            raise CommandNotFound(f"{command}: no such file")
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            raise CommandNotExecutable(f"{command}: permission denied (not an executable file)")
        return command
    search_path = env.get("PATH", os.defpath)
    found = shutil.which(command, path=search_path)
    if found is not None:
        return found
    if shutil.which(command, mode=os.F_OK, path=search_path):
        raise CommandNotExecutable(f"{command}: found on PATH but not executable")
    raise CommandNotFound(f"{command}: command not found")


class Supervisor:
    """One child process, its signals and its exit status.

    The child is forked early, while allasrun still has a single thread, and waits on a
    pipe; `start` later sends it the final environment and it execs the command. Staging
    and the keeper can then run threads before the command starts without the hazards of
    forking a threaded process.
    """

    def __init__(self, grace: float = 60.0, slurm: str = "") -> None:
        """`grace`: how long what the command left behind may take to stop before it is killed.

        `slurm`: "step" in a step that srun started, "batch" in a job's batch step, where
        slurmstepd's signals reach every process of the step (see `for_job`); "" elsewhere.
        """
        self._watched = {*FORWARDED, signal.SIGCHLD}
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._pid = 0
        self._go = -1
        self._errors = -1
        self._grace = grace
        self._slurm = slurm
        self._own_group = False
        self._watchdog = -1
        self._stopped_at: Optional[float] = None  # when a stop signal first reached the group
        self._killed = False
        self._slurm_cont = 0  # slurmstepd's pid if its SIGCONT was the last signal we got

    @classmethod
    def for_job(cls, env: Mapping[str, str], grace: float = 60.0) -> Supervisor:
        """A Supervisor that knows where in Slurm it runs, if anywhere (see `_slurm_delivered`)."""
        if facts.job_id(env) is None or not facts.signals_reach_whole_step(env):
            return cls(grace)
        return cls(grace, "step" if env.get("SLURM_STEP_ID") else "batch")

    def prepare(self, executable: str, argv: Sequence[str]) -> int:
        """Block our signals and fork the child that will become the command.

        The command gets its own process group unless allasrun runs in the foreground of a
        terminal. There the terminal already sends Ctrl-C, Ctrl-Z and hangup to the whole job
        (allasrun and the command share its foreground group), and a group of its own would
        put the command in the background (stopped on its first read from the terminal) unless
        allasrun handed the terminal over and back (tcsetpgrp) and relayed every stop and
        continue: job control a shell does better. An interactive session has no deadline
        to keep, and one stopped by a signal is stopped by the user, who sees it.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        self._prctl(_PR_SET_CHILD_SUBREAPER, 1)
        self._own_group = not _in_terminal_foreground()
        go_read, self._go = os.pipe()
        self._errors, error_write = os.pipe()  # close-on-exec: EOF means exec succeeded
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            self._become(parent, go_read, error_write, executable, argv)
        os.close(go_read)
        os.close(error_write)
        self._pid = pid
        if self._own_group:
            with contextlib.suppress(OSError):  # the child does the same: whoever is first
                os.setpgid(pid, pid)
            self._watchdog = _watch(pid)
        return pid

    def _become(
        self, parent: int, go_read: int, error_write: int, executable: str, argv: Sequence[str]
    ) -> NoReturn:
        """In the child: die with allasrun, wait for the go, then exec with a clean slate."""
        code = 127
        try:
            os.close(self._go)
            os.close(self._errors)
            if self._own_group:
                os.setpgid(0, 0)
            # If allasrun is SIGKILLed the kernel kills the command too, and the watchdog the
            # rest of its group: no orphaned job.
            self._prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # allasrun died before prctl took effect
                os._exit(128 + signal.SIGKILL)
            payload = _read_all(go_read)
            code = 0  # an empty payload: abandoned, the command is not to run
            if payload:
                for number in _RESTORED:
                    signal.signal(number, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.execve(executable, list(argv), json.loads(payload))
        except OSError as error:
            code = 127
            os.write(error_write, str(error.errno).encode())
        finally:
            os._exit(code)

    def start(self, env: Mapping[str, str]) -> None:
        """Let the child exec the command with `env`; raise 126/127 errors if exec failed."""
        os.write(self._go, json.dumps(dict(env)).encode())
        os.close(self._go)
        failure = _read_all(self._errors)
        os.close(self._errors)
        if failure:
            os.waitpid(self._pid, 0)
            self._release_watchdog()
            number = int(failure)
            message = f"cannot execute: {os.strerror(number)}"
            if number == errno.ENOENT:
                raise CommandNotFound(message)
            raise CommandNotExecutable(message)

    def pending_stop(self) -> Optional[int]:
        """A stop signal (TERM, INT, HUP, QUIT) waiting to be handled, if any: ends stage-in."""
        waiting = signal.sigpending() & set(_STOP_SIGNALS)
        return int(min(waiting)) if waiting else None

    def abandon(self) -> None:
        """Tell the waiting child to exit without running the command, and reap it."""
        os.close(self._go)
        os.close(self._errors)
        os.waitpid(self._pid, 0)
        self._release_watchdog()

    def wait(
        self,
        timer: Optional[Callable[[], Optional[float]]] = None,
        on_signal: Optional[Callable[[int], None]] = None,
    ) -> int:
        """Forward signals until the job is over; the command's status, or 128+N if signal N killed it.

        The job is over when the command has exited and nothing of its process group is left.
        `timer` (the deadline) is called at start, whenever the seconds it last returned have
        passed, and after `on_signal` has been told of a signal for the command; it returns
        None when it needs no more calls. Its signals go to the whole group (through `send`).
        """
        due = _next_call(timer)
        status: Optional[int] = None
        ended_at = 0.0
        while True:
            if status is not None:
                if not self._group_left():
                    self._release_watchdog()
                    return status
                self._stop_leftovers(ended_at)
            info = self._next_signal(due, status is not None)
            if info is None:
                if due is not None and time.monotonic() >= due:
                    due = _next_call(timer)
            elif info.si_signo == signal.SIGCHLD:
                reaped = self._reap()
                if reaped is not None:
                    status, ended_at = reaped, time.monotonic()
            elif self._handle(info) and on_signal is not None:
                on_signal(info.si_signo)
                due = _next_call(timer)

    def _next_signal(self, due: Optional[float], polling: bool) -> Optional[signal.struct_siginfo]:
        """The next signal, or None when `due` has come (or the poll of a leaderless group)."""
        wait = None if due is None else max(due - time.monotonic(), 0.0)
        if polling:
            wait = POLL if wait is None else min(wait, POLL)
        if wait is None:
            return signal.sigwaitinfo(self._watched)
        return signal.sigtimedwait(self._watched, wait)

    def _handle(self, info: signal.struct_siginfo) -> bool:
        """Pass a signal on to the job unless it has it already; whether it was for the job."""
        from_slurm = self._slurm_delivered(info)
        self._slurm_cont = info.si_pid if info.si_signo == signal.SIGCONT and _is_slurmstepd(info) else 0
        if from_slurm:
            name = signal.Signals(info.si_signo).name
            log.info("%s from Slurm reached the whole job; not sending it again", name)
            self._note_stop(info.si_signo)
            return True
        if self._came_from_terminal(info):
            return False
        self.send(info.si_signo)
        return True

    def send(self, signum: int) -> None:
        """Signal the command and everything in its process group (if anything is still there)."""
        self._note_stop(signum)
        with contextlib.suppress(ProcessLookupError):
            if self._own_group:
                os.killpg(self._pid, signum)
            else:
                os.kill(self._pid, signum)

    def _note_stop(self, signum: int) -> None:
        if signum in _STOP_SIGNALS and self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._killed = self._killed or signum == signal.SIGKILL

    def _slurm_delivered(self, info: signal.struct_siginfo) -> bool:
        """Whether slurmstepd sent this signal to every process of the step, the job's included.

        A second SIGTERM makes some programs abandon their checkpoint. In a step srun started,
        slurmstepd signals the whole step, always. In the batch step it does so to end the
        job (scancel, time limit, preemption: SIGCONT, then SIGTERM, to every process); what
        it sends to the batch shell alone (`scancel --batch`, `--signal=B:TERM@N`) comes
        without that SIGCONT before it, and is forwarded.
        """
        if not (self._own_group and self._slurm and _is_slurmstepd(info)):
            return False
        if self._slurm == "step":
            return True
        return info.si_signo == signal.SIGTERM and info.si_pid in (self._slurm_cont, self._pending_cont())

    def _pending_cont(self) -> int:
        """The sender of a SIGCONT still pending (taken now), or 0.

        sigwaitinfo hands out the lower-numbered TERM first when both came before allasrun
        looked. A SIGCONT from someone else is passed on at once.
        """
        if signal.SIGCONT not in signal.sigpending():
            return 0
        info = signal.sigtimedwait({signal.SIGCONT}, 0)
        if info is None:
            return 0
        if _is_slurmstepd(info):
            return info.si_pid
        self.send(signal.SIGCONT)
        return 0

    def _came_from_terminal(self, info: signal.struct_siginfo) -> bool:
        """Ctrl-C already reached the command through the terminal; sending it again hurts."""
        if info.si_signo not in _TERMINAL_SIGNALS or info.si_code != _SI_KERNEL:
            return False
        try:
            return os.getpgid(self._pid) == os.getpgrp()
        except ProcessLookupError:
            return True

    def _group_left(self) -> bool:
        """Whether any process of the command's group is still alive (zombies are reaped first)."""
        if not self._own_group:
            return False
        self._reap()
        try:
            os.killpg(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _stop_leftovers(self, ended_at: float) -> None:
        """The command exited but left processes in its group: TERM them, KILL after the grace.

        The TERM waits a poll after the command's end: a signal that ended the command may be
        on its way to allasrun too (slurmstepd signals one process after another), and then
        the leftovers have it already.
        """
        now = time.monotonic()
        if self._stopped_at is None:
            if now < ended_at + POLL:
                return
            log.warning("the command exited and left processes behind; stopping them before stage-out")
            self.send(signal.SIGTERM)
        elif not self._killed and now >= self._stopped_at + self._grace:
            log.warning("processes of the command outlived the %.0f s grace: killing them", self._grace)
            self.send(signal.SIGKILL)

    def _release_watchdog(self) -> None:
        """The job is over: the watchdog leaves without killing anything."""
        if self._watchdog >= 0:
            os.write(self._watchdog, b"done")
            os.close(self._watchdog)
            self._watchdog = -1

    def _reap(self) -> int | None:
        """Collect every exited child; return the command's exit code once it is among them."""
        result = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return result
            if pid == 0:
                return result
            if pid == self._pid:
                code = os.waitstatus_to_exitcode(status)
                result = code if code >= 0 else 128 - code


def _next_call(timer: Optional[Callable[[], Optional[float]]]) -> Optional[float]:
    """When (monotonic) `timer` wants to be called again, or None."""
    seconds = timer() if timer else None
    return None if seconds is None else time.monotonic() + seconds


def _in_terminal_foreground() -> bool:
    """Whether allasrun runs in the foreground process group of its controlling terminal."""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def _is_slurmstepd(info: signal.struct_siginfo) -> bool:
    """Whether a signal was sent by a process (SI_USER) the kernel calls slurmstepd."""
    if info.si_code != _SI_USER:
        return False
    try:
        return Path(f"/proc/{info.si_pid}/comm").read_text().strip() == "slurmstepd"
    except OSError:
        return False


def _watch(group: int) -> int:
    """Fork a watchdog that SIGKILLs `group` if allasrun dies without saying the job is over.

    PR_SET_PDEATHSIG reaches only the direct child, and a group outlives its leader: the
    workload of a SIGKILLed allasrun would run on with its token. The watchdog reads a pipe
    only allasrun writes: `done` lets it go, EOF alone means allasrun is gone. The write end
    is close-on-exec, so the command and everything it starts never holds it. Returns it.
    """
    read, write = os.pipe()
    if os.fork() == 0:  # pragma: no cover - runs in the watchdog
        try:
            os.closerange(0, read)  # the command's go pipe and allasrun's output among them
            os.closerange(read + 1, os.sysconf("SC_OPEN_MAX"))
            if not os.read(read, 4):
                os.killpg(group, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(read)
    return write


def _read_all(fd: int) -> bytes:
    """Read a pipe to its end (the writer closed it, or exec closed it for us)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)

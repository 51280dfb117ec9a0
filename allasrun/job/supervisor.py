"""Running the job command like a small init (tini): spawn, forward signals, reap, report.

Signals are blocked in allasrun and collected with sigwaitinfo, so none is lost between
spawning and waiting, and the keeper's and stager's threads (started after the fork, so
they inherit the mask) never receive one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, Optional

from allasrun.errors import CommandNotExecutable, CommandNotFound

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
_PR_SET_PDEATHSIG = 1
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

    def __init__(self) -> None:
        self._watched = {*FORWARDED, signal.SIGCHLD}
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._pid = 0
        self._go = -1
        self._errors = -1

    def prepare(self, executable: str, argv: Sequence[str]) -> int:
        """Block our signals and fork the child that will become the command."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        go_read, self._go = os.pipe()
        self._errors, error_write = os.pipe()  # close-on-exec: EOF means exec succeeded
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            self._become(parent, go_read, error_write, executable, argv)
        os.close(go_read)
        os.close(error_write)
        self._pid = pid
        return pid

    def _become(
        self, parent: int, go_read: int, error_write: int, executable: str, argv: Sequence[str]
    ) -> NoReturn:
        """In the child: die with allasrun, wait for the go, then exec with a clean slate."""
        code = 127
        try:
            os.close(self._go)
            os.close(self._errors)
            # If allasrun is SIGKILLed the kernel kills the command too: no orphaned job.
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

    def wait(
        self,
        timer: Optional[Callable[[], Optional[float]]] = None,
        on_signal: Optional[Callable[[int], None]] = None,
    ) -> int:
        """Forward signals until the child exits; its status, or 128+N if signal N killed it.

        `timer` (the deadline) is called at start, whenever the seconds it last returned have
        passed, and after `on_signal` has been told of a forwarded signal; it returns None
        when it needs no more calls.
        """
        timeout = timer() if timer else None
        while True:
            if timeout is None:
                info: Optional[signal.struct_siginfo] = signal.sigwaitinfo(self._watched)
            else:
                info = signal.sigtimedwait(self._watched, max(timeout, 0.0))
            if info is None:
                timeout = timer() if timer else None
            elif info.si_signo == signal.SIGCHLD:
                status = self._reap()
                if status is not None:
                    return status
            elif not self._came_from_terminal(info):
                self.send(info.si_signo)
                if on_signal is not None:
                    on_signal(info.si_signo)
                    timeout = timer() if timer else None

    def send(self, signum: int) -> None:
        """Signal the command (if it is still there)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signum)

    def _came_from_terminal(self, info: signal.struct_siginfo) -> bool:
        """Ctrl-C already reached the command through the terminal; sending it again hurts."""
        if info.si_signo not in _TERMINAL_SIGNALS or info.si_code != _SI_KERNEL:
            return False
        try:
            return os.getpgid(self._pid) == os.getpgrp()
        except ProcessLookupError:
            return True

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


def _read_all(fd: int) -> bytes:
    """Read a pipe to its end (the writer closed it, or exec closed it for us)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)

"""Running the job command like a small init (tini): spawn, forward signals, reap, report.

Signals are blocked in allasrun and collected with sigwaitinfo, so none is lost between
spawning and waiting, and the keeper thread (started after the spawn) never receives one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence

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
    """One child process, its signals and its exit status."""

    def __init__(self) -> None:
        self._watched = {*FORWARDED, signal.SIGCHLD}
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        self._pid = 0

    def spawn(self, executable: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
        """Block our signals, then start the command with a clean mask and a death signal."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        parent = os.getpid()
        prctl = self._prctl

        def in_child() -> None:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            # If allasrun is SIGKILLed the kernel kills the command too: no orphaned job.
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # allasrun died before prctl took effect
                os._exit(128 + signal.SIGKILL)

        # preexec_fn is safe here: no other thread exists yet (the keeper starts after this).
        process = subprocess.Popen(
            list(argv),
            executable=executable,
            env=dict(env),
            preexec_fn=in_child,  # noqa: PLW1509
        )
        # We reap the child ourselves; tell Popen so it does not warn about a running process.
        process.returncode = 0
        self._pid = process.pid
        return self._pid

    def wait(self) -> int:
        """Forward signals until the child exits; its status, or 128+N if signal N killed it."""
        while True:
            info = signal.sigwaitinfo(self._watched)
            if info.si_signo == signal.SIGCHLD:
                status = self._reap()
                if status is not None:
                    return status
            elif not self._came_from_terminal(info):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, info.si_signo)

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

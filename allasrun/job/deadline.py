"""The deadline: stop the command early enough that its results are uploaded before Slurm's kill.

At the job's end time minus a lead, the command gets a signal (SIGTERM by default); if it
is still running after a grace period it is killed, and stage-out runs on what exists. The
end time is re-read now and then, as `scontrol update TimeLimit=` can move it. Slurm's own
warning, `--signal=B:USR1@N`, starts the same sequence at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from typing import Optional

from allasrun.auth import utc_text
from allasrun.log import log
from allasrun.slurm import facts

RECHECK = 300.0  # seconds between readings of the job's end time


class Deadline:
    """A timer for Supervisor.wait: call it, and it says when to call it again."""

    def __init__(
        self,
        window: Callable[[], Optional[tuple[float, float]]],
        send: Callable[[int], None],
        lead: float,
        grace: float,
        signum: int = signal.SIGTERM,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._window = window
        self._send = send
        self.lead = lead  # as configured; the effective lead is at most half the job's time
        self.grace = grace
        self.signum = signum
        self.signalled_at: Optional[float] = None
        self._clock = clock
        self._end: Optional[float] = None
        self._effective_lead = lead
        self._read_at = float("-inf")
        self._done = False

    def __call__(self) -> Optional[float]:
        """Act if it is time; seconds until the next call, or None when there is nothing left."""
        now = self._clock()
        if self._done:
            return None
        if self.signalled_at is not None:
            if now < self.signalled_at + self.grace:
                return self.signalled_at + self.grace - now
            log.warning("the command outlived the %.0f s grace: killing it to stage out", self.grace)
            self._send(signal.SIGKILL)
            self._done = True
            return None
        if now - self._read_at >= RECHECK:
            self._read(now)
        if self._end is None:
            return RECHECK
        at = self._end - self._effective_lead
        if now < at:
            return min(at - now, RECHECK - (now - self._read_at))
        log.warning(
            "the job ends at %s: sending %s to the command %.0f s ahead, to stage out its results",
            utc_text(self._end),
            signal.Signals(self.signum).name,
            self._end - now,
        )
        self._send(self.signum)
        self.signalled_at = now
        return self.grace

    def on_signal(self, signum: int) -> None:
        """Slurm's warning (`--signal=B:USR1@N`, forwarded already) means: the deadline is now."""
        if signum != signal.SIGUSR1 or self.signalled_at is not None:
            return
        log.warning("SIGUSR1 from Slurm: the job is about to end; stopping the command to stage out")
        if self.signum != signal.SIGUSR1:
            self._send(self.signum)
        self.signalled_at = self._clock()

    def overdue(self) -> bool:
        """Whether the command would have been killed by now (end - lead + grace).

        The leader's waits for the step's other tasks and nodes end here: beyond this point,
        waiting longer for someone silent only loses the stage-out.
        """
        now = self._clock()
        if now - self._read_at >= RECHECK:
            self._read(now)
        return self._end is not None and now >= self._end - self._effective_lead + self.grace

    def _read(self, now: float) -> None:
        window = self._window()
        self._read_at = now
        if window is None:
            return
        start, end = window
        lead = min(self.lead, (end - start) / 2)  # a short job still gets to run half its time
        if end != self._end:
            log.info("job ends at %s; the command will be signalled %.0f s before", utc_text(end), lead)
        self._end, self._effective_lead = end, lead


def for_job(
    env: Mapping[str, str], send: Callable[[int], None], lead: float, grace: float, signum: int
) -> Optional[Deadline]:
    """In a Slurm job, a deadline that follows the job's end time; None outside one."""
    if facts.job_id(env) is None:
        return None
    return Deadline(lambda: facts.time_window(env), send, lead, grace, signum)

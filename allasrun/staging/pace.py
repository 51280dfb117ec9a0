"""How many transfers to keep in flight: more while that raises the rate, as far as it pays.

Small files are bound by the round trip of each request, not by bandwidth: on a store a few
milliseconds away, 8 requests at a time leave the link and the server mostly idle, and what
suits one site (the lab's loopback, Allas from Puhti, LUMI-O from elsewhere) does not suit the
next. So unless the user fixed a number (`#ALLAS option threads=N`, `--threads`), the stager
starts at THREADS and, after a first window to warm up (connections opened: its rate is not a
fair baseline), doubles the number in flight while each doubling raises the files done per
second by GAIN, up to CEILING; once one does not, it goes back to the last number that
paid and stays there. Large files are bound by bandwidth, so a doubling does not pay for them
and they stay at THREADS. Stage-in only (the stager says why): a stage-out stays at THREADS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

from allasrun.log import log

THREADS = 8  # transfers in flight to start with, and the default where nothing adapts
CEILING = 64  # at most this many in flight
GAIN = 1.25  # a doubling is kept if the rate grew by this factor
WINDOW = 1.0  # seconds of transfers, at least, behind each rate compared
LEAST = 4  # ... and at least this many per transfer in flight


class Pace:
    """The number of transfers in flight (`limit`), fixed or adapting as transfers finish."""

    def __init__(self, fixed: Optional[int], clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = fixed or THREADS
        self.ceiling = fixed or CEILING
        self._clock = clock
        self._settled = fixed is not None
        self._warm = False  # the first window is over
        self._best = 0.0  # files a second at the last limit that paid
        self._start = clock()
        self._done = 0

    def finished(self, count: int) -> None:
        """Account for `count` finished transfers; once a window is full, judge its rate."""
        if self._settled:
            return
        self._done += count
        elapsed = self._clock() - self._start
        if elapsed < WINDOW or self._done < LEAST * self.limit:
            return
        rate = self._done / elapsed
        if not self._warm:
            self._warm = True
        elif rate >= self._best * GAIN and self.limit < self.ceiling:
            self._best = rate
            self.limit = min(2 * self.limit, self.ceiling)
            log.debug("%.0f transfers a second; %d at a time from now", rate, self.limit)
        else:
            if rate < self._best * GAIN:  # the last doubling did not pay: back to what did
                self.limit //= 2
            self._settled = True
            log.debug("%.0f transfers a second; staying at %d at a time", rate, self.limit)
        self._start, self._done = self._clock(), 0

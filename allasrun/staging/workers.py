"""A few daemon threads that run the stager's jobs, and a caller that is never stuck waiting on them.

`concurrent.futures`' pool joins its threads when the interpreter exits, so one thread stuck in
a stalled connection would hold a stopped job until the socket's timeout, times every retry,
while Slurm's SIGKILL approaches. These threads are daemons: a run that a signal stops can walk
away from one. The caller waits for results in slices of `POLL` seconds, so it can look at a
stop flag between them, and hands out jobs a few at a time, so a million files never become a
million queued jobs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, Optional, TypeVar

T = TypeVar("T")
POLL = 0.2  # seconds between looks at the stop flag


class Workers(Generic[T]):
    """`size` daemon threads running the calls given to `submit`; results come from `collect`."""

    def __init__(self, size: int, name: str) -> None:
        self.size = 0
        self.busy = 0  # calls submitted and not yet collected
        self._name = name
        self._todo: queue.SimpleQueue[Optional[tuple[Future[T], Callable[[], T]]]] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()
        self.resize(size)

    def resize(self, size: int) -> None:
        """`size` threads from now: new ones start at once, extra ones end as they come free."""
        for number in range(self.size, size):
            threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True).start()
        for _ in range(size, self.size):
            self._todo.put(None)
        self.size = size

    def submit(self, call: Callable[[], T]) -> None:
        """Queue one call for the next free thread."""
        self._todo.put((Future(), call))
        self.busy += 1

    def collect(self, timeout: float = POLL) -> list[T]:
        """The results of the calls that have finished, waiting up to `timeout` s for the first.

        A call's exception is raised here, on the caller's thread.
        """
        try:
            done = [self._done.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.busy -= len(done)
        return [future.result() for future in done]

    def close(self) -> None:
        """Let the threads end once they are idle; one still in a call is left to it."""
        for _ in range(self.size):
            self._todo.put(None)

    def _work(self) -> None:
        while (item := self._todo.get()) is not None:
            future, call = item
            try:
                future.set_result(call())
            except BaseException as error:  # handed to the caller, which decides
                future.set_exception(error)
            self._done.put(future)

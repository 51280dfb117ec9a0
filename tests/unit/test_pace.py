"""The number of transfers in flight: fixed when the user says so, else, after a window to warm
up, doubled while a doubling raises the rate by GAIN, back to the last that paid once one does
not, never over CEILING."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from allasrun.staging.pace import CEILING, GAIN, LEAST, THREADS, WINDOW, Pace
from allasrun.staging.workers import Workers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(pace: Pace, clock: Clock, seconds_per_file: Callable[[int], float], windows: int) -> list[int]:
    """Finish files one by one, each taking what `seconds_per_file(limit)` says; the limits seen."""
    seen = [pace.limit]
    for _ in range(windows * LEAST * CEILING):
        clock.now += seconds_per_file(pace.limit)
        pace.finished(1)
        if pace.limit != seen[-1]:
            seen.append(pace.limit)
    return seen


def test_latency_bound_transfers_grow_to_the_ceiling() -> None:
    clock = Clock()
    pace = Pace(None, clock)
    assert run(pace, clock, lambda limit: 0.02 / limit, windows=32) == [8, 16, 32, 64]  # 20 ms each


def test_a_doubling_that_does_not_pay_is_undone_and_growth_stops() -> None:
    clock = Clock()
    pace = Pace(None, clock)
    # The server gives 16 at a time 1.5x the rate of 8, and 32 only 1.1x that of 16.
    rates = {8: 400.0, 16: 600.0, 32: 660.0, 64: 700.0}
    assert run(pace, clock, lambda limit: 1 / rates[limit], windows=16) == [8, 16, 32, 16]
    assert 660 / 600 < GAIN < 600 / 400


def test_a_slow_start_is_not_taken_for_a_baseline() -> None:
    clock = Clock()
    pace = Pace(None, clock)
    # Connections opened in the first second: 100 files a second; then 400 at any number.
    slow_start = lambda limit: 1 / (100 if clock.now < WINDOW else 400)  # noqa: E731
    assert run(pace, clock, slow_start, windows=4) == [8, 16, 8]


def test_bandwidth_bound_transfers_stay_at_the_start() -> None:
    clock = Clock()
    pace = Pace(None, clock)
    assert run(pace, clock, lambda limit: 0.5, windows=2) == [THREADS, 2 * THREADS, THREADS]


@pytest.mark.parametrize("fixed", [1, 8, 100])
def test_a_number_the_user_gave_is_kept(fixed: int) -> None:
    clock = Clock()
    pace = Pace(fixed, clock)
    assert run(pace, clock, lambda limit: 0.02 / limit, windows=2) == [fixed]


def test_no_judgement_before_a_window_is_full() -> None:
    clock = Clock()
    pace = Pace(None, clock)
    for _ in range(LEAST * THREADS - 1):  # files enough, time not
        clock.now += WINDOW / (2 * LEAST * THREADS)
        pace.finished(1)
    assert pace.limit == THREADS


def test_workers_resize_both_ways() -> None:
    pool: Workers[int] = Workers(2, "test-pace")
    pool.resize(5)
    for n in range(5):
        pool.submit(lambda n=n: n)  # type: ignore[misc]
    got: list[int] = []
    while len(got) < 5:
        got += pool.collect(1.0)
    pool.resize(1)
    pool.submit(lambda: 7)
    got += pool.collect(5.0)
    assert sorted(got) == [0, 1, 2, 3, 4, 7] and pool.size == 1
    pool.close()

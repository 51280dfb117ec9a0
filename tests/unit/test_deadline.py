"""The deadline's timeline on a fake clock: wait, signal at end minus lead, kill after the grace."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Optional

import pytest

from allasrun.job.deadline import RECHECK, Deadline
from allasrun.slurm import facts

LEAD, GRACE = 600.0, 60.0


class Job:
    """A fake clock, the job's time window as Slurm reports it, and the signals sent."""

    def __init__(self, start: float = 0.0, end: Optional[float] = 10_000.0) -> None:
        self.now = 0.0
        self.window: Optional[tuple[float, float]] = None if end is None else (start, end)
        self.readings = 0
        self.sent: list[int] = []

    def deadline(self, signum: int = signal.SIGTERM, lead: float = LEAD) -> Deadline:
        return Deadline(self._read, self.sent.append, lead, GRACE, signum, clock=lambda: self.now)

    def at(self, deadline: Deadline, now: float) -> Optional[float]:
        """Call the deadline at time `now`: what it says to wait."""
        self.now = now
        return deadline()

    def _read(self) -> Optional[tuple[float, float]]:
        self.readings += 1
        return self.window


def test_before_the_lead_it_says_how_long_to_wait() -> None:
    job = Job()
    deadline = job.deadline()
    assert job.at(deadline, 9_300.0) == 100.0  # the signal is due at 10 000 - 600
    assert job.at(deadline, 9_350.0) == 50.0
    assert job.sent == []
    assert deadline.signalled_at is None


def test_a_long_wait_is_cut_to_the_next_reading_of_the_end_time() -> None:
    job = Job()
    deadline = job.deadline()
    assert job.at(deadline, 0.0) == RECHECK
    assert job.at(deadline, 100.0) == RECHECK - 100.0


def test_at_end_minus_lead_it_signals_then_kills_after_the_grace() -> None:
    job = Job()
    deadline = job.deadline(signal.SIGINT)
    assert job.at(deadline, 9_400.0) == GRACE
    assert job.sent == [signal.SIGINT]
    assert deadline.signalled_at == 9_400.0
    assert job.at(deadline, 9_430.0) == 30.0
    assert job.sent == [signal.SIGINT]
    assert job.at(deadline, 9_460.0) is None
    assert job.sent == [signal.SIGINT, signal.SIGKILL]
    assert job.at(deadline, 20_000.0) is None
    assert job.sent == [signal.SIGINT, signal.SIGKILL]


def test_a_short_job_still_runs_half_its_time() -> None:
    job = Job(start=1_000.0, end=1_400.0)  # 400 s: the 600 s lead would signal before it starts
    deadline = job.deadline()
    assert job.at(deadline, 1_100.0) == 100.0
    assert job.at(deadline, 1_200.0) == GRACE
    assert job.sent == [signal.SIGTERM]


def test_a_moved_end_time_is_read_again_after_recheck_seconds() -> None:
    job = Job()
    deadline = job.deadline()
    assert job.at(deadline, 9_000.0) == RECHECK
    job.window = (0.0, 20_000.0)  # scontrol update TimeLimit=
    assert job.at(deadline, 9_000.0 + RECHECK - 1) == 1.0
    assert job.readings == 1
    assert job.at(deadline, 9_000.0 + RECHECK) == RECHECK
    assert job.readings == 2
    assert job.at(deadline, 9_400.0) == RECHECK - 100.0  # the old end would have signalled here
    assert job.sent == []
    job.window = (0.0, 9_700.0)
    assert job.at(deadline, 9_900.0) == GRACE
    assert job.sent == [signal.SIGTERM]


def test_slurms_usr1_starts_the_sequence_at_once() -> None:
    job = Job()
    deadline = job.deadline()
    job.at(deadline, 100.0)
    job.now = 150.0
    deadline.on_signal(signal.SIGUSR2)
    assert deadline.signalled_at is None
    deadline.on_signal(signal.SIGUSR1)
    deadline.on_signal(signal.SIGUSR1)
    assert job.sent == [signal.SIGTERM]
    assert deadline.signalled_at == 150.0
    assert job.at(deadline, 160.0) == GRACE - 10.0
    assert job.at(deadline, 150.0 + GRACE) is None
    assert job.sent == [signal.SIGTERM, signal.SIGKILL]


def test_usr1_as_the_configured_signal_is_not_sent_twice() -> None:
    job = Job()
    deadline = job.deadline(signal.SIGUSR1)
    deadline.on_signal(signal.SIGUSR1)  # the command got it from Slurm already
    assert job.sent == []
    assert deadline.signalled_at == 0.0
    assert job.at(deadline, GRACE) is None
    assert job.sent == [signal.SIGKILL]


def test_outside_a_job_it_only_rechecks() -> None:
    job = Job(end=None)
    deadline = job.deadline()
    assert job.at(deadline, 0.0) == RECHECK
    assert job.at(deadline, 1_000_000.0) == RECHECK
    assert job.at(deadline, 1_000_001.0) == RECHECK
    assert job.readings == 2
    assert job.sent == []
    assert deadline.signalled_at is None


def _squeue_says(monkeypatch: pytest.MonkeyPatch, answer: Optional[str]) -> list[list[str]]:
    """Fake the Slurm runner: squeue answers `answer` (None: it failed); the calls made."""
    calls: list[list[str]] = []

    def run(command: list[str], env: Mapping[str, str]) -> Optional[str]:
        calls.append(command)
        return answer if command[0] == "squeue" else None

    monkeypatch.setattr(facts, "_run", run)
    return calls


def _local(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


FROZEN = {"SLURM_JOB_ID": "7", "SLURM_JOB_START_TIME": "1000", "SLURM_JOB_END_TIME": "4600"}


def test_a_time_limit_extended_after_the_start_wins_over_the_frozen_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SLURM_JOB_END_TIME is set once, at job start; `scontrol update TimeLimit=+1-0` moves squeue's."""
    _squeue_says(monkeypatch, "2026-01-01T10:00:00 2026-01-02T11:00:00\n")
    window = facts.time_window(FROZEN)
    assert window is not None and window[1] == _local("2026-01-02T11:00:00")


def test_the_variables_serve_when_squeue_cannot_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _squeue_says(monkeypatch, None)
    assert facts.time_window(FROZEN) == (1000.0, 4600.0)
    assert calls and calls[0][0] == "squeue"
    _squeue_says(monkeypatch, "N/A N/A\n")
    assert facts.time_window(FROZEN) == (1000.0, 4600.0)


def test_without_the_variables_squeue_gives_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    _squeue_says(monkeypatch, "2026-01-01T10:00:00 2026-01-01T11:00:00\n")
    assert facts.time_window({"SLURM_JOB_ID": "7"}) == (
        _local("2026-01-01T10:00:00"),
        _local("2026-01-01T11:00:00"),
    )
    _squeue_says(monkeypatch, None)
    assert facts.time_window({"SLURM_JOB_ID": "7"}) is None


@pytest.mark.parametrize(
    ("line", "whole"),
    [
        ("ProctrackType=proctrack/linuxproc", True),
        ("ProctrackType=proctrack/cgroup", True),
        ("proctracktype = proctrack/pgid", False),
        ("# ProctrackType=proctrack/pgid", True),
    ],
)
def test_whether_slurmstepd_signals_every_process_of_a_step(tmp_path: Path, line: str, whole: bool) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"ClusterName=mini\n{line}\n")
    assert facts.signals_reach_whole_step({"SLURM_CONF": str(conf)}) is whole
    assert facts.signals_reach_whole_step({"SLURM_CONF": str(tmp_path / "none")}) is True  # the default


def test_overdue_once_the_command_would_have_been_killed() -> None:
    job = Job()
    deadline = job.deadline()
    job.now = 9_400.0 + GRACE - 1  # signal at 10 000 - 600, kill a grace later
    assert not deadline.overdue()
    job.now = 9_400.0 + GRACE
    assert deadline.overdue()
    assert not Job(end=None).deadline().overdue()

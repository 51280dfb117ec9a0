"""Roles in a multi-task step, from the environment Slurm gives each task."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from allasrun.errors import EXIT_STAGE_IN
from allasrun.job import step
from allasrun.job.step import Placement, Step, from_env, tasks_on_node

TASK = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
    "SLURM_NODEID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_PROCID": "3",
}


@pytest.mark.parametrize(
    ("layout", "node", "tasks"), [("4", 0, 4), ("2(x3)", 2, 2), ("3,1", 1, 1), ("2(x2),1", 2, 1)]
)
def test_tasks_per_node_layouts(layout: str, node: int, tasks: int) -> None:
    assert tasks_on_node(layout, node) == tasks


def test_follower_and_leader() -> None:
    follower = from_env(TASK)
    assert follower is not None
    assert (follower.leads, follower.stages_shared, follower.node_tasks) == (False, False, 2)
    leader = from_env({**TASK, "SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NODEID": "0"})
    assert leader is not None and leader.leads and leader.stages_shared


def test_no_role_outside_multi_task_steps() -> None:
    assert from_env({}) is None  # the batch step has no SLURM_STEP_TASKS_PER_NODE
    alone = {**TASK, "SLURM_STEP_TASKS_PER_NODE": "1", "SLURM_NODEID": "0", "SLURM_LOCALID": "0"}
    assert from_env({**alone, "SLURM_PROCID": "0"}) is None  # one task on one node


def test_the_only_task_on_a_node_of_a_bigger_step_never_stages_the_shared_part() -> None:
    """Node 2 of `2(x2),1` (review #8): the node count comes from the layout itself too."""
    last = from_env({**TASK, "SLURM_NODEID": "2", "SLURM_LOCALID": "0", "SLURM_PROCID": "4"})
    assert last is not None and (last.leads, last.stages_shared, last.nodes) == (True, False, 3)


def test_one_task_per_node_of_a_multi_node_step_still_has_a_role() -> None:
    """`srun -N 2 -n 2`: each node's only task leads its node; PROCID 0 stages the shared part."""
    env = {**TASK, "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_STEP_NUM_NODES": "2", "SLURM_LOCALID": "0"}
    second = from_env({**env, "SLURM_NODEID": "1", "SLURM_PROCID": "1"})
    first = from_env({**env, "SLURM_NODEID": "0", "SLURM_PROCID": "0"})
    assert second is not None and (second.leads, second.stages_shared, second.node_id, second.nodes) == (
        True,
        False,
        1,
        2,
    )
    assert first is not None and first.stages_shared


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _placement(directory: Path, tasks: int = 2) -> Placement:
    role = Step("7", "0", local_id=0, proc_id=0, node_tasks=tasks)
    return Placement(directory, role)


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    return thread, result


def test_the_leader_does_not_wait_for_a_follower_that_died(tmp_path: Path) -> None:
    where = _placement(tmp_path, tasks=3)
    (tmp_path / "follower-1").write_text(f"{_dead_pid()}\n")  # killed: it never says done
    (tmp_path / "done-2").write_text("0\n")
    thread, result = _in_thread(lambda: step.await_followers(where))
    thread.join(20)
    assert result == [None], "the leader waits forever for a dead follower"


def test_the_leader_gives_up_on_a_follower_that_never_joined(tmp_path: Path) -> None:
    """A follower that gave up on a slow leader (or was never started) never writes a word."""
    thread, result = _in_thread(lambda: step.await_followers(_placement(tmp_path), no_show=0.5))
    thread.join(20)
    assert result == [None], "the leader waits forever for a follower that never came"


def test_the_leader_waits_for_a_live_follower(tmp_path: Path) -> None:
    (tmp_path / "follower-1").write_text(f"{os.getpid()}\n")
    thread, result = _in_thread(lambda: step.await_followers(_placement(tmp_path), no_show=0.1))
    thread.join(1)
    assert thread.is_alive()
    (tmp_path / "done-1").write_text("0\n")
    thread.join(20)
    assert result == [None]


def test_a_leader_clears_what_an_earlier_run_left_before_it_leads(tmp_path: Path) -> None:
    """A requeue on the same node, or a leader SIGKILLed mid stage-out, leaves its word behind."""
    where = _placement(tmp_path / "step-7.0")
    where.directory.mkdir(mode=0o700)
    for name in ("ready", "done-1", "follower-1"):
        (where.directory / name).write_text("go\n" if name == "ready" else "0\n")
    with step.leading(where) as directory:
        assert sorted(p.name for p in directory.iterdir()) == ["leader"]


def test_a_follower_ignores_a_ready_left_by_a_dead_leader(tmp_path: Path) -> None:
    (tmp_path / "leader").write_text(f"{_dead_pid()}\n")
    (tmp_path / "ready").write_text("go\n")
    thread, result = _in_thread(lambda: step.await_leader(tmp_path, 1, leader_alive=1.0))
    thread.join(20)
    assert result == [EXIT_STAGE_IN]  # not `go`: nobody staged in for this run


def test_a_follower_waits_for_the_next_round_not_the_one_it_took_part_in(tmp_path: Path) -> None:
    """Two allasrun calls in one srun task: the first round's `ready` is not the second's."""
    (tmp_path / "leader").write_text(f"{os.getpid()}\n")  # the first round's leader, staging out
    (tmp_path / "ready").write_text("go\n")
    (tmp_path / "done-1").write_text("0\n")
    thread, result = _in_thread(lambda: step.await_leader(tmp_path, 1, leader_alive=1.0))
    thread.join(1.5)
    assert thread.is_alive() and result == []
    for name in ("ready", "done-1"):  # the second round's leader clears them, stages in, says go
        (tmp_path / name).unlink()
    (tmp_path / "ready").write_text("go\n")
    thread.join(20)
    assert result == [None]
    assert (tmp_path / "follower-1").read_text().strip() == str(os.getpid())  # it joined this round


def test_the_leader_stops_waiting_for_a_live_follower_at_the_deadline(tmp_path: Path) -> None:
    """Past the point where the deadline kills, waiting longer only loses the stage-out."""
    (tmp_path / "follower-1").write_text(f"{os.getpid()}\n")
    thread, result = _in_thread(lambda: step.await_followers(_placement(tmp_path), overdue=lambda: True))
    thread.join(20)
    assert result == [None]

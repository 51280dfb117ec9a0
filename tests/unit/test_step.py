"""Roles in a multi-task step, from the environment Slurm gives each task."""

from __future__ import annotations

import pytest

from allasrun.job.step import from_env, tasks_on_node

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
    assert (follower.leads, follower.stages_out, follower.node_tasks) == (False, False, 2)
    leader = from_env({**TASK, "SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NODEID": "0"})
    assert leader is not None and leader.leads and leader.stages_out


def test_no_role_outside_multi_task_steps() -> None:
    assert from_env({}) is None  # the batch step has no SLURM_STEP_TASKS_PER_NODE
    assert from_env({**TASK, "SLURM_NODEID": "2"}) is None  # alone on its node

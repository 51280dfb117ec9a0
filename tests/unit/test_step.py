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
    assert (follower.leads, follower.stages_shared, follower.node_tasks) == (False, False, 2)
    leader = from_env({**TASK, "SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NODEID": "0"})
    assert leader is not None and leader.leads and leader.stages_shared


def test_no_role_outside_multi_task_steps() -> None:
    assert from_env({}) is None  # the batch step has no SLURM_STEP_TASKS_PER_NODE
    assert from_env({**TASK, "SLURM_NODEID": "2"}) is None  # alone on its node


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

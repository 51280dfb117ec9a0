"""Nodes of a multi-node step kept in step through a shared directory; threads play the nodes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import pytest

from allasrun.errors import AuthenticationFailed, UnsafeFile
from allasrun.job.nodes import NodeSync
from allasrun.job.step import Step


def _role(node: int) -> Step:
    return Step("7", "0", local_id=0, proc_id=node, node_tasks=1, node_id=node, nodes=2)


def _second_node(directory: Path, events: list[str], own_status: Optional[int] = None) -> threading.Thread:
    """Node 1's leader: its own stage-in, then the job leader's word, then its command."""

    def run() -> None:
        with NodeSync(directory, _role(1)) as sync:
            word = sync.stage_in_done(own_status)
            events.append(f"node 1 starts: {word}")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_other_nodes_start_after_the_shared_stage_in_and_shared_stage_out_waits_for_them(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    directory = tmp_path / "step-7.0"
    with NodeSync(directory, _role(0)) as leader:
        second = _second_node(directory, events)
        second.join(0.5)
        assert second.is_alive() and events == []  # waiting for the shared inputs
        events.append("shared stage-in done")
        assert leader.stage_in_done(None) is None
        second.join(5)
        leader.commands_done()  # returns only once node 1 is done
        events.append("shared stage-out")
    assert events == ["shared stage-in done", "node 1 starts: None", "shared stage-out"]
    assert not directory.exists()


def test_a_failed_shared_stage_in_stops_every_node(tmp_path: Path) -> None:
    events: list[str] = []
    with NodeSync(tmp_path / "s", _role(0)) as leader:
        second = _second_node(tmp_path / "s", events)
        assert leader.stage_in_done(74) == 74
    second.join(5)
    assert events == ["node 1 starts: 74"]


def test_a_leader_that_fails_before_staging_tells_the_others_why(tmp_path: Path) -> None:
    events: list[str] = []
    second = _second_node(tmp_path / "s", events)
    with pytest.raises(AuthenticationFailed), NodeSync(tmp_path / "s", _role(0)):
        raise AuthenticationFailed("refused")
    second.join(5)
    assert events == ["node 1 starts: 77"]
    assert not (tmp_path / "s").exists()


def test_a_node_whose_own_stage_in_failed_does_not_wait(tmp_path: Path) -> None:
    with NodeSync(tmp_path / "s", _role(1)) as sync:
        assert sync.stage_in_done(74) == 74
    assert (tmp_path / "s" / "done-1").exists()


def test_without_a_directory_it_does_nothing(tmp_path: Path) -> None:
    with NodeSync(None, _role(1)) as sync:
        assert sync.stage_in_done(None) is None
        sync.commands_done()
    assert list(tmp_path.iterdir()) == []


def test_a_shared_directory_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(UnsafeFile, match="cannot make the step's shared directory"):
        NodeSync(tmp_path / "file" / "step-7.0", _role(1))


def test_the_job_leader_stops_waiting_for_a_silent_node_at_the_deadline(tmp_path: Path) -> None:
    """A node SIGKILLed never says done; past the deadline the job leader stages out anyway."""
    leader = NodeSync(tmp_path / "s", _role(0))
    returned: list[str] = []

    def wait() -> None:
        leader.commands_done(lambda: True)
        returned.append("returned")

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(20)
    assert returned == ["returned"]

"""Tasks of one srun step sharing one keeper per node: `srun -N M -n N allasrun -- cmd`.

On each node the task with SLURM_LOCALID 0 leads: it authenticates, writes the client files
into a directory the node's tasks share, stages in, and says `ready` (or the exit status that
stops everyone). The other tasks wait for that, run their command with the leader's files,
and report `done`. The leader keeps renewing until its node's tasks are done. Node-local
directives are staged by every node's leader; shared ones once per job, by the leader with
SLURM_PROCID 0 (`nodes.py` keeps the nodes in step). Keystone sees one login per node.

Nobody waits for ever on someone who is gone: a follower gives up on a leader that is not
alive (its pid in `leader`), the leader on a follower whose pid (`follower-N`, written when
it takes the leader's `go`) is gone or that never came. What an earlier run left in the
directory (a requeue, a leader killed mid stage-out, a second allasrun in the same task) is
cleared by the leader before it leads, and a follower never takes a `ready` of a run it
already took part in (its `done-N` is there).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from allasrun import paths
from allasrun.atomicfile import write_atomic
from allasrun.errors import EXIT_STAGE_IN, AllasrunError
from allasrun.log import log
from allasrun.process import alive
from allasrun.slurm import facts

POLL = 0.2  # seconds between looks at the shared directory; tasks wait here only at start/end
_REPEAT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


@dataclass(frozen=True)
class Step:
    """A task's place in a multi-task step."""

    job: str
    step_id: str
    local_id: int
    proc_id: int
    node_tasks: int
    node_id: int = 0
    nodes: int = 1

    @property
    def leads(self) -> bool:
        """Whether this task keeps the token and stages for its node."""
        return self.local_id == 0

    @property
    def stages_shared(self) -> bool:
        """Whether this task stages the directives that are not node-local (once per job)."""
        return self.proc_id == 0

    def directory(self, base: Path) -> Path:
        """The directory the node's tasks of this step share."""
        return base / f"step-{self.job}.{self.step_id}"


@dataclass(frozen=True)
class Placement:
    """Where this allasrun stands, and the directory that holds the files its command uses.

    It leads (authenticates, keeps the token, stages) unless another allasrun does: one
    around it (`enclosed`, e.g. the batch step under `allasrun sbatch`) or its node's
    leading task of the step.
    """

    directory: Path
    role: Optional[Step] = None
    enclosed: bool = False

    @property
    def leads(self) -> bool:
        """Whether this process keeps the token for its command."""
        return not self.enclosed and (self.role is None or self.role.leads)

    @property
    def stages_shared(self) -> bool:
        """Whether this process stages the directives that are not node-local."""
        return self.role is None or self.role.stages_shared


def place(env: Mapping[str, str], stages: bool) -> Placement:
    """Find where this allasrun stands from its environment.

    An allasrun that has staging of its own to do never hides under an enclosing one, and
    one on another node (a multi-node step inside a batch step under allasrun) cannot: its
    files are on that node.
    """
    outer = env.get("ALLASRUN_DIR")
    here = env.get("ALLASRUN_NODE") == facts.node_name(env)
    if outer and here and not stages and (Path(outer) / "env").is_file():
        return Placement(Path(outer), enclosed=True)
    role = from_env(env)
    base = paths.runtime_dir(env)
    if role is None:
        return Placement(base / f"run-{os.getpid()}")
    return Placement(role.directory(base), role)


@contextlib.contextmanager
def leading(where: Placement) -> Iterator[Path]:
    """Leader: make the run's private directory, tell followers of a failure, remove it after."""
    directory = paths.owned_private_dir(where.directory)
    if where.role is not None:
        _clear(directory)
        mark_started(directory)
    try:
        yield directory
    except AllasrunError as error:
        announce(where, error.exit_code)  # the step's other tasks stop with the same status
        raise
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def from_env(env: Mapping[str, str]) -> Optional[Step]:
    """The step role, or None outside a step of more than one task or more than one node."""
    try:
        node = int(env["SLURM_NODEID"])
        counts = _tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
        role = Step(
            env["SLURM_JOB_ID"],
            env["SLURM_STEP_ID"],
            int(env["SLURM_LOCALID"]),
            int(env["SLURM_PROCID"]),
            counts[node],
            node,
            int(env.get("SLURM_STEP_NUM_NODES") or len(counts)),
        )
    except (KeyError, ValueError, IndexError):
        return None
    return role if role.node_tasks > 1 or role.nodes > 1 else None


def tasks_on_node(layout: str, node: int) -> int:
    """Slurm's `2(x3),1` (tasks per node) expanded, for node number `node`."""
    return _tasks_per_node(layout)[node]


def _tasks_per_node(layout: str) -> list[int]:
    """Slurm's `2(x3),1` expanded: one count per node of the step."""
    counts: list[int] = []
    for part in layout.split(","):
        match = _REPEAT.match(part.strip())
        if match is None:
            raise ValueError(f"unknown tasks-per-node layout {layout!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def announce(where: Placement, status: Optional[int]) -> None:
    """Leader: the files are written and stage-in is over; None means go, a number means stop."""
    if where.role is not None:
        write_atomic(where.directory / "ready", "go\n" if status is None else f"{status}\n")


def await_leader(directory: Path, local_id: int, leader_alive: float = 30.0) -> Optional[int]:
    """Follower: wait for the leader's word; the status to exit with if the command must not run.

    Only a live leader's word counts, and only if this task has not taken part in that run
    yet. Without a live leader for `leader_alive` seconds (none came, or it died before it
    said ready) the follower reports a stage-in failure. On `go` it joins the run.
    """
    waited_since = time.monotonic()
    while True:
        leader = _pid_in(directory / "leader")
        if leader is not None and alive(leader):
            waited_since = time.monotonic()
            word = _read_word(directory / "ready")
            if word is not None and not (directory / f"done-{local_id}").exists():
                if word != "go":
                    return int(word)
                write_atomic(directory / f"follower-{local_id}", f"{os.getpid()}\n")
                return None
        elif time.monotonic() - waited_since > leader_alive:
            return EXIT_STAGE_IN
        time.sleep(POLL)


def mark_started(directory: Path) -> None:
    """Leader: record its pid so followers can tell a dead leader from a slow stage-in."""
    write_atomic(directory / "leader", f"{os.getpid()}\n")


def mark_done(directory: Path, local_id: int, status: int) -> None:
    """Follower: its command has ended."""
    write_atomic(directory / f"done-{local_id}", f"{status}\n")


def never() -> bool:
    """An `overdue` for waits without a deadline."""
    return False


def await_followers(where: Placement, no_show: float = 30.0, overdue: Callable[[], bool] = never) -> None:
    """Leader: wait until the node's other tasks are done, keeping their token alive meanwhile.

    A follower that is gone without a word (killed) is not waited for, nor one that has not
    joined within `no_show` seconds (it gave up on this leader, or never started), nor any
    once the deadline is `overdue`: their own deadlines have stopped them by then.
    """
    count = where.role.node_tasks if where.role is not None else 1
    pending = set(range(1, count))
    started = time.monotonic()
    while pending:
        for local_id in sorted(pending):
            if _follower_over(where.directory, local_id, time.monotonic() - started > no_show):
                pending.discard(local_id)
        if pending and overdue():
            log.warning("past the deadline: staging out without waiting for task(s) %s", sorted(pending))
            return
        if pending:
            time.sleep(POLL)


def _follower_over(directory: Path, local_id: int, late: bool) -> bool:
    """Whether the leader need not wait for this follower any longer (and why, if not done).

    `late`: a follower that has not joined by now is not coming.
    """
    if (directory / f"done-{local_id}").exists():
        return True
    pid = _pid_in(directory / f"follower-{local_id}")
    if pid is None:
        if late:
            log.warning("task %d of this node never joined the step; not waiting for it", local_id)
        return late
    if alive(pid):
        return False
    log.warning("task %d of this node ended without a word (killed?); not waiting for it", local_id)
    return True


def _clear(directory: Path) -> None:
    """Leader: remove the words an earlier run of this step left in the directory."""
    for path in directory.iterdir():
        if path.name == "ready" or path.name.startswith(("done-", "follower-")):
            path.unlink(missing_ok=True)


def _read_word(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _pid_in(path: Path) -> Optional[int]:
    word = _read_word(path)
    return int(word) if word and word.isdigit() else None

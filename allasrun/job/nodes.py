"""The nodes of a multi-node step, kept in step for what is staged once per job.

Directives whose local side is shared by all nodes are staged by the leader of SLURM_PROCID 0
alone; the other nodes must not start their command before those inputs are in, and that
leader must not upload before every node's command has ended. They meet in a directory on the
shared home (`paths.shared_dir`): the job leader writes `ready` (`go`, or the status that
stops everyone), every other node leader writes `done-<node>` on its way out, whatever its
way out was, and the job leader removes the directory once all have. A node that dies without
a word (SIGKILL) keeps the job leader waiting until the deadline, no longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from allasrun import paths
from allasrun.atomicfile import write_atomic
from allasrun.errors import UnsafeFile
from allasrun.job.step import POLL, Step, never
from allasrun.log import log


class NodeSync:
    """One node leader's part in a multi-node step; `NodeSync(None, None)` does nothing."""

    def __init__(self, directory: Optional[Path], role: Optional[Step]) -> None:
        self._directory = _meeting_place(directory) if directory is not None and role is not None else None
        self._role = role

    def stage_in_done(self, status: Optional[int]) -> Optional[int]:
        """After this node's stage-in: publish (job leader) or wait for the shared inputs.

        Returns the status that stops this node's command, or None to start it.
        """
        if self._directory is None or self._role is None:
            return status
        ready = self._directory / "ready"
        if self._role.stages_shared:
            write_atomic(ready, "go\n" if status is None else f"{status}\n")
            return status
        if status is not None:
            return status
        while not ready.exists():
            time.sleep(POLL)
        word = ready.read_text().strip()
        return None if word == "go" else int(word)

    def commands_done(self, overdue: Callable[[], bool] = never) -> None:
        """Job leader: wait until every other node's command has ended (before shared stage-out).

        Not beyond the deadline (`overdue`): a node killed without a word never says done,
        and every other node's own deadline has stopped its command by then.
        """
        if self._directory is None or self._role is None or not self._role.stages_shared:
            return
        others = [n for n in range(self._role.nodes) if n != self._role.node_id]
        while not all((self._directory / f"done-{n}").exists() for n in others):
            if overdue():
                log.warning("past the deadline: staging out without waiting for the other nodes")
                return
            time.sleep(POLL)

    def __enter__(self) -> NodeSync:
        return self

    def __exit__(self, kind: object, error: Optional[BaseException], traceback: object) -> None:
        """On the way out, whatever it was: nobody is left waiting for this node.

        Another node says it is done. The job leader, if it never got as far as `ready`,
        says why (so no node waits for inputs that will not come), waits for every node to
        be done, and removes the directory.
        """
        if self._directory is None or self._role is None:
            return
        if not self._role.stages_shared:
            write_atomic(self._directory / f"done-{self._role.node_id}", "done\n")
            return
        if not (self._directory / "ready").exists():
            write_atomic(self._directory / "ready", f"{getattr(error, 'exit_code', 1)}\n")
        self.commands_done()
        for path in self._directory.iterdir():
            path.unlink(missing_ok=True)
        self._directory.rmdir()


def _meeting_place(directory: Path) -> Path:
    """The step's shared directory, ours alone; one clear error if it cannot be made."""
    try:
        return paths.owned_private_dir(directory)
    except OSError as error:
        raise UnsafeFile(
            f"{directory}: cannot make the step's shared directory ({error.strerror}); "
            "set ALLASRUN_SHARED_DIR to a directory every node of the job sees"
        ) from None

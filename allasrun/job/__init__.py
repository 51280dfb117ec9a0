"""The job side of a run: the command's process, its deadline, the renewal thread, the files.

Also where this allasrun stands in a multi-task step, and the environment the command gets.

Front door for commands; nothing here imports staging, and auth only for its types and
`TokenSource`.
"""

from allasrun.job import deadline, step
from allasrun.job.clientfiles import ClientFiles, child_environment, read_env
from allasrun.job.keeper import Keeper
from allasrun.job.nodes import NodeSync
from allasrun.job.step import Placement
from allasrun.job.supervisor import Supervisor, resolve

__all__ = [
    "ClientFiles",
    "Keeper",
    "NodeSync",
    "Placement",
    "Supervisor",
    "child_environment",
    "deadline",
    "read_env",
    "resolve",
    "step",
]

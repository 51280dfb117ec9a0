"""The job side of a run: the command, its deadline, the renewal, the files, the token service.

The token service is where the command's clients re-authenticate. Also where this allasrun
stands in a multi-task step, and the environment the command gets.

Front door for commands; nothing here imports staging, and auth only for its types and
`TokenSource`.
"""

from allasrun.job import deadline, step
from allasrun.job.clientfiles import ClientFiles, child_environment, files_environment
from allasrun.job.keeper import Keeper
from allasrun.job.nodes import NodeSync
from allasrun.job.step import Placement
from allasrun.job.supervisor import Supervisor, resolve
from allasrun.job.tokenservice import TokenService

__all__ = [
    "ClientFiles",
    "Keeper",
    "NodeSync",
    "Placement",
    "Supervisor",
    "TokenService",
    "child_environment",
    "deadline",
    "files_environment",
    "resolve",
    "step",
]

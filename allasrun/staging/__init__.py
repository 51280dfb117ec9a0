"""Staging: `#ALLAS` directives in, verified transfers through a `Store`, a report out.

Front door: `jobscript` reads a script's plan, `StagingRun` stages one run and decides what
its outcome means (`StageResult`), `look_up` checks a plan before anything runs. What moves
bytes (the stager, hashing, threads, the stores' HTTP) is imported on first use, so a run that
stages nothing starts without it.
"""

from typing import TYPE_CHECKING, Any

from allasrun.staging import jobscript
from allasrun.staging.plan import (
    REMOTES,
    S3,
    SWIFT,
    Remote,
    Settings,
    StagePlan,
    parse_moment,
    parse_segment_size,
)
from allasrun.staging.result import StageResult
from allasrun.staging.run import KeysFor, StagingRun
from allasrun.staging.transfer import MIB

if TYPE_CHECKING:
    from allasrun.staging.lookup import LookUp, look_up

__all__ = [
    "MIB",
    "REMOTES",
    "S3",
    "SWIFT",
    "KeysFor",
    "LookUp",
    "Remote",
    "Settings",
    "StagePlan",
    "StageResult",
    "StagingRun",
    "jobscript",
    "look_up",
    "parse_moment",
    "parse_segment_size",
]


def __getattr__(name: str) -> Any:
    """`look_up` and `LookUp`, imported when a command first asks for them."""
    if name in ("LookUp", "look_up"):
        from allasrun.staging import lookup

        return getattr(lookup, name)
    raise AttributeError(f"module 'allasrun.staging' has no attribute {name!r}")

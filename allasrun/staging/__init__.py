"""Staging: `#ALLAS` directives in, verified transfers through a `Store`, a report out.

Front door: `jobscript` reads a script's plan, `StagingRun` stages one run and decides what
its outcome means (`StageResult`), `look_up` checks a plan before anything runs. Nothing
here imports swiftclient until a store is first used.
"""

from allasrun.staging import jobscript
from allasrun.staging.lookup import LookUp, look_up
from allasrun.staging.plan import Settings, StagePlan, parse_size
from allasrun.staging.result import StageResult
from allasrun.staging.run import StagingRun
from allasrun.staging.transfer import MIB

__all__ = [
    "MIB",
    "LookUp",
    "Settings",
    "StagePlan",
    "StageResult",
    "StagingRun",
    "jobscript",
    "look_up",
    "parse_size",
]

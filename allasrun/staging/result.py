"""What a stage means for the run: the rules behind exit codes 74 and 75, in one place.

A stage-in that fails or is interrupted means the command must not start (74, or 128+N for
signal N). A stage-out that fails means results did not land (75), except that outputs a
failed command never produced are its failure, not staging's: its own status stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from allasrun.errors import EXIT_STAGE_IN, EXIT_STAGE_OUT
from allasrun.log import log
from allasrun.staging.transfer import MISSING, Transfer, problems


@dataclass(frozen=True)
class StageResult:
    """The transfers of one stage and the exit status they call for.

    After stage-in, `exit_status` is None when the command may start. After stage-out it is
    the run's final status: the command's own, or 75.
    """

    transfers: tuple[Transfer, ...]
    exit_status: Optional[int]


def after_stage_in(transfers: Sequence[Transfer], stop_signal: Optional[int]) -> StageResult:
    """Judge a stage-in, logging why the command will not start if it will not."""
    if stop_signal is not None:
        log.error("stage-in interrupted by signal %d: the command was not started", stop_signal)
        return StageResult(tuple(transfers), 128 + stop_signal)
    failed = problems(transfers)
    for transfer in failed:
        log.error("stage-in %s: %s: %s", transfer.status, transfer.where, transfer.error)
    if failed:
        log.error(
            "error: stage-in failed for %d item(s) (first: %s: %s): the command was not started",
            len(failed),
            failed[0].where,
            failed[0].error,
        )
        return StageResult(tuple(transfers), EXIT_STAGE_IN)
    return StageResult(tuple(transfers), None)


def after_stage_out(transfers: Sequence[Transfer], command_status: int) -> StageResult:
    """Judge a stage-out: 75 if a result the command produced did not land, else its status."""
    for transfer in problems(transfers):
        log.error(
            "stage-out %s: %s: %s -> %s: %s",
            transfer.status,
            transfer.where,
            transfer.source,
            transfer.destination,
            transfer.error,
        )
    failed = [t for t in problems(transfers) if not (t.status == MISSING and command_status != 0)]
    if failed:
        log.error(
            "error: stage-out failed for %d file(s); the command's exit status was %d",
            len(failed),
            command_status,
        )
        return StageResult(tuple(transfers), EXIT_STAGE_OUT)
    return StageResult(tuple(transfers), command_status)

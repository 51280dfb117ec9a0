"""`StagingRun`: the staging of one run, from the plan to the report.

The job side calls three things in order, `stage_in`, `stage_out` and `finish`, and uses
the exit statuses they return; what is fetched, uploaded, judged and reported is decided
here. The store (and swiftclient) is built on first use: a run that stages nothing never
imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from allasrun.errors import LocalFileError, UsageError
from allasrun.log import log
from allasrun.staging.plan import StagePlan
from allasrun.staging.result import StageResult, after_stage_in, after_stage_out
from allasrun.staging.select import local_path
from allasrun.staging.transfer import Transfer, summarise

if TYPE_CHECKING:  # the stager (threads, hashing) and the store load only when something is staged
    from allasrun.staging.stager import Stager
    from allasrun.staging.store import Credentials, Store


class StagingRun:
    """Stage-in, stage-out and the report for one run of a job."""

    def __init__(
        self,
        plan: StagePlan,
        credentials: Credentials,
        workdir: Path,
        store: Optional[Store] = None,
    ) -> None:
        self.plan = plan
        self.workdir = workdir
        self.transfers: list[Transfer] = []
        self._credentials = credentials
        self._store = store
        self._stager: Optional[Stager] = None

    @staticmethod
    def check_report(plan: StagePlan, workdir: Path) -> None:
        """Refuse a report that could never be written, before Keystone is asked or anything runs.

        At the end of a run a failed report may only be logged (the command's status stands),
        so a path that is a directory, or a folder allasrun may not write in, is said now.
        """
        if plan.settings.report is None:
            return
        path = local_path(plan.settings.report, workdir)
        if path.is_dir():
            raise UsageError(f"report {path}: is a directory; name a file")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:  # the report makes missing folders
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LocalFileError(f"cannot write the transfer report {path}: {folder} is not writable")

    @property
    def stager(self) -> Stager:
        """The stager, and the store under it, made when first needed."""
        if self._stager is None:
            from allasrun.staging.stager import Stager

            self._stager = Stager(self.store, self.plan.settings, self.workdir)
        return self._stager

    @property
    def store(self) -> Store:
        """The object store the plan's transfers go through."""
        if self._store is None:
            from allasrun.staging.swift import SwiftStore

            self._store = SwiftStore(self._credentials, self.plan.settings.retries)
        return self._store

    def stage_in(self, stop_signal: Callable[[], Optional[int]]) -> StageResult:
        """Fetch the inputs; `stop_signal()` names a signal that has asked the run to stop."""
        if not self.plan.stage_in:
            return StageResult((), None)
        started = time.monotonic()
        transfers = self.stager.stage_in(self.plan.stage_in, lambda: stop_signal() is not None)
        log.info("%s", summarise("stage-in", transfers, time.monotonic() - started))
        return self._keep(after_stage_in(transfers, stop_signal()))

    def stage_out(self, command_status: int) -> StageResult:
        """Upload the results due after `command_status`; the run's status is in the result."""
        due = [spec for spec in self.plan.stage_out if spec.due(command_status)]
        if not due:
            return StageResult((), command_status)
        started = time.monotonic()
        transfers = self.stager.stage_out(due)
        log.info("%s", summarise("stage-out", transfers, time.monotonic() - started))
        return self._keep(after_stage_out(transfers, command_status))

    def finish(self, final: int, command_status: Optional[int]) -> int:
        """Write the JSON report if one was asked for; `final` is returned whatever happens.

        A report that cannot be written is logged, never allowed to replace the status of a
        command that has already run.
        """
        name = self.plan.settings.report
        if name is None:
            return final
        from allasrun.staging import report

        path = local_path(name, self.workdir)
        try:
            report.write(path, final, command_status, self.transfers)
        except OSError as error:
            log.error("cannot write the transfer report %s: %s", path, error.strerror or error)
            return final
        log.info("transfer report written to %s", path)
        return final

    def _keep(self, result: StageResult) -> StageResult:
        self.transfers += result.transfers
        return result

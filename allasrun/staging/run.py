"""`StagingRun`: the staging of one run, from the plan to the report.

The job side calls three things in order, `stage_in`, `stage_out` and `finish`, and uses
the exit statuses they return; what is fetched, uploaded, judged and reported is decided
here. The store (and its HTTP) is built on first use: a run that stages nothing never
imports it.

A stage-out that fails always leaves a report (the one asked for, or `RECORD` in the working
directory), and `resume` uploads what such a report says did not land: the job's results
reach the objects the job named, whoever finishes it and whenever.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from allasrun.errors import EXIT_STAGE_OUT, LocalFileError, UsageError
from allasrun.log import log
from allasrun.staging.plan import REMOTES, SWIFT, Remote, StageOut, StagePlan
from allasrun.staging.result import StageResult, after_stage_in, after_stage_out
from allasrun.staging.select import local_path
from allasrun.staging.transfer import CANCELLED, FAILED, MISSING, Transfer, not_moved, summarise

if TYPE_CHECKING:  # the stager (threads, hashing) and the store load only when something is staged
    from allasrun.auth import S3Keys
    from allasrun.staging.report import Record
    from allasrun.staging.stager import Stager
    from allasrun.staging.store import Credentials, Store

# The report a failed stage-out writes when none was asked for, in the working directory: named
# apart for each node and run, since the nodes of a job may share that directory.
RECORD = "allasrun-stage-out-{stamp}-{host}-{pid}.json"
UNLANDED = (FAILED, CANCELLED)  # what finishing a stage-out uploads again
KeysFor = Callable[[Remote], "S3Keys"]  # the S3 keys (and endpoint) a remote is reached with


class StagingRun:
    """Stage-in, stage-out and the report for one run of a job."""

    def __init__(
        self,
        plan: StagePlan,
        credentials: Optional[Credentials],
        workdir: Path,
        store: Optional[Store] = None,
        s3_keys: Optional[KeysFor] = None,
    ) -> None:
        """`store` serves every remote (the tests' fake); else Swift by `credentials`, S3 by `s3_keys`."""
        self.plan = plan
        self.workdir = workdir
        self.transfers: list[Transfer] = []
        self._credentials = credentials
        self._s3_keys = s3_keys
        self._store = store
        self._stagers: dict[str, Stager] = {}
        self._swift_store: Optional[Store] = None

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

    def stager(self, remote: str) -> Stager:
        """The stager of one remote, and the store under it, made when first needed."""
        if remote not in self._stagers:
            from allasrun.staging.stager import Stager

            swift = self._swift if remote == "s3allas" and self._can_swift() else None
            self._stagers[remote] = Stager(self._store_for(remote), self.plan.settings, self.workdir, swift)
        return self._stagers[remote]

    def _can_swift(self) -> bool:
        """Whether Allas's buckets can be reached over Swift too: Keystone credentials, a real store."""
        return self._credentials is not None and self._store is None

    def _swift(self) -> Store:
        """Allas over Swift, for an S3 stage-out's large files that go as segments (`put.Uploader`)."""
        if self._swift_store is None:
            self._swift_store = self._store_for("allas")
        return self._swift_store

    def _store_for(self, remote: str) -> Store:
        """The object store of a remote: Swift through the token, S3 with the keys for it."""
        if self._store is not None:
            return self._store
        where = REMOTES[remote or "allas"]
        if where.protocol == SWIFT:
            from allasrun.staging.swift import SwiftStore

            if self._credentials is None:
                raise UsageError(f"{where.name}: Swift needs Keystone credentials, and this run has none")
            return SwiftStore(self._credentials, self.plan.settings.retries)
        if self._s3_keys is None:
            raise UsageError(f"{where.name}: this command cannot stage over S3")
        from allasrun.staging.s3 import S3Store

        keys = self._s3_keys(where)
        endpoint = keys.endpoint or where.endpoint or ""
        return S3Store(endpoint, keys.access, keys.secret, self.plan.settings.retries)

    def stage_in(self, stop_signal: Callable[[], Optional[int]]) -> StageResult:
        """Fetch the inputs; `stop_signal()` names a signal that has asked the run to stop.

        Remote by remote, in the order the directives first name them: each has its own store.
        """
        if not self.plan.stage_in:
            return StageResult((), None)
        started = time.monotonic()
        transfers: list[Transfer] = []
        for remote in self.plan.remotes:
            specs = self.plan.only(remote).stage_in
            if specs:
                transfers += self.stager(remote).stage_in(specs, lambda: stop_signal() is not None)
        log.info("%s", summarise("stage-in", transfers, time.monotonic() - started))
        return self._keep(after_stage_in(transfers, stop_signal()))

    def stage_out(self, command_status: int) -> StageResult:
        """Upload the results due after `command_status`; the run's status is in the result."""
        due = [spec for spec in self.plan.stage_out if spec.due(command_status)]
        if not due:
            return StageResult((), command_status)
        started = time.monotonic()
        transfers = self._upload(due)
        log.info("%s", summarise("stage-out", transfers, time.monotonic() - started))
        return self._keep(after_stage_out(transfers, command_status))

    def _upload(
        self, specs: Sequence[StageOut], only: Optional[Collection[tuple[str, str]]] = None
    ) -> list[Transfer]:
        """Stage-out remote by remote (`only`: these (source, destination) pairs)."""
        transfers: list[Transfer] = []
        for remote in dict.fromkeys(spec.remote for spec in specs):
            mine = [spec for spec in specs if spec.remote == remote]
            transfers += self.stager(remote).stage_out(mine, only=only)
        return transfers

    def finish(self, final: int, command_status: Optional[int]) -> int:
        """Write the JSON report if one was asked for or stage-out failed; `final` is returned.

        A report that cannot be written is logged, never allowed to replace the status of a
        command that has already run.
        """
        unlanded = [t for t in self.transfers if t.direction == "stage-out" and t.status in UNLANDED]
        name = self.plan.settings.report
        if name is None and not unlanded:
            return final
        stamp, host = time.strftime("%Y%m%d-%H%M%S"), socket.gethostname().split(".")[0]
        name = name or RECORD.format(stamp=stamp, host=host, pid=os.getpid())
        path = self._write_report(local_path(name, self.workdir), final, command_status)
        if path and unlanded:
            log.error(
                "%d file(s) did not land; upload them when Allas is back: allasrun stage-out %s",
                len(unlanded),
                path,
            )
        return final

    def _write_report(self, path: Path, final: int, command_status: Optional[int]) -> Optional[Path]:
        from allasrun.staging import report

        try:
            report.write(path, final, command_status, self.transfers, self.plan, self.workdir)
        except OSError as error:
            log.error("cannot write the transfer report %s: %s", path, error.strerror or error)
            return None
        log.info("transfer report written to %s", path)
        return path

    @staticmethod
    def record(path: Path) -> Record:
        """A report read back, to finish its stage-out (`resume`)."""
        from allasrun.staging import report

        return report.read(path)

    def resume(self, record: Record) -> int:
        """Upload the files `record` says did not land; rewrite it; 0 if all landed now, else 75.

        Each directive with such a file is listed again, and only those files are uploaded
        (an identical object already there is skipped). A file gone since is MISSING. The
        report keeps the other transfers as they were and gets the new outcome of these.
        """
        pending = [t for t in record.transfers if t.direction == "stage-out" and t.status in UNLANDED]
        wanted = {(t.source, t.destination) for t in pending}
        specs = [s for s in self.plan.stage_out if any(t.where == s.where for t in pending)]
        started = time.monotonic()
        done = self._upload(specs, only=wanted) if pending else []
        seen = {(t.source, t.destination) for t in done}
        done += [
            not_moved(
                "stage-out", t.where, t.source, t.destination, MISSING, f"{t.source} is no longer there"
            )
            for t in pending
            if (t.source, t.destination) not in seen
        ]
        log.info("%s", summarise("stage-out", done, time.monotonic() - started))
        kept = [t for t in record.transfers if (t.source, t.destination) not in wanted]
        result = after_stage_out(done, 0)
        self.transfers = kept + list(result.transfers)
        status = record.command_status
        final = EXIT_STAGE_OUT if result.exit_status else (status if status is not None else 0)
        if self._write_report(record.path, final, status) and result.exit_status:
            log.error("upload them when Allas is back: allasrun stage-out %s", record.path)
        return result.exit_status or 0

    def _keep(self, result: StageResult) -> StageResult:
        self.transfers += result.transfers
        return result

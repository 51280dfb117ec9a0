"""`StagingRun` and `look_up` against an in-memory store: exit statuses 74/75/128+N, `--when`, the report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, cast

import pytest

from allasrun.errors import (
    EXIT_STAGE_IN,
    EXIT_STAGE_OUT,
    BucketMissing,
    LocalFileError,
    StoreError,
    UsageError,
)
from allasrun.staging.lookup import look_up
from allasrun.staging.plan import Settings, StageIn, StageOut, StagePlan
from allasrun.staging.run import StagingRun
from allasrun.staging.store import Credentials
from allasrun.staging.transfer import CANCELLED, DONE, FAILED, MISSING
from tests.unit.fakestore import FakeStore, unavailable

UNUSED = cast(Credentials, object())  # only used to build a SwiftStore, and a store is given
IN = StageIn("job.sh:2", "bkt", "data/", "in/")
OUT = StageOut("job.sh:3", "out.txt", "results", "run/")
SIGTERM = 15


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore()
    store.put_object("bkt", "data/a.txt", b"alpha\n")
    store.put_object("bkt", "data/b.txt", b"beta\n")
    return store


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog for allasrun's logger, which propagates here even if `log.configure` ran before."""
    monkeypatch.setattr(logging.getLogger("allasrun"), "propagate", True)
    caplog.set_level(logging.INFO, logger="allasrun")
    return caplog


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def run(
    store: FakeStore,
    workdir: Path,
    stage_in: tuple[StageIn, ...] = (),
    stage_out: tuple[StageOut, ...] = (),
    report: Optional[str] = None,
) -> StagingRun:
    settings = Settings(threads=2, segment_size=1024, retries=1, report=report, progress=3600.0)
    return StagingRun(StagePlan(stage_in, stage_out, settings), UNUSED, workdir, store)


def no_signal() -> Optional[int]:
    return None


def test_stage_in_success_lets_the_command_start(store: FakeStore, tmp_path: Path) -> None:
    result = run(store, tmp_path, (IN,)).stage_in(no_signal)
    assert result.exit_status is None
    assert [t.status for t in result.transfers] == [DONE, DONE]
    assert (tmp_path / "in/b.txt").read_bytes() == b"beta\n"


def test_stage_in_failure_is_74(store: FakeStore, tmp_path: Path, logged: pytest.LogCaptureFixture) -> None:
    missing = StageIn("job.sh:4", "nobucket", "x", "in/")
    result = run(store, tmp_path, (IN, missing)).stage_in(no_signal)
    assert result.exit_status == EXIT_STAGE_IN == 74
    assert [t.status for t in result.transfers] == [MISSING]
    assert "stage-in missing: job.sh:4: bucket 'nobucket' does not exist" in errors(logged)
    assert (
        "error: stage-in failed for 1 item(s) (first: job.sh:4: bucket 'nobucket' does not exist): "
        "the command was not started"
    ) in errors(logged)


def test_stage_in_stopped_by_a_signal_is_128_plus_n(
    store: FakeStore, tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    result = run(store, tmp_path, (IN,)).stage_in(lambda: SIGTERM)
    assert result.exit_status == 128 + SIGTERM
    assert {t.status for t in result.transfers} <= {DONE, CANCELLED}
    assert "stage-in interrupted by signal 15: the command was not started" in errors(logged)


def test_nothing_to_stage_in(store: FakeStore, tmp_path: Path) -> None:
    result = run(store, tmp_path, (), (OUT,)).stage_in(lambda: SIGTERM)
    assert (result.transfers, result.exit_status) == ((), None)
    assert store.calls == []


def test_stage_out_success_keeps_the_command_status(store: FakeStore, tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("result\n")
    for status in (0, 3):
        result = run(store, tmp_path, (), (OUT,)).stage_out(status)
        assert result.exit_status == status
    assert store.content("results", "run/out.txt") == b"result\n"


def test_stage_out_failure_is_75(store: FakeStore, tmp_path: Path, logged: pytest.LogCaptureFixture) -> None:
    (tmp_path / "out.txt").write_text("result\n")
    store.fail("upload", unavailable("upload results/run/out.txt"))
    result = run(store, tmp_path, (), (OUT,)).stage_out(3)
    assert result.exit_status == EXIT_STAGE_OUT == 75
    assert [t.status for t in result.transfers] == [FAILED]
    assert "error: stage-out failed for 1 file(s); the command's exit status was 3" in errors(logged)


@pytest.mark.parametrize(("command_status", "final"), [(3, 3), (0, EXIT_STAGE_OUT)])
def test_missing_output_is_the_failed_commands_doing(
    store: FakeStore, tmp_path: Path, logged: pytest.LogCaptureFixture, command_status: int, final: int
) -> None:
    result = run(store, tmp_path, (), (OUT,)).stage_out(command_status)
    assert [t.status for t in result.transfers] == [MISSING]
    assert result.exit_status == final
    assert "stage-out missing: job.sh:3: out.txt -> allas:results/run/: nothing matches out.txt" in errors(
        logged
    )


@pytest.mark.parametrize(
    ("command_status", "uploaded"),
    [
        (0, ["always.txt", "success.txt"]),
        (1, ["always.txt", "failure.txt"]),
        (139, ["always.txt", "failure.txt"]),
    ],
)
def test_when_decides_which_stage_outs_run(
    store: FakeStore, tmp_path: Path, command_status: int, uploaded: list[str]
) -> None:
    outs: list[StageOut] = []
    for when in ("success", "failure", "always"):
        (tmp_path / f"{when}.txt").write_text(when)
        outs.append(StageOut(f"job.sh:{len(outs) + 3}", f"{when}.txt", "results", "", when))
    assert run(store, tmp_path, (), tuple(outs)).stage_out(command_status).exit_status == command_status
    assert store.names("results") == uploaded


def test_no_stage_out_due(store: FakeStore, tmp_path: Path) -> None:
    on_success = StageOut("job.sh:3", "missing.txt", "results", "", "success")
    result = run(store, tmp_path, (), (on_success,)).stage_out(2)
    assert (result.transfers, result.exit_status) == ((), 2)
    assert store.calls == []


def test_finish_writes_the_report(store: FakeStore, tmp_path: Path) -> None:
    staging = run(store, tmp_path, (IN,), (OUT,), report="reports/run.json")
    staging.stage_in(no_signal)
    staging.stage_out(0)  # out.txt is missing: 75
    assert staging.finish(75, 0) == 75
    document = json.loads((tmp_path / "reports/run.json").read_text())
    assert (document["exit_status"], document["command_status"]) == (75, 0)
    assert [(t["direction"], t["status"]) for t in document["transfers"]] == [
        ("stage-in", DONE),
        ("stage-in", DONE),
        ("stage-out", MISSING),
    ]
    assert document["transfers"][2]["error"] == "nothing matches out.txt"


def test_finish_without_a_report(store: FakeStore, tmp_path: Path) -> None:
    assert run(store, tmp_path).finish(3, 3) == 3
    assert list(tmp_path.iterdir()) == []


def test_unwritable_report_keeps_the_status(
    store: FakeStore, tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory")
    assert run(store, tmp_path, report="blocker/run.json").finish(3, 3) == 3
    report = f"cannot write the transfer report {tmp_path}/blocker/run.json: "
    assert len([e for e in errors(logged) if e.startswith(report)]) == 1


# ---------------------------------------------------------------- look_up


def test_look_up(store: FakeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store.ensure_bucket("results")
    plan = StagePlan(
        (IN, StageIn("job.sh:4", "nobucket", "x", "in/"), StageIn("job.sh:5", "bkt", "none/", "in/")),
        (OUT, StageOut("job.sh:6", "x", "newbucket", "")),
    )
    found = look_up(plan, UNUSED, store=store)
    assert [[f.obj.name for f in i.fetches] for i in found.inputs] == [["data/a.txt", "data/b.txt"], [], []]
    assert [(p.where, p.status) for p in found.problems] == [("job.sh:4", MISSING), ("job.sh:5", MISSING)]
    assert [(out.bucket, exists) for out, exists in found.buckets] == [
        ("results", True),
        ("newbucket", False),
    ]
    assert store.count("download") == 0
    assert list(tmp_path.iterdir()) == []


def test_look_up_resolved_only_skips_placeholders(store: FakeStore) -> None:
    plan = StagePlan(
        (IN, StageIn("job.sh:4", "bkt", "runs/%j/", "in/")), (StageOut("job.sh:5", "x", "r-%j", ""),)
    )
    found = look_up(plan, UNUSED, resolved_only=True, store=store)
    assert ([i.spec for i in found.inputs], found.buckets) == ([IN], [])
    assert [c for c in store.calls if "%j" in c[1] + c[2]] == []
    everything = look_up(plan, UNUSED, store=store)
    assert [p.where for p in everything.problems] == ["job.sh:4"]
    assert [exists for _, exists in everything.buckets] == [False]


def test_look_up_store_failure_is_not_missing(store: FakeStore) -> None:
    store.fail("listing", unavailable("list bkt"))
    with pytest.raises(StoreError, match="HTTP 503") as raised:
        look_up(StagePlan((IN,)), UNUSED, store=store)
    assert not isinstance(raised.value, BucketMissing)


def test_a_report_that_could_never_be_written_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """At the end only a warning is possible; a directory, or a folder not ours to write, is said first."""
    (tmp_path / "reports").mkdir()
    with pytest.raises(UsageError, match="reports: is a directory"):
        StagingRun.check_report(StagePlan(settings=Settings(report="reports")), tmp_path)
    StagingRun.check_report(StagePlan(settings=Settings(report="new/deeper/report.json")), tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("root writes anywhere: the unwritable-folder case needs an ordinary user")
    with pytest.raises(LocalFileError, match="locked is not writable"):
        StagingRun.check_report(StagePlan(settings=Settings(report="locked/report.json")), tmp_path)

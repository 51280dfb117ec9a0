"""S3 keys that die before the job can end (LUMI-O's): declared by the user, warned of by check and sbatch."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from allasrun.commands import s3access
from allasrun.errors import DirectiveError, UsageError
from allasrun.staging import jobscript
from allasrun.staging.plan import StagePlan

HOUR = 3600.0


def plan(header: str) -> StagePlan:
    return jobscript.plan_of(f"#!/bin/sh\n{header}\ntrue\n", "job.sh", {}, strict=False)


def at(seconds_from_now: float) -> str:
    moment = datetime.fromtimestamp(time.time() + seconds_from_now, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


LUMI = "#ALLAS stage-out out/ lumi-o:results/run1/"


def test_the_setting_reads_utc_offsets_and_local_time() -> None:
    assert plan(f"{LUMI}\n#ALLAS option keys-expire=2026-12-07T16:00Z").settings.keys_expire == (
        datetime(2026, 12, 7, 16, tzinfo=timezone.utc).timestamp()
    )
    assert plan("#ALLAS option keys-expire=2026-12-07T18:00+02:00").settings.keys_expire == (
        datetime(2026, 12, 7, 16, tzinfo=timezone.utc).timestamp()
    )
    local = plan("#ALLAS option keys-expire=2026-12-07T18:00").settings.keys_expire
    assert local == datetime(2026, 12, 7, 18).timestamp()  # as the user reads it off the page


def test_a_time_that_does_not_parse_names_the_line() -> None:
    with pytest.raises(DirectiveError, match=r"job.sh:2: bad value for keys-expire: not a time: 'next week'"):
        plan("#ALLAS option keys-expire='next week'")


def test_a_lumi_o_job_that_declares_nothing_is_told_how() -> None:
    assert s3access.expiry_warnings(plan(LUMI), {}, 2 * HOUR) == [s3access.UNDECLARED]
    assert s3access.expiry_warnings(plan("#ALLAS stage-out out/ s3allas:results/"), {}, 2 * HOUR) == []
    assert s3access.expiry_warnings(plan("#ALLAS stage-out out/ allas:results/"), {}, 2 * HOUR) == []


def test_keys_that_die_within_the_time_limit_are_warned_of() -> None:
    [warning] = s3access.expiry_warnings(plan(f"{LUMI}\n#ALLAS option keys-expire={at(HOUR)}"), {}, 2 * HOUR)
    assert "before the job's time limit of 2h00m is over even if it starts now" in warning
    assert "59m" in warning or "1h00m" in warning


def test_keys_that_die_if_the_job_waits_say_how_long_it_may_wait() -> None:
    header = f"{LUMI}\n#ALLAS option keys-expire={at(5 * HOUR)}"
    [warning] = s3access.expiry_warnings(plan(header), {}, 2 * HOUR, queue=72 * HOUR)
    assert "the job must start within 2h59m" in warning or "the job must start within 3h00m" in warning
    assert s3access.expiry_warnings(plan(header), {}, 2 * HOUR, queue=HOUR) == []


def test_keys_already_expired_are_warned_of_without_a_time_limit() -> None:
    [warning] = s3access.expiry_warnings(plan(f"{LUMI}\n#ALLAS option keys-expire={at(-60)}"), {}, None)
    assert "the S3 keys expired at" in warning


def test_the_environment_declares_when_the_script_does_not_and_the_script_wins() -> None:
    env = {s3access.KEYS_EXPIRE_VARIABLE: at(HOUR)}
    assert s3access.expiry_warnings(plan(LUMI), env, 2 * HOUR) != [s3access.UNDECLARED]
    later = plan(f"{LUMI}\n#ALLAS option keys-expire={at(10 * HOUR)}")
    assert s3access.expiry_warnings(later, env, 2 * HOUR) == []
    with pytest.raises(UsageError, match="ALLASRUN_KEYS_EXPIRE: not a time: 'soon'"):
        s3access.expiry_warnings(plan(LUMI), {s3access.KEYS_EXPIRE_VARIABLE: "soon"}, 2 * HOUR)

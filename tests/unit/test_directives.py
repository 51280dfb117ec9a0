"""`#ALLAS` grammar: every error names file:line and quotes the line; substitutions; buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from allasrun.errors import EXIT_UNAVAILABLE, DirectiveError, SlurmUnavailable, UsageError
from allasrun.slurm import facts
from allasrun.staging import jobscript
from allasrun.staging import plan as stageplan
from allasrun.staging.directives import parse
from allasrun.staging.plan import StageIn, StageOut, build, parse_size

SCRIPT = """#!/bin/bash
#SBATCH --job-name=analysis
#ALLAS stage-in  178-data-bucket/dataset34/data2.txt.zst   dataset34/
#ALLAS stage-in  allas:178-data-bucket/refs/               refs/   # a comment
# an ordinary comment
#ALLAS stage-out results34/  178-data-bucket/results34/%j/
#ALLAS stage-out 'logs/*.log'  178-data-bucket/logs/%A_%a/   --when=failure --no-overwrite
#ALLAS option threads=4 segment-size=64M project=project_2000178

module load something
#ALLAS stage-in ignored/after-command
"""
JOB = {"SLURM_JOB_ID": "123", "SLURM_ARRAY_JOB_ID": "120", "SLURM_ARRAY_TASK_ID": "3", "USER": "u"}


def plan_of(text: str, env: dict[str, str] | None = None, strict: bool = True) -> stageplan.StagePlan:
    directives, _ = parse(text, "job.sh")
    return build(directives, JOB if env is None else env, "login", strict)


def test_full_header() -> None:
    directives, warnings = parse(SCRIPT, "job.sh")
    assert [d.where for d in directives] == ["job.sh:3", "job.sh:4", "job.sh:6", "job.sh:7", "job.sh:8"]
    assert warnings == [
        "job.sh:11: #ALLAS after the first command is ignored: #ALLAS stage-in ignored/after-command"
    ]
    plan = build(directives, JOB, "login").with_protocol("swift")
    assert plan.stage_in == (
        StageIn("job.sh:3", "178-data-bucket", "dataset34/data2.txt.zst", "dataset34/"),
        StageIn("job.sh:4", "178-data-bucket", "refs/", "refs/"),
    )
    assert plan.stage_out == (
        StageOut("job.sh:6", "results34/", "178-data-bucket", "results34/123/", "always", True),
        StageOut("job.sh:7", "logs/*.log", "178-data-bucket", "logs/120_3/", "failure", False),
    )
    assert (plan.settings.threads, plan.settings.segment_size, plan.settings.project) == (
        4,
        64 * 1024**2,
        "project_2000178",
    )


def test_default_destination_and_when() -> None:
    plan = plan_of("#ALLAS stage-in b1x/a.txt\n#ALLAS stage-out out.txt b1x/\n")
    assert plan.stage_in[0].destination == "./"
    assert plan.stage_out[0].when == "always"


def test_variables_and_escapes() -> None:
    env = {**JOB, "RUN": "r7", "HOME": "/h"}
    plan = plan_of("#ALLAS stage-out ${HOME}/x $RUN-bucket/%u/100%%/$$\n", env)
    assert plan.stage_out[0].source == "/h/x"
    assert (plan.stage_out[0].bucket, plan.stage_out[0].key) == ("r7-bucket", "u/100%/$")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("#ALLAS", "missing verb"),
        ("#ALLAS stage_in b/x", "unknown verb 'stage_in'"),
        ("#ALLAS stage-in", "stage-in takes SOURCE [DESTINATION], got 0"),
        ("#ALLAS stage-in a b c", "got 3 argument(s)"),
        ("#ALLAS stage-out only-source", "stage-out takes SOURCE DESTINATION, got 1"),
        ("#ALLAS stage-out a bkt/ --when=sometimes", "--when must be one of success, failure, always"),
        ("#ALLAS stage-out a bkt/ --no-overwrite=yes", "--no-overwrite takes no value"),
        ("#ALLAS stage-in bkt/a --when=always", "unknown option --when for stage-in"),
        ("#ALLAS stage-in 'unclosed", "cannot split the line"),
        ("#ALLAS option threads", "bad setting 'threads'"),
        ("#ALLAS option colour=blue", "bad setting 'colour=blue'"),
        ("#ALLAS option threads=0", "bad value for threads"),
        ("#ALLAS option segment-size=lots", "bad value for segment-size"),
        ("#ALLAS stage-out a Results_Bucket/", "bucket name 'Results_Bucket' breaks Allas's rules"),
        ("#ALLAS stage-out a ab/", "bucket name 'ab' breaks"),
        ("#ALLAS stage-in /absolute", "no bucket in '/absolute'"),
        ("#ALLAS stage-in b*/x", "cannot be a pattern"),
        ("#ALLAS stage-in b1x/$NOPE", "$NOPE is not set"),
        ("#ALLAS stage-in b1x/%q", "unknown substitution %q"),
    ],
)
def test_every_error_names_file_line_and_text(line: str, message: str) -> None:
    text = f"#!/bin/sh\n#SBATCH -t 1\n{line}\n"
    with pytest.raises(DirectiveError) as caught:
        plan_of(text)
    assert str(caught.value).startswith("job.sh:3: ")
    assert message in str(caught.value)
    assert str(caught.value).endswith(line.strip())


def test_slurm_placeholders_outside_a_job() -> None:
    with pytest.raises(DirectiveError, match="%j cannot be substituted: not inside a Slurm job"):
        plan_of("#ALLAS stage-out a bkt/%j/\n", env={})
    with pytest.raises(DirectiveError, match="%a cannot be substituted: not an array job"):
        plan_of("#ALLAS stage-out a bkt/%a/\n", env={"SLURM_JOB_ID": "5"})
    lenient = plan_of("#ALLAS stage-out a bkt/%j/%u/\n", env={}, strict=False)
    assert lenient.stage_out[0].key == "%j/login/"


def test_stage_in_shapes() -> None:
    glob = StageIn("w", "b", "logs/2024-*/part?.txt", "./")
    assert (glob.is_glob, glob.listing_prefix, glob.base) == (True, "logs/2024-", "logs/")
    prefix = StageIn("w", "b", "refs/", "refs/")
    assert (prefix.is_glob, prefix.listing_prefix, prefix.base) == (False, "refs/", "refs/")
    top = StageIn("w", "b", "*.txt", "./")
    assert (top.listing_prefix, top.base) == ("", "")


def test_when() -> None:
    always, success, failure = (
        StageOut("w", "a", "b", "k", when) for when in ("always", "success", "failure")
    )
    assert [always.due(0), always.due(1)] == [True, True]
    assert [success.due(0), success.due(1)] == [True, False]
    assert [failure.due(0), failure.due(137)] == [False, True]


def test_sizes() -> None:
    assert parse_size("5G") == 5 * 1024**3
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("1048576") == 1048576
    with pytest.raises(ValueError, match="not a size"):
        parse_size("5 parsecs")


def test_node_local_is_under_tmpdir_or_local_scratch_or_said() -> None:
    env = {"TMPDIR": "/local/job7", "LOCAL_SCRATCH": "/nvme/job7/", "SLURMD_NODENAME": "c1101"}
    plan = plan_of(
        "#ALLAS stage-in b/in/ $TMPDIR/in/\n"
        "#ALLAS stage-in b/ref/ /nvme/job7/ref/\n"
        "#ALLAS stage-in b/x /local/job70/x\n"  # a sibling of $TMPDIR, not under it
        "#ALLAS stage-in b/y ./y --node-local\n"
        "#ALLAS stage-out $TMPDIR/out/ bkt/out/%N/\n"
        "#ALLAS stage-out results/ bkt/results/\n",
        env,
    )
    assert [s.node_local for s in plan.stage_in] == [True, True, False, True]
    assert [(s.node_local, s.key) for s in plan.stage_out] == [(True, "out/c1101/"), (False, "results/")]
    local, shared = plan.part(node_local=True), plan.part(node_local=False)
    assert [s.destination for s in local.stage_in] == ["/local/job7/in/", "/nvme/job7/ref/", "./y"]
    assert [s.source for s in shared.stage_out] == ["results/"]
    assert local.settings == shared.settings == plan.settings


def test_ameta_asks_for_a_put_companions() -> None:
    plan = plan_of("#ALLAS stage-in b/in/ in/ --ameta\n#ALLAS stage-in b/x/ x/\n", {})
    assert [s.ameta for s in plan.stage_in] == [True, False]
    with pytest.raises(DirectiveError, match="ameta"):
        plan_of("#ALLAS stage-out out/ b/out/ --ameta\n", {})


def test_unpack_pack_and_compress() -> None:
    plan = plan_of(
        "#ALLAS stage-in bkt/in.tar.zst in/ --unpack\n"
        "#ALLAS stage-out results bkt/out/ --pack --compress\n"
        "#ALLAS stage-out logs bkt/logs/ --pack\n",
        {},
    )
    assert [s.unpack for s in plan.stage_in] == [True]
    assert [(s.pack, s.compress) for s in plan.stage_out] == [(True, True), (True, False)]
    with pytest.raises(DirectiveError, match="--compress goes with --pack"):
        plan_of("#ALLAS stage-out out/ bkt/out/ --compress\n", {})
    with pytest.raises(DirectiveError, match="--pack packs one folder"):
        plan_of("#ALLAS stage-out 'out/*.log' bkt/out/ --pack\n", {})
    with pytest.raises(DirectiveError, match="unknown option --unpack for stage-out"):
        plan_of("#ALLAS stage-out out/ bkt/out/ --unpack\n", {})
    with pytest.raises(DirectiveError, match="unknown option --pack for stage-in"):
        plan_of("#ALLAS stage-in bkt/x in/ --pack\n", {})


def test_node_name_placeholder_needs_slurm() -> None:
    with pytest.raises(DirectiveError, match="%N cannot be substituted: not inside a Slurm job"):
        plan_of("#ALLAS stage-out out/ bkt/%N/\n", {})
    assert plan_of("#ALLAS stage-out out/ bkt/%N/\n", {}, strict=False).stage_out[0].key == "%N/"


def test_before_the_job_variables_only_the_job_has_stay_as_written() -> None:
    text = "#ALLAS stage-in bkt/in.txt $TMPDIR/\n"
    with pytest.raises(DirectiveError, match=r"\$TMPDIR is not set in the job's environment"):
        plan_of(text, {})
    assert plan_of(text, {}, strict=False).stage_in[0].destination == "$TMPDIR/"


def test_before_the_job_a_script_naming_job_time_things_is_accepted() -> None:
    """`allasrun sbatch` and `check` read the script on the login node, before any of these exist."""
    text = (
        "#ALLAS stage-in bkt/in.txt $LOCAL_SCRATCH/in/\n"
        "#ALLAS stage-in bkt/ref/ ${TMPDIR}/ref/\n"
        "#ALLAS stage-out $SLURM_SUBMIT_DIR/out/ bkt/out/\n"
        "#ALLAS stage-out out/ results-%a/\n"
        "#ALLAS stage-out out/ run-%j-$USER_TAG/x/\n"
    )
    plan = plan_of(text, {}, strict=False)
    assert [s.bucket for s in plan.stage_out] == ["bkt", "results-%a", "run-%j-$USER_TAG"]
    in_job = plan_of(
        text, {**JOB, "LOCAL_SCRATCH": "/nvme", "TMPDIR": "/tmp/7", "SLURM_SUBMIT_DIR": "/w", "USER_TAG": "t"}
    )
    assert [s.bucket for s in in_job.stage_out] == ["bkt", "results-3", "run-123-t"]


def test_a_bad_bucket_name_is_still_refused_before_the_job() -> None:
    with pytest.raises(DirectiveError, match="breaks Allas's rules"):
        plan_of("#ALLAS stage-out out/ Bad_Bucket/%j/\n", {}, strict=False)
    with pytest.raises(DirectiveError, match="breaks Allas's rules"):
        plan_of("#ALLAS stage-out out/ Bad_%a/\n", JOB)  # in the job, filled in: checked


# --- the job's own plan, found through Slurm (discover_plan) -----------------------------------

BATCH = "#!/bin/bash\n#ALLAS stage-in bkt/in.txt\n#ALLAS stage-in bkt/scratch.txt $TMPDIR/\ntrue\n"


@pytest.fixture
def in_a_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A job on node c2, scontrol on PATH, slurmctld answering with BATCH (via `facts._run`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setattr(facts, "_run", lambda command, env: BATCH)
    monkeypatch.setattr(jobscript, "BATCH_SCRIPT_RETRIES", (0.0, 0.0))
    return {
        "SLURM_JOB_ID": "77",
        "SLURMD_NODENAME": "c2",
        "SLURM_JOB_NODELIST": "c[1-2]",
        "TMPDIR": "/local/77",
        "PATH": str(bin_dir),
    }


def test_an_allasrun_dir_inherited_from_the_submitting_shell_changes_nothing(
    in_a_job: dict[str, str], tmp_path: Path
) -> None:
    """Submitted from under `allasrun -- snakemake` on login1: its run directory is not on this node."""
    inherited = {**in_a_job, "ALLASRUN_DIR": str(tmp_path / "login-run"), "ALLASRUN_NODE": "login1"}
    assert len(jobscript.discover_plan(inherited).stage_in) == 2
    same_name = {**inherited, "ALLASRUN_NODE": "c2"}  # no env file there: no allasrun around us
    assert len(jobscript.discover_plan(same_name).stage_in) == 2


def test_under_this_jobs_allasrun_only_the_node_local_part_is_left(
    in_a_job: dict[str, str], tmp_path: Path
) -> None:
    outer = tmp_path / "batch-run"
    outer.mkdir()
    (outer / "env").write_text("")
    enclosed = {**in_a_job, "ALLASRUN_DIR": str(outer), "ALLASRUN_NODE": "c2"}
    assert not jobscript.discover_plan(enclosed)
    other_node = {**in_a_job, "ALLASRUN_DIR": str(outer), "ALLASRUN_NODE": "c1"}
    assert [s.key for s in jobscript.discover_plan(other_node).stage_in] == ["scratch.txt"]


def test_a_failing_scontrol_is_asked_again_then_an_error(
    in_a_job: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([None, None, BATCH])
    monkeypatch.setattr(facts, "_run", lambda command, env: next(answers))
    assert len(jobscript.discover_plan(in_a_job).stage_in) == 2  # the third ask got it
    monkeypatch.setattr(facts, "_run", lambda command, env: None)
    with pytest.raises(SlurmUnavailable, match="job 77: slurmctld did not give") as caught:
        jobscript.discover_plan(in_a_job)
    assert caught.value.exit_code == EXIT_UNAVAILABLE


def test_without_scontrol_there_is_no_plan_to_find(in_a_job: dict[str, str]) -> None:
    """A container without Slurm's commands: `allasrun -- CMD` runs as outside a job."""
    assert not jobscript.discover_plan({**in_a_job, "PATH": "/nonexistent"})


def test_slurm_host_lists() -> None:
    assert jobscript.hostnames("c[1-3,07],login1,g[01-02]x") == [
        "c1", "c2", "c3", "c07", "login1", "g01x", "g02x"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("address", "env", "remote"),
    [
        ("allas:b1x/a.txt", {}, "allas"),
        ("s3allas:b1x/a.txt", {}, "s3allas"),
        ("lumi-o:b1x/a.txt", {}, "lumi-o"),
        ("b1x/a.txt", {}, ""),  # the run decides (commands/protocol.py)
        ("b1x/a.txt", {"ALLASRUN_PROTOCOL": "s3"}, "s3allas"),
        ("b1x/a.txt", {"ALLASRUN_PROTOCOL": "Swift"}, "allas"),
        ("allas:b1x/a.txt", {"ALLASRUN_PROTOCOL": "s3"}, "allas"),  # a named remote is kept
        ("b1x/a:b.txt", {}, ""),  # a colon in the name is not a remote
    ],
)
def test_addresses_name_their_remote(address: str, env: dict[str, str], remote: str) -> None:
    plan = plan_of(f"#ALLAS stage-in {address}\n#ALLAS stage-out out.txt {address}\n", {**JOB, **env})
    assert plan.stage_in[0].remote == plan.stage_out[0].remote == remote
    assert plan.stage_in[0].bucket == "b1x"


def test_the_protocol_option_decides_bare_addresses_wherever_it_stands() -> None:
    text = "#ALLAS stage-in b1x/a.txt\n#ALLAS stage-in allas:b1x/c\n#ALLAS option protocol=s3\n"
    plan = plan_of(text, {**JOB, "ALLASRUN_PROTOCOL": "swift"})  # the script wins
    assert [s.remote for s in plan.stage_in] == ["s3allas", "allas"]
    assert plan.remotes == ["s3allas", "allas"]
    assert plan.only("allas").stage_in == (plan.stage_in[1],)
    assert plan.stage_in[0].address("x/y") == "s3allas:b1x/x/y"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "#ALLAS stage-in s3:b1x/a",
            "job.sh:1: unknown remote 's3:' in 's3:b1x/a' (expected allas:, s3allas:, lumi-o:)",
        ),
        (
            "#ALLAS option protocol=ftp",
            "job.sh:1: bad value for protocol: 'ftp' is not a protocol (expected swift or s3)",
        ),
    ],
)
def test_bad_remotes_and_protocols_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DirectiveError) as caught:
        plan_of(text)
    assert str(caught.value).startswith(message)


def test_a_bad_protocol_variable_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="ALLASRUN_PROTOCOL='ftp': expected swift or s3"):
        plan_of("#ALLAS stage-in b1x/a\n", {**JOB, "ALLASRUN_PROTOCOL": "ftp"})


def _out(line: str, env: dict[str, str] | None = None) -> StageOut:
    return jobscript.plan_of(f"#!/bin/sh\n{line}\ntrue\n", "job.sh", env or {}, strict=False).stage_out[0]


def test_large_names_the_form_of_a_large_object_over_s3() -> None:
    assert _out("#ALLAS stage-out big.bin s3allas:bkt/big.bin --large=segments").large == "segments"
    assert _out("#ALLAS stage-out big.bin s3allas:bkt/big.bin --large=multipart").large == "multipart"
    assert _out("#ALLAS stage-out big.bin s3allas:bkt/big.bin").large == ""
    with pytest.raises(
        DirectiveError, match=r"job.sh:2: --large must be one of segments, multipart, not 'slo'"
    ):
        _out("#ALLAS stage-out big.bin s3allas:bkt/big.bin --large=slo")


@pytest.mark.parametrize(
    ("line", "env", "why"),
    [
        ("#ALLAS stage-out big.bin allas:bkt/big.bin --large=multipart", {}, "needs an S3 remote"),
        (
            "#ALLAS stage-out big.bin bkt/big.bin --large=multipart",
            {"ALLASRUN_PROTOCOL": "swift"},
            "needs an S3 remote",
        ),
        (
            "#ALLAS stage-out big.bin lumi-o:bkt/big.bin --large=segments",
            {},
            "LUMI-O is reached over S3 alone",
        ),
    ],
)
def test_a_form_the_remote_cannot_write_is_refused_naming_the_line(
    line: str, env: dict[str, str], why: str
) -> None:
    with pytest.raises(DirectiveError, match=rf"^job\.sh:2: --large=.*{why}"):
        _out(line, env)

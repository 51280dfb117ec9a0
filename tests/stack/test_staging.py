"""#ALLAS stage-in / stage-out through the real Swift: verified, resumable, never lost."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from allasrun import errors
from allasrun.staging.behind import BEHIND
from tests.stack.corruptproxy import CorruptingProxy
from tests.stack.stackutil import (
    ALLASRUN,
    DEAD_KEYSTONE,
    Stack,
    allasrun,
    make_bucket,
    put_object,
    rclone,
    user_env,
    wait_for,
)

MANY = 1_100  # more than the 1,000 rows radosgw gives per listing page


def job(tmp_path: Path, header: str, body: str = "touch ran") -> Path:
    """A job script in its own working directory."""
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n{header.strip()}\n{body}\n")
    script.chmod(0o755)
    return script


def run_job(
    stack: Stack, home: Path, script: Path, *options: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return allasrun(
        ["run", *options, str(script)], user_env(stack, home, **extra), timeout=600, cwd=script.parent
    )


def start_job(stack: Stack, home: Path, script: Path) -> subprocess.Popen[str]:
    """`allasrun run` in the background, stderr captured, for tests that signal it."""
    return subprocess.Popen(
        [*ALLASRUN, "run", str(script)],
        env=user_env(stack, home),
        cwd=script.parent,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def dataset(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,100 small files and a 3.5 MiB object uploaded as a 4-segment SLO, by rclone and swift."""
    root = tmp_path_factory.mktemp("dataset")
    many = root / "many"
    for n in range(MANY):
        (many / f"d{n % 7}").mkdir(parents=True, exist_ok=True)
        (many / f"d{n % 7}" / f"f{n:04d}.txt").write_text(f"file {n}\n" * (n % 50 + 1))
    rclone(stack, root, "copy", "--transfers", "8", str(many), "ref:stage-data/many")
    big = root / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 512 * 1024))
    env = {**os.environ, **{k: v for k, v in stack.env.items() if k.startswith("OS_")}}
    subprocess.run(
        [
            "/usr/bin/swift",
            "upload",
            "--use-slo",
            "-S",
            "1048576",
            "--object-name",
            "large/big.bin",
            "stage-data",
            str(big),
        ],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root


def test_stage_in_prefix_and_segmented_object(
    stack: Stack, home: Path, tmp_path: Path, dataset: Path
) -> None:
    script = job(
        tmp_path,
        """
#ALLAS stage-in  stage-data/many/        inputs/
#ALLAS stage-in  allas:stage-data/large/big.bin   big/
#ALLAS option report=report.json threads=8
""",
        "test -f inputs/d0/f0000.txt && test -f big/big.bin && touch ran",
    )
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran").exists()
    comparison = filecmp.dircmp(dataset / "many", tmp_path / "inputs")
    assert _all_same(comparison, dataset / "many", tmp_path / "inputs")
    assert (tmp_path / "big" / "big.bin").read_bytes() == (dataset / "big.bin").read_bytes()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["exit_status"] == report["command_status"] == 0
    done = [t for t in report["transfers"] if t["status"] == "done"]
    assert len(done) == MANY + 1
    big = next(t for t in done if t["destination"].endswith("big.bin"))
    assert big["md5"] == hashlib.md5((dataset / "big.bin").read_bytes()).hexdigest()
    assert not list(tmp_path.rglob("*.part"))
    # A second run finds everything in place: identical files are skipped, nothing moves.
    again = run_job(stack, home, script)
    assert again.returncode == 0, again.stderr
    assert f"({0} done, {MANY + 1} skipped as identical, 0 failed)" in again.stderr


def _all_same(comparison: filecmp.dircmp[str], left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(right).as_posix() for p in right.rglob("*") if p.is_file())
    _, mismatch, errors_ = filecmp.cmpfiles(left, right, names, shallow=False)
    return not mismatch and not errors_


def test_glob_stage_in(stack: Stack, home: Path, tmp_path: Path, dataset: Path) -> None:
    script = job(tmp_path, "#ALLAS stage-in stage-data/many/d3/f00?[0-9].txt picked/")
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    expected = sorted(p.name for p in (dataset / "many" / "d3").glob("f00??.txt"))
    assert sorted(p.name for p in (tmp_path / "picked").iterdir()) == expected
    assert expected  # the pattern matched something


def test_array_slices_substitute(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "stage-array")
    for task in ("1", "2"):
        put_object(stack, "stage-array", f"slices/{task}/input.txt", f"slice {task}\n".encode())
    script = job(
        tmp_path,
        """
#ALLAS stage-in  stage-array/slices/%a/  in/
#ALLAS stage-out out.txt  stage-array/out/%A_%a/%u/
""",
        "cp in/input.txt out.txt",
    )
    slurm = {"SLURM_JOB_ID": "102", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "2", "USER": "tester"}
    result = run_job(stack, home, script, **slurm)
    assert result.returncode == 0, result.stderr
    listing = rclone(stack, tmp_path, "cat", "ref:stage-array/out/100_2/tester/out.txt").stdout
    assert listing == "slice 2\n"


def test_interrupted_stage_in_resumes(stack: Stack, home: Path, tmp_path: Path, dataset: Path) -> None:
    script = job(tmp_path, "#ALLAS stage-in stage-data/many/ inputs/\n#ALLAS option threads=1")
    proc = start_job(stack, home, script)
    wait_for(
        lambda: len(list((tmp_path / "inputs").rglob("*.txt"))) > 20, timeout=60, what="stage-in to start"
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stage-in interrupted" in stderr
    assert not (tmp_path / "ran").exists()
    fetched = len(list((tmp_path / "inputs").rglob("*.txt")))
    assert 20 < fetched < MANY
    assert not list(tmp_path.rglob("*.part"))
    resumed = run_job(stack, home, script)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "ran").exists()
    assert f"{fetched} skipped as identical" in resumed.stderr


OUT_HEADER = """
#ALLAS stage-out result.txt stage-when/{run}/always/
#ALLAS stage-out result.txt stage-when/{run}/success/ --when=success
#ALLAS stage-out result.txt stage-when/{run}/failure/ --when=failure
"""


@pytest.mark.parametrize(("exit_code", "landed"), [(0, {"always", "success"}), (3, {"always", "failure"})])
def test_stage_out_when(stack: Stack, home: Path, tmp_path: Path, exit_code: int, landed: set[str]) -> None:
    run = f"code{exit_code}"
    script = job(tmp_path, OUT_HEADER.format(run=run), f"echo result > result.txt; exit {exit_code}")
    result = run_job(stack, home, script)
    assert result.returncode == exit_code, result.stderr
    found = rclone(stack, tmp_path, "lsf", "-R", f"ref:stage-when/{run}").stdout.split()
    assert {name.split("/")[0] for name in found if name.endswith("result.txt")} == landed
    assert (tmp_path / "result.txt").read_text() == "result\n"  # local files are never touched


def test_stage_out_after_the_command_was_killed(stack: Stack, home: Path, tmp_path: Path) -> None:
    script = job(
        tmp_path,
        "#ALLAS stage-out partial.txt stage-killed/",
        'echo "half done" > partial.txt; touch ready; exec sleep 300',
    )
    proc = start_job(stack, home, script)
    wait_for((tmp_path / "ready").exists, timeout=60, what="the job to start")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert rclone(stack, tmp_path, "cat", "ref:stage-killed/partial.txt").stdout == "half done\n"


def test_no_overwrite_refuses_and_names_the_file(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "stage-keep")
    put_object(stack, "stage-keep", "keep/result.txt", b"the precious old result\n")
    script = job(
        tmp_path,
        "#ALLAS stage-out result.txt stage-keep/keep/ --no-overwrite",
        "echo new > result.txt; exit 4",
    )
    result = run_job(stack, home, script)
    assert result.returncode == errors.EXIT_STAGE_OUT, result.stderr
    assert "stage-out refused" in result.stderr and "result.txt" in result.stderr
    assert "the command's exit status was 4" in result.stderr
    assert (
        rclone(stack, tmp_path, "cat", "ref:stage-keep/keep/result.txt").stdout == "the precious old result\n"
    )


def test_large_upload_goes_as_segments(stack: Stack, home: Path, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 100)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "large.bin").write_bytes(data)
    script = job(tmp_path, "#ALLAS stage-out results/ stage-slo/run1/\n#ALLAS option segment-size=1M")
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    fetched = tmp_path / "fetched.bin"
    rclone(stack, tmp_path, "copyto", "ref:stage-slo/run1/large.bin", str(fetched))
    assert fetched.read_bytes() == data
    assert _segment_count(stack, tmp_path) == 3
    # Unchanged: skipped (on RGW too, whose listing shows only the manifest).
    again = run_job(stack, home, script)
    assert again.returncode == 0, again.stderr
    assert "(0 done, 1 skipped as identical, 0 failed)" in again.stderr
    # Changed: uploaded again, the replaced object's segments deleted; then replaced by a small file.
    changed = os.urandom(len(data))
    (tmp_path / "results" / "large.bin").write_bytes(changed)
    assert run_job(stack, home, script).returncode == 0
    rclone(stack, tmp_path, "copyto", "ref:stage-slo/run1/large.bin", str(fetched))
    assert fetched.read_bytes() == changed
    assert _segment_count(stack, tmp_path) == 3
    (tmp_path / "results" / "large.bin").write_bytes(b"small now\n")
    assert run_job(stack, home, script).returncode == 0
    assert _segment_count(stack, tmp_path) == 0


def _segment_count(stack: Stack, workdir: Path) -> int:
    listed = rclone(stack, workdir, "lsf", "-R", "ref:stage-slo_segments").stdout.split()
    return len([name for name in listed if not name.endswith("/")])


def test_escaping_object_names_are_refused(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "stage-evil")
    put_object(stack, "stage-evil", "in/../../etc/x", b"gotcha\n")
    put_object(stack, "stage-evil", "in/fine.txt", b"fine\n")
    work = tmp_path / "work"
    work.mkdir()
    script = job(work, "#ALLAS stage-in stage-evil/in/ inputs/")
    result = run_job(stack, home, script)
    assert result.returncode == errors.EXIT_STAGE_IN, result.stderr
    assert "would escape" in result.stderr and "../../etc/x" in result.stderr
    assert not (work / "ran").exists()
    assert not (tmp_path / "etc").exists() and not (work / "etc").exists()


@pytest.mark.parametrize("size", [200_000, BEHIND], ids=["hashed-in-line", "hashed-on-a-thread"])
def test_corrupted_download_is_detected_and_not_left(
    stack: Stack, home: Path, tmp_path: Path, size: int
) -> None:
    make_bucket(stack, "stage-corrupt")
    put_object(stack, "stage-corrupt", "corrupt-me.bin", os.urandom(size))
    swift = urlparse(stack.env["OS_STORAGE_URL"])
    assert swift.port is not None
    with CorruptingProxy(swift.port, b"corrupt-me") as proxy:
        storage = f"http://127.0.0.1:{proxy.port}{swift.path}"
        script = job(tmp_path, "#ALLAS stage-in stage-corrupt/corrupt-me.bin got/\n#ALLAS option retries=2")
        result = run_job(stack, home, script, "--storage-url", storage)
    assert proxy.hits == 2, result.stderr  # both attempts were damaged, and both were caught
    assert result.returncode == errors.EXIT_STAGE_IN, result.stderr
    assert "does not match the listed" in result.stderr
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / "got" / "corrupt-me.bin").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_missing_input_stops_the_command(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "stage-data")
    script = job(tmp_path, "#ALLAS stage-in stage-data/no-such-thing.txt")
    result = run_job(stack, home, script)
    assert result.returncode == errors.EXIT_STAGE_IN
    assert (
        f"{script}:2" in result.stderr
        and "no object matches allas:stage-data/no-such-thing.txt" in result.stderr
    )
    assert not (tmp_path / "ran").exists()


def test_control_characters_in_names_reach_the_log_escaped(stack: Stack, home: Path, tmp_path: Path) -> None:
    """An escape sequence or a bidi override in a name cannot drive the terminal that shows the log.

    (A newline cannot be in a directive; tests/unit/test_log.py shows that one cannot forge a line.)
    """
    make_bucket(stack, "stage-data")
    script = job(tmp_path, "#ALLAS stage-in 'stage-data/x\x1b[2J\u202egnp.exe'")
    result = run_job(stack, home, script)
    assert result.returncode == errors.EXIT_STAGE_IN
    assert "no object matches allas:stage-data/x\\x1b[2J\\u202egnp.exe" in result.stderr
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f\u202e]", result.stderr)  # only newlines end lines


def test_directive_error_names_the_line_and_runs_nothing(stack: Stack, home: Path, tmp_path: Path) -> None:
    """Found before any Keystone call: Keystone is a closed port here, which would be exit 69."""
    script = job(
        tmp_path, "#SBATCH -t 10\n#ALLAS stage-in stage-data/x\n#ALLAS stage-out results/ Bad_Bucket/"
    )
    result = run_job(stack, home, script, OS_AUTH_URL=DEAD_KEYSTONE)
    assert result.returncode == errors.EXIT_USAGE
    assert f"{script}:4: bucket name 'Bad_Bucket' breaks Allas's rules" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_check_good_and_bad(stack: Stack, home: Path, tmp_path: Path, dataset: Path) -> None:
    good = job(
        tmp_path,
        "#ALLAS stage-in stage-data/many/d1/ a/\n#ALLAS stage-out r/ stage-fresh-bucket/%j/",
    )
    result = allasrun(["check", str(good)], user_env(stack, home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    count = len(list((dataset / "many" / "d1").iterdir()))
    assert f"{good}:2: stage-in allas:stage-data/many/d1/: {count} object(s)" in result.stdout
    assert "stage-fresh-bucket/%j/" in result.stdout and "will be created" in result.stdout
    assert result.stdout.endswith("ok\n")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\n#ALLAS stage-in stage-data/many/d1/\n#ALLAS stage-in stage-data/nope/\n")
    missing = allasrun(["check", str(bad)], user_env(stack, home), cwd=tmp_path)
    assert missing.returncode == errors.EXIT_STAGE_IN
    assert f"{bad}:3: stage-in allas:stage-data/nope/: MISSING" in missing.stdout
    assert missing.stdout.endswith("1 input(s) missing\n")


def test_script_directives_with_any_command(stack: Stack, home: Path, tmp_path: Path) -> None:
    make_bucket(stack, "stage-script")
    put_object(stack, "stage-script", "in/data.txt", b"some input\n")
    plan = tmp_path / "plan.sh"
    plan.write_text("#ALLAS stage-in stage-script/in/data.txt\n#ALLAS stage-out copy.txt stage-script/out/\n")
    command = ["--script", str(plan), "--", "cp", "data.txt", "copy.txt"]
    result = allasrun(command, user_env(stack, home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert rclone(stack, tmp_path, "cat", "ref:stage-script/out/copy.txt").stdout == "some input\n"

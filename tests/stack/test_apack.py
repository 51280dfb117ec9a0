"""a-put's format on the real servers: `--pack` makes what a-get reads, `--unpack` reads what a-put makes.

Read back the way a-get reads an object (`rclone cat | zstdmt -d | tar -x -o`, Debian's rclone,
GNU tar and zstd), and written the way a-put writes one (`tar -cf - DIR | zstdmt`, its `_ameta`
from `find -type f | xargs ls -l`, both sent with `rclone copy`): neither side is allasrun's
own word. Trees have many small files, empty folders, links, hard links and odd names. A
malicious tar is refused, the object and member named, with nothing left in the destination.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from allasrun import errors
from tests.stack.stackutil import Stack, allasrun, make_bucket, put_object, rclone, reference_remote, s3_env
from tests.stack.test_staging import job, run_job

KIB = 1024


@pytest.fixture
def bucket(stack: Stack) -> str:
    name = f"apack-{uuid.uuid4().hex[:10]}"
    make_bucket(stack, name)
    return name


def tree(root: Path, files: int = 300, size: int = 16 * KIB) -> Path:
    """Many small files, an empty folder, a link, a hard link, names with spaces, a newline, UTF-8."""
    folder = root / "results"
    for n in range(files):
        sub = folder / f"part {n % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{n:04d}.dat").write_bytes(os.urandom(size))
    (folder / "empty" / "deeper").mkdir(parents=True)
    (folder / "Ünïcode name\nwith newline.txt").write_text("odd\n")
    os.symlink("part 0/f0000.dat", folder / "latest")
    os.link(folder / "part 1" / "f0001.dat", folder / "hard")
    return folder


def a_get(stack: Stack, workdir: Path, bucket: str, name: str, into: Path) -> None:
    """a-get's unpacking of `name`: `rclone cat | zstdmt -d | tar -x -o` (no zstd for a `.tar`)."""
    conf = workdir / "a-get-rclone.conf"
    conf.write_text(reference_remote(stack))
    into.mkdir()
    unzstd = "| zstdmt -d " if name.endswith(".zst") else ""
    pipeline = f'set -o pipefail; rclone --config "$1" cat "ref:$2" {unzstd}| tar -x -o'
    subprocess.run(
        ["bash", "-c", pipeline, "a-get", str(conf), f"{bucket}/{name}"], cwd=into, check=True, timeout=300
    )


def same_tree(one: Path, other: Path) -> None:
    found = subprocess.run(
        ["diff", "-r", "--no-dereference", one, other], capture_output=True, text=True, check=False
    )
    assert found.returncode == 0, found.stdout + found.stderr
    names = [sorted(p.relative_to(top) for p in top.rglob("*")) for top in (one, other)]
    assert names[0] == names[1]
    assert os.readlink(other / "latest") == "part 0/f0000.dat"
    assert os.stat(other / "hard").st_ino == os.stat(other / "part 1" / "f0001.dat").st_ino


def report(workdir: Path, name: str) -> dict[str, dict[str, Any]]:
    document = json.loads((workdir / name).read_text())
    return {
        row["destination"] if row["direction"] == "stage-out" else row["source"]: row
        for row in document["transfers"]
    }


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.zst"])
def test_a_pack_is_what_a_get_restores_and_unpack_brings_back(
    stack: Stack, home: Path, tmp_path: Path, bucket: str, compress: bool
) -> None:
    folder = tree(tmp_path)
    option = " --compress" if compress else ""
    name = "run/results.tar.zst" if compress else "run/results.tar"
    out = job(
        tmp_path,
        "#ALLAS option segment-size=1M report=out.json\n"  # ~5 MiB: a segmented object
        f"#ALLAS stage-out results {bucket}/run/ --pack{option}",
        "true",
    )
    result = run_job(stack, home, out)
    assert result.returncode == 0, result.stderr
    row = report(tmp_path, "out.json")[f"allas:{bucket}/{name}"]
    assert (row["status"], row["verified"]) == ("done", "md5 per segment"), row
    assert f"302 file(s) of {folder} packed into" in result.stderr

    listed = rclone(stack, tmp_path, "lsf", f"ref:{bucket}/run/").stdout.split()  # what a-list shows
    assert sorted(listed) == sorted([name[4:], name[4:] + "_ameta"])
    meta = rclone(stack, tmp_path, "cat", f"ref:{bucket}/{name}_ameta").stdout  # what a-info shows
    assert f"input: results\noriginal_location: {folder} \nprotocol: swift\n" in meta
    assert f"compression: {'zstd' if compress else 'none'}\n" in meta
    a_get(stack, tmp_path, bucket, name, tmp_path / "a-get")
    same_tree(folder, tmp_path / "a-get" / "results")

    back = tmp_path / "again"
    back.mkdir()
    script = job(
        back, f"#ALLAS option report=in.json\n#ALLAS stage-in {bucket}/{name} inputs/ --unpack", "true"
    )
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    same_tree(folder, back / "inputs" / "results")
    row = report(back, "in.json")[f"allas:{bucket}/{name}"]
    assert row["status"] == "done" and len(row["unpacked"]) == 302 + 5 + 4  # files, part folders, the rest
    assert f"the 302 file(s) {name}_ameta lists arrived whole" in result.stderr


def test_what_a_put_stored_is_unpacked_and_its_ameta_left_out(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    """Made as a-put makes them: `tar -cf - data | zstdmt -T2`, and a plain `tar -cf`; `rclone copy`."""
    source = tmp_path / "a-put"
    source.mkdir()
    folder = tree(source, files=60)
    staged = source / "staged"
    staged.mkdir()
    a_put = (
        "set -eo pipefail; tar -cf - results | zstdmt -T2 > staged/results.tar.zst\n"
        "tar -cf - results > staged/results.tar\n"
        "for object in results.tar.zst results.tar; do\n"
        '  { echo "user: $USER"; echo "host: $(hostname)"; echo "input: results";\n'
        '    echo "original_location: $PWD/results "; echo "protocol: swift"; echo "compression: none";\n'
        '    find results -type f -print0 | xargs -0 ls -l; } > "staged/${object}_ameta"\n'
        "done\n"
    )
    subprocess.run(["bash", "-c", a_put], cwd=source, check=True, env={**os.environ, "USER": "someone"})
    rclone(stack, tmp_path, "copy", str(staged), f"ref:{bucket}/2024/")
    script = job(
        tmp_path,
        f"#ALLAS option report=in.json\n#ALLAS stage-in {bucket}/2024/ inputs/ --unpack",
        "true",
    )
    result = run_job(stack, home, script)
    assert result.returncode == 0, result.stderr
    rows = report(tmp_path, "in.json")
    assert sorted(rows) == [f"allas:{bucket}/2024/results.tar", f"allas:{bucket}/2024/results.tar.zst"]
    assert f"allas:{bucket}/2024/: 2 a-put metadata object(s) (*_ameta) left out" in result.stderr
    assert result.stderr.count("the 62 file(s) 2024/results.tar") == 2
    same_tree(folder, tmp_path / "inputs" / "results")


def test_a_malicious_tar_is_refused_and_the_command_never_runs(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, target in (("ok.txt", tarfile.REGTYPE, ""), ("up", tarfile.SYMTYPE, "../../..")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info, io.BytesIO(b""))
        info = tarfile.TarInfo("up/home/planted")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    put_object(stack, bucket, "evil.tar", buffer.getvalue())
    script = job(tmp_path, f"#ALLAS stage-in {bucket}/evil.tar inputs/ --unpack", "touch ran")
    result = run_job(stack, home, script)
    assert result.returncode == errors.EXIT_STAGE_IN, result.stderr
    assert "evil.tar: member 'up' is a link that leads out of the tree ('../../..')" in result.stderr
    assert not (tmp_path / "ran").exists()
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == []


def test_a_pack_over_s3_is_a_multipart_upload_a_get_reads_over_swift(
    stack: Stack, home: Path, tmp_path: Path, bucket: str
) -> None:
    folder = tree(tmp_path, files=24, size=512 * KIB)  # 12 MiB that zstd cannot shrink: 3 parts of 5 MiB
    script = job(
        tmp_path,
        "#ALLAS option segment-size=5M report=out.json\n"
        f"#ALLAS stage-out results s3allas:{bucket}/ --pack --compress",
        "true",
    )
    result = allasrun(["run", str(script)], s3_env(stack, home), timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = report(tmp_path, "out.json")[f"s3allas:{bucket}/results.tar.zst"]
    assert (row["status"], row["verified"]) == ("done", "md5 per part"), row
    assert "protocol: S3 \n" in rclone(stack, tmp_path, "cat", f"ref:{bucket}/results.tar.zst_ameta").stdout
    a_get(stack, tmp_path, bucket, "results.tar.zst", tmp_path / "a-get")
    same_tree(folder, tmp_path / "a-get" / "results")

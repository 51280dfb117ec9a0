"""Readers never see a torn file; two writers of one rclone.conf never lose each other's work.

Real processes, real files: a reader process hammers the files while this process rewrites
them, as a job's rclone and swift calls do while the keeper renews.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from allasrun.atomicfile import write_atomic
from allasrun.auth.identity import Target
from allasrun.auth.token import Token
from allasrun.job.clientfiles import ClientFiles, update_section

REWRITES = 300

READER = textwrap.dedent(
    """
    import os, sys, time
    paths, stop = sys.argv[1:-1], sys.argv[-1]
    reads = torn = 0
    while not os.path.exists(stop):
        for path in paths:
            try:
                with open(path) as handle:
                    text = handle.read()
            except FileNotFoundError:
                torn += 1
                continue
            reads += 1
            # every complete file ends with the storage URL line, whose value ends 'END'
            if not text.endswith("END\\n") or text.count("auth_token") + text.count("OS_AUTH_TOKEN") != 1:
                torn += 1
    print(reads, torn)
    """
)


def token(n: int) -> Token:
    # Lengths vary, so a reader that caught a half-written file would see a different tail.
    return Token("t" * (n % 97 + 1) + str(n), 0.0, 90.0, f"http://s/v1/AUTH_{'x' * (n % 13)}END", "p", "u")


def test_reader_never_sees_a_torn_file(tmp_path: Path) -> None:
    files = ClientFiles(tmp_path, "allas", Target("http://ks/v3", "p", "u"), None)
    files.write(token(0))
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(files.rclone_config), str(files.env_path), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    for n in range(1, REWRITES + 1):
        files.write(token(n))
    stop.touch()
    reads, torn = map(int, reader.communicate(timeout=60)[0].split())
    assert torn == 0
    assert reads > REWRITES  # the reader really ran during the rewrites
    for path in (files.rclone_config, files.env_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"auth_token = {token(REWRITES).value}\n" in files.rclone_config.read_text()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from allasrun.job.clientfiles import update_section
    path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for n in range(count):
        update_section(path, name, f"[{name}]\\ntype = swift\\nauth_token = {name}-{n}\\n")
    """
)

OTHERS = "# my own remotes\n[work]\ntype = s3\nkey = a=b\n\n; backup\n[backup]\ntype = sftp\n"


def test_two_writers_keep_every_section(tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(OTHERS)
    update_section(conf, "allas", "[allas]\ntype = swift\n")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(conf), name, str(REWRITES)])
        for name in ("allas", "allas-two")
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    text = conf.read_text()
    assert text.startswith(OTHERS)
    assert f"auth_token = allas-{REWRITES - 1}\n" in text
    assert f"auth_token = allas-two-{REWRITES - 1}\n" in text
    assert text.count("[allas]") == 1
    assert text.count("[allas-two]") == 1
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert os.path.exists(tmp_path / ".rclone.conf.lock")


def test_a_full_disk_names_the_file_that_could_not_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from write() or fsync() carries no file name; the error must say which file it was."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        write_atomic(tmp_path / "rclone.conf", "[allas]\n")
    assert raised.value.filename == str(tmp_path / "rclone.conf")
    assert raised.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == []

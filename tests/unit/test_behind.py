"""Hashing behind a transfer: the same checks as in line, errors raised to the transferring
thread, and no thread left behind, whether the transfer finished or was abandoned."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import threading

import pytest

from allasrun.errors import Corrupt
from allasrun.staging import payload
from allasrun.staging.behind import Behind
from allasrun.staging.verify import PER_SEGMENT, Verifier
from tests.unit.fakestore import md5
from tests.unit.test_verify import DATA, flipped, plain, slo


def hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "allasrun-hash"]


def fed(check: Verifier, data: bytes, chunk: int, depth: int = 8) -> str:
    with contextlib.closing(Behind(check.update, depth)) as behind:
        for offset in range(0, len(data), chunk):
            behind.update(data[offset : offset + chunk])
        behind.wait()
    return check.finish()


@pytest.mark.parametrize("chunk", [1, 333, 3000])
def test_behind_checks_what_in_line_checks(chunk: int) -> None:
    obj, segments = slo()
    check = Verifier(obj, segments)
    assert fed(check, DATA, chunk, depth=2) == md5(DATA)  # a small queue: the feeder waits on it
    assert check.how == PER_SEGMENT
    assert not hashing_threads()


def test_a_corrupt_segment_found_behind_is_raised_to_the_feeder() -> None:
    obj, segments = slo()
    with pytest.raises(Corrupt, match="obj: segment 2 has MD5"):
        fed(Verifier(obj, segments), flipped(DATA, 2100), 100)
    assert not hashing_threads()
    with pytest.raises(Corrupt, match=re.escape(f"does not match the listed {md5(DATA)}")):
        fed(Verifier(plain(), None), flipped(DATA, 5), 100)


def test_an_abandoned_transfer_ends_the_thread() -> None:
    behind = Behind(hashlib.md5().update, depth=1)
    behind.update(DATA[:100])
    behind.close()
    behind.close()
    assert not hashing_threads()


@pytest.fixture
def hashed_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads hashed behind from 1,000 bytes on, so that DATA (3,000) is one."""
    monkeypatch.setattr(payload, "BEHIND", 1000)


@pytest.mark.usefixtures("hashed_behind")
def test_an_upload_hashed_behind_gives_the_md5_of_what_was_sent() -> None:
    source = io.BytesIO(b"head" + DATA)
    source.seek(4)  # sent from here, as a segment is
    with contextlib.closing(payload.Hashed(source, len(DATA) - 10)) as body:
        assert hashing_threads()
        while body.read(512):
            pass
        body.rewind()  # sent again: hashed afresh
        while body.read(700):
            pass
        assert body.md5() == md5(DATA[:-10])
    assert not hashing_threads()


@pytest.mark.usefixtures("hashed_behind")
def test_an_abandoned_upload_ends_its_hashing_thread() -> None:
    source = io.BytesIO(DATA)
    with pytest.raises(RuntimeError), contextlib.closing(payload.Hashed(source, len(DATA))) as body:
        body.read(512)
        raise RuntimeError("the connection was cut")
    assert not hashing_threads()
    with contextlib.closing(payload.Hashed(io.BytesIO(DATA), len(DATA))) as body:
        body.digest_ahead()  # hashed in line, before sending: no thread
        assert not hashing_threads()
        assert body.digest.hexdigest() == md5(DATA)

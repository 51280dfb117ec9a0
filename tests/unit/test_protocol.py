"""Which protocol a bare address means when neither the script nor ALLASRUN_PROTOCOL says."""

from __future__ import annotations

from pathlib import Path

import pytest

from allasrun.commands import protocol
from allasrun.errors import UsageError
from allasrun.staging.plan import StageIn, StageOut, StagePlan

BARE = StagePlan(stage_in=(StageIn("job.sh:2", "b1x", "a.txt", "./", remote=""),))
KEYS = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cret"}


def remote(env: dict[str, str], plan: StagePlan = BARE) -> str:
    return protocol.decide(plan, env).stage_in[0].remote


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A home with nothing in it, and allasrun's configuration under it."""
    return {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}


def test_s3_when_only_s3_keys_are_at_hand(home: dict[str, str]) -> None:
    assert remote({**home, **KEYS}) == "s3allas"


def test_s3_from_the_s3cmd_file_allas_conf_leaves(home: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / ".s3cfg").write_text(
        "[allas-project_2000178]\naccess_key = a\nsecret_key = s\nhost_base = a3s.fi\n"
    )
    assert remote(home) == "s3allas"


@pytest.mark.parametrize(
    "secret",
    [
        {"OS_PASSWORD": "pw"},
        {"OS_APPLICATION_CREDENTIAL_ID": "id", "OS_APPLICATION_CREDENTIAL_SECRET": "s"},
        {"OS_AUTH_TOKEN": "gAAAA"},
        {"ALLASRUN_CREDENTIALS": "/job/credential.json"},
    ],
)
def test_swift_when_a_keystone_secret_is_at_hand(home: dict[str, str], secret: dict[str, str]) -> None:
    assert remote({**home, **KEYS, **secret}) == "allas"


def test_swift_with_a_credential_stored_by_allasrun_login(home: dict[str, str], tmp_path: Path) -> None:
    stored = tmp_path / ".config/allasrun/credentials"
    stored.mkdir(parents=True)
    (stored / "project_2000178.json").write_text("{}")
    assert remote({**home, **KEYS}) == "allas"


def test_swift_when_there_is_nothing_at_all(home: dict[str, str]) -> None:
    assert remote(home) == "allas"  # and authentication then says what is missing


def test_named_remotes_are_left_as_they_are(home: dict[str, str]) -> None:
    named = StagePlan(stage_in=(StageIn("job.sh:2", "b1x", "a.txt", "./", remote="lumi-o"),))
    assert protocol.decide(named, {**home, **KEYS}) is named


def test_a_run_goes_without_keystone_only_on_s3_with_only_s3_keys(home: dict[str, str]) -> None:
    s3 = StagePlan(stage_in=(StageIn("job.sh:2", "b1x", "a.txt", "./", remote="s3allas"),))
    swift = StagePlan(stage_in=(StageIn("job.sh:2", "b1x", "a.txt", "./", remote="allas"),))
    assert protocol.keyless(s3, {**home, **KEYS})
    assert protocol.keyless(StagePlan(), {**home, **KEYS})  # no directives: the command's S3 clients
    assert not protocol.keyless(swift, {**home, **KEYS})  # Swift needs a token
    assert not protocol.keyless(s3, {**home, **KEYS, "OS_PASSWORD": "pw"})  # a token is at hand
    assert not protocol.keyless(s3, home)  # no keys: authentication says what is missing


def test_segments_asked_for_by_a_user_with_s3_keys_alone_are_refused_before_the_run(
    home: dict[str, str],
) -> None:
    plan = StagePlan(
        stage_out=(StageOut("job.sh:4", "big.bin", "b", "big.bin", remote="s3allas", large="segments"),)
    )
    with pytest.raises(
        UsageError, match=r"^job\.sh:4: --large=segments writes Swift segments, which needs Keystone"
    ):
        protocol.keyless(plan, {**home, **KEYS})
    assert not protocol.keyless(plan, {**home, **KEYS, "OS_PASSWORD": "pw"})

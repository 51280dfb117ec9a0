"""Finding a user's S3 keys: the AWS variables, the AWS shared files, s3cmd's file, in that order.

The files are written exactly as CSC's `allas-conf --mode S3` and `allas-conf --lumi` write them
(allas-cli-utils, allas_conf), so a Roihu or LUMI user's setup is what is tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from allasrun.auth.s3keys import S3Keys, find_keys
from allasrun.errors import EXIT_CONFIG, BadS3Keys

# allas_conf lines 763-772: uppercase names, `=` without spaces, endpoint in ~/.aws/config.
ALLAS_AWS_CREDENTIALS = "[default]\nAWS_ACCESS_KEY_ID=aws-access\nAWS_SECRET_ACCESS_KEY=aws-secret\n"
ALLAS_AWS_CONFIG = "[default]\nendpoint_url = https://a3s.fi\n"
# allas_conf lines 741-749: a section named after the project, host_base without a scheme.
ALLAS_S3CFG = (
    "[allas-project_2001234]\n"
    "access_key   = cfg-access\n"
    "secret_key   = cfg-secret\n"
    "host_base    = a3s.fi\n"
    "host_bucket  = %(bucket)s.a3s.fi\n"
    "human_readable_sizes = True\n"
    "enable_multipart = True\n"
    "signature_v2 = True\n"
    "use_https = True\n"
)
# allas_conf lines 376-384 (--lumi): host_base with its scheme.
LUMI_S3CFG = (
    "[lumi-465000001]\naccess_key   = lumi-access\nsecret_key   = lumi-secret\n"
    "host_base    = https://lumidata.eu\nhost_bucket  = https://lumidata.eu\nuse_https = True\n"
)


def write(home: Path, name: str, text: str) -> Path:
    path = home / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def failure(env: dict[str, str], home: Path) -> str:
    with pytest.raises(BadS3Keys) as caught:
        find_keys(env, home)
    assert caught.value.exit_code == EXIT_CONFIG
    return str(caught.value)


def test_nothing_anywhere_is_none(tmp_path: Path) -> None:
    assert find_keys({}, tmp_path) is None


def test_variables_come_first_and_carry_no_endpoint(tmp_path: Path) -> None:
    write(tmp_path, ".aws/credentials", ALLAS_AWS_CREDENTIALS)
    write(tmp_path, ".s3cfg", ALLAS_S3CFG)
    env = {"AWS_ACCESS_KEY_ID": "env-access", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    assert find_keys(env, tmp_path) == S3Keys("env-access", "env-secret", "AWS_ACCESS_KEY_ID", None)


@pytest.mark.parametrize("given", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
def test_half_a_pair_in_the_variables_names_both(tmp_path: Path, given: str) -> None:
    write(tmp_path, ".aws/credentials", ALLAS_AWS_CREDENTIALS)  # not used in its place
    message = failure({given: "value-of-half"}, tmp_path)
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "value-of-half" not in message


def test_allas_conf_aws_files(tmp_path: Path) -> None:
    write(tmp_path, ".aws/credentials", ALLAS_AWS_CREDENTIALS)
    write(tmp_path, ".aws/config", ALLAS_AWS_CONFIG)
    write(tmp_path, ".s3cfg", ALLAS_S3CFG)
    keys = find_keys({}, tmp_path)
    assert keys == S3Keys("aws-access", "aws-secret", "~/.aws/credentials [default]", "https://a3s.fi")


def test_aws_profile_and_its_config_section(tmp_path: Path) -> None:
    write(
        tmp_path,
        ".aws/credentials",
        ALLAS_AWS_CREDENTIALS + "[lumi]\naws_access_key_id = l-a\naws_secret_access_key = l-s\n",
    )
    config = (
        ALLAS_AWS_CONFIG
        + "[profile lumi]\ns3 =\n    addressing_style = path\nendpoint_url = https://lumidata.eu\n"
    )
    write(tmp_path, ".aws/config", config)
    keys = find_keys({"AWS_PROFILE": "lumi"}, tmp_path)
    assert keys == S3Keys("l-a", "l-s", "~/.aws/credentials [lumi]", "https://lumidata.eu")


def test_a_named_profile_the_file_lacks_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, ".aws/credentials", ALLAS_AWS_CREDENTIALS)
    write(tmp_path, ".s3cfg", ALLAS_S3CFG)
    assert (
        failure({"AWS_PROFILE": "other"}, tmp_path) == f"{path}: has no [other] section (AWS_PROFILE=other)"
    )


def test_no_default_profile_falls_through_to_s3cmd(tmp_path: Path) -> None:
    write(tmp_path, ".aws/credentials", "[other]\naws_access_key_id = a\naws_secret_access_key = s\n")
    write(tmp_path, ".s3cfg", ALLAS_S3CFG)
    keys = find_keys({}, tmp_path)
    assert keys is not None and keys.origin == "~/.s3cfg"


def test_variables_name_other_files(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "creds", ALLAS_AWS_CREDENTIALS)
    write(elsewhere, "conf", "[default]\nendpoint_url = http://127.0.0.1:8080\n")
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(elsewhere / "creds"),
        "AWS_CONFIG_FILE": str(elsewhere / "conf"),
    }
    keys = find_keys(env, tmp_path)
    assert keys == S3Keys("aws-access", "aws-secret", "~/elsewhere/creds [default]", "http://127.0.0.1:8080")


def test_allas_conf_s3cfg(tmp_path: Path) -> None:
    write(tmp_path, ".s3cfg", ALLAS_S3CFG)
    assert find_keys({}, tmp_path) == S3Keys("cfg-access", "cfg-secret", "~/.s3cfg", "https://a3s.fi")


def test_allas_conf_s3cfg_is_a_link_to_the_projects_file(tmp_path: Path) -> None:
    write(tmp_path, ".s3cfg_project_2001234", ALLAS_S3CFG)  # allas_conf line 756: ln -s
    (tmp_path / ".s3cfg").symlink_to(tmp_path / ".s3cfg_project_2001234")
    keys = find_keys({}, tmp_path)
    assert keys is not None and (keys.access, keys.origin) == ("cfg-access", "~/.s3cfg")


def test_allas_conf_lumi_s3cfg_keeps_its_scheme(tmp_path: Path) -> None:
    write(tmp_path, ".s3cfg", LUMI_S3CFG)
    assert find_keys({}, tmp_path) == S3Keys("lumi-access", "lumi-secret", "~/.s3cfg", "https://lumidata.eu")


def test_s3cmd_config_variable_quotes_http_and_later_sections(tmp_path: Path) -> None:
    text = (
        "access_key = early\n[one]\nsecret_key = 's'\nhost_base = 127.0.0.1:8080\nuse_https = False\n"
        '[two]\naccess_key = "a"\n'
    )
    path = write(tmp_path, "my.cfg", text)
    keys = find_keys({"S3CMD_CONFIG": str(path)}, tmp_path)
    assert keys == S3Keys("a", "s", "~/my.cfg", "http://127.0.0.1:8080")


def test_s3cmd_without_host_leaves_the_endpoint_to_the_caller(tmp_path: Path) -> None:
    write(tmp_path, ".s3cfg", "[default]\naccess_key = a\nsecret_key = s\n")
    assert find_keys({}, tmp_path) == S3Keys("a", "s", "~/.s3cfg", None)


def test_endpoint_variable_overrides_every_source(tmp_path: Path) -> None:
    write(tmp_path, ".s3cfg", LUMI_S3CFG)
    keys = find_keys({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, tmp_path)
    assert keys is not None and keys.endpoint == "http://127.0.0.1:9000"
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://e"}
    assert find_keys(env, tmp_path) == S3Keys("a", "s", "AWS_ACCESS_KEY_ID", "http://e")


def test_home_in_a_file_variable_is_the_given_home(tmp_path: Path) -> None:
    write(tmp_path, "cfg/s3", ALLAS_S3CFG)
    keys = find_keys({"S3CMD_CONFIG": "~/cfg/s3"}, tmp_path)
    assert keys is not None and keys.access == "cfg-access"


def test_the_secret_is_not_in_the_repr(tmp_path: Path) -> None:
    write(tmp_path, ".s3cfg", ALLAS_S3CFG)
    assert "cfg-secret" not in repr(find_keys({}, tmp_path))


@pytest.mark.parametrize(
    ("name", "text", "line", "says"),
    [
        (".aws/credentials", "[default]\nAWS_ACCESS_KEY_ID=a\n", 2, "[default] has no aws_secret_access_key"),
        (
            ".aws/credentials",
            "[default]\n\naws_secret_access_key=s\n",
            3,
            "[default] has no aws_access_key_id",
        ),
        (".aws/credentials", "# keys\n[default]\nAWS_ACCESS_KEY_ID=\n", 2, "has no aws_access_key_id and no"),
        (".aws/credentials", "aws_access_key_id = a\n", 1, "an option before any [section]"),
        (
            ".aws/credentials",
            "[default]\naws_access_key_id a-secret-looking-line\n",
            2,
            "neither a [section]",
        ),
        (".aws/credentials", "[default\naws_access_key_id = a\n", 1, "neither a [section]"),
        (".s3cfg", "[allas-p]\naccess_key = a\n\nhost_base = a3s.fi\n", 2, "the file has no secret_key"),
        (
            ".s3cfg",
            "[allas-p]\naccess_key = a\nsecret_key = s\nhost_base = x\nuse_https = maybe\n",
            5,
            "use_https",
        ),
        (
            ".s3cfg",
            "[allas-p]\naccess_key = a\nsecret_key = s\nsecret-looking line\n",
            4,
            "neither a [section]",
        ),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, name: str, text: str, line: int, says: str
) -> None:
    path = write(tmp_path, name, text)
    message = failure({}, tmp_path)
    assert message.startswith(f"{path}:{line}: ") and says in message
    assert "secret-looking" not in message


def test_a_file_without_either_key_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, ".s3cfg", "[default]\nhost_base = a3s.fi\n")
    assert failure({}, tmp_path) == f"{path}: the file has no access_key and no secret_key"


def test_a_bad_aws_config_is_an_error_too(tmp_path: Path) -> None:
    write(tmp_path, ".aws/credentials", ALLAS_AWS_CREDENTIALS)
    path = write(tmp_path, ".aws/config", "endpoint_url = https://a3s.fi\n")
    assert failure({}, tmp_path).startswith(f"{path}:1: ")


def test_binary_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / ".s3cfg"
    path.write_bytes(b"\xff\xfe[default]\n")
    assert failure({}, tmp_path) == f"{path}: is not UTF-8 text"

from __future__ import annotations

import copy
import pickle
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from credential_sidecar.config.changes import changed_fields, only_key_changed, same_source
from credential_sidecar.config.errors import ConfigError
from credential_sidecar.config.load import load_config, parse_config
from credential_sidecar.config.model import (
    AccessKeysConnection,
    Config,
    ContainerListener,
    ControlSettings,
    CredentialsFile,
    DaemonSettings,
    HealthListener,
    ImdsListener,
    RolesAnywhereConnection,
)
from credential_sidecar.config.values import Address

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"

ANCHOR = "arn:aws:rolesanywhere:eu-west-2:111122223333:trust-anchor/a1b2c3d4-0001"
PROFILE = "arn:aws:rolesanywhere:eu-west-2:111122223333:profile/a1b2c3d4-0002"
ROLE = "arn:aws:iam::111122223333:role/reports"
CANARY = "wJalrXUtnFEMI/K7MDENG/CANARYCANARYCANARY1"


def ra(**overrides: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "name": "reports",
        "type": "roles-anywhere",
        "certificate": "/etc/credential-sidecar/reports.crt",
        "private_key": "/etc/credential-sidecar/reports.key",
        "trust_anchor_arn": ANCHOR,
        "profile_arn": PROFILE,
        "role_arn": ROLE,
        "session_name": "reports-host-1",
    }
    conn.update(overrides)
    return {k: v for k, v in conn.items() if v is not None}


def ak(**overrides: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "name": "backups",
        "type": "access-keys",
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
    }
    conn.update(overrides)
    return {k: v for k, v in conn.items() if v is not None}


def doc(*connections: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**sections, "connections": list(connections)}


def problems(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    return info.value.problems


def one_problem(data: dict[str, Any]) -> str:
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


# --- valid configurations and defaults ------------------------------------------------------------


def test_minimal_config_fills_defaults() -> None:
    config = parse_config(doc(ra()))
    assert config.daemon == DaemonSettings()
    assert config.daemon.state_dir == Path("/var/lib/credential-sidecar")
    assert config.daemon.log_format == "json"
    assert config.daemon.log_level == "info"
    assert config.daemon.key_age_warning_days == 90
    assert config.imds == []
    assert (config.container, config.health, config.control) == (None, None, None)
    assert config.source is None
    conn = config.connection("reports")
    assert isinstance(conn, RolesAnywhereConnection)
    assert conn.region == "eu-west-2"  # from the trust anchor
    assert conn.duration_seconds == 3600
    assert conn.private_key_passphrase_file is None
    assert conn.intermediates is None
    assert conn.endpoint is None
    assert conn.container_token_file is None
    assert (conn.allowed_uids, conn.allowed_gids, conn.notes, conn.optional) == ([], [], "", False)


def test_access_keys_defaults() -> None:
    conn = parse_config(doc(ak())).connection("backups")
    assert isinstance(conn, AccessKeysConnection)
    assert conn.region == "us-east-1"
    assert conn.duration_seconds == 3600
    assert conn.secret_access_key_file is None
    assert (conn.role_arn, conn.session_name, conn.external_id, conn.created) == (None,) * 4


def test_region_default_follows_the_anchor_partition_too() -> None:
    anchor = "arn:aws-us-gov:rolesanywhere:us-gov-west-1:111122223333:trust-anchor/abc"
    profile = "arn:aws-us-gov:rolesanywhere:us-gov-west-1:111122223333:profile/def"
    role = "arn:aws-us-gov:iam::111122223333:role/path/to/reports"
    config = parse_config(doc(ra(trust_anchor_arn=anchor, profile_arn=profile, role_arn=role)))
    assert config.connection("reports").region == "us-gov-west-1"


def test_explicit_region_equal_to_the_anchor_is_fine() -> None:
    assert parse_config(doc(ra(region="eu-west-2"))).connection("reports").region == "eu-west-2"


def test_unknown_connection_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no connection named 'nope'"):
        parse_config(doc(ra())).connection("nope")


def test_models_are_frozen() -> None:
    config = parse_config(doc(ra()))
    with pytest.raises(ValidationError):
        config.connections[0].duration_seconds = 900  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.daemon = DaemonSettings()  # type: ignore[misc]


def test_pkcs12_certificate_needs_no_private_key() -> None:
    for cert in ("/etc/x/bundle.p12", "/etc/x/bundle.PFX"):
        conn = parse_config(doc(ra(certificate=cert, private_key=None))).connection("reports")
        assert isinstance(conn, RolesAnywhereConnection)
        assert conn.private_key is None


def test_private_key_required_for_pem_certificate() -> None:
    assert one_problem(doc(ra(private_key=None))) == (
        "connections[0].private_key: required unless certificate is a PKCS#12 bundle (.p12 or .pfx)"
    )


# --- paths ----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_base_dir() -> None:
    data = doc(
        ra(certificate="certs/r.crt", private_key="/abs/r.key", container_token_file="r.token"),
        daemon={"state_dir": "state"},
        control={"socket": "run/control.sock"},
    )
    config = parse_config(data, base_dir=Path("/etc/credential-sidecar"))
    conn = config.connection("reports")
    assert isinstance(conn, RolesAnywhereConnection)
    assert conn.certificate == Path("/etc/credential-sidecar/certs/r.crt")
    assert conn.private_key == Path("/abs/r.key")
    assert conn.container_token_file == Path("/etc/credential-sidecar/r.token")
    assert config.daemon.state_dir == Path("/etc/credential-sidecar/state")
    assert config.control == ControlSettings(
        socket=Path("/etc/credential-sidecar/run/control.sock")
    )


def test_without_base_dir_relative_paths_stay_relative() -> None:
    conn = parse_config(doc(ra(certificate="certs/r.crt"))).connection("reports")
    assert isinstance(conn, RolesAnywhereConnection)
    assert conn.certificate == Path("certs/r.crt")


def test_empty_path_is_refused() -> None:
    assert (
        one_problem(doc(ra(intermediates=""))) == "connections[0].intermediates: must not be empty"
    )


def test_load_config_resolves_against_the_file_directory(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        "[[connections]]\n"
        'name = "backups"\n'
        'type = "access-keys"\n'
        'access_key_id = "AKIAIOSFODNN7EXAMPLE"\n'
        'secret_access_key_file = "secrets/backups"\n'
        "created = 2024-01-15\n"
    )
    config = load_config(path)
    assert config.source == path
    conn = config.connection("backups")
    assert isinstance(conn, AccessKeysConnection)
    assert conn.secret_access_key_file == tmp_path / "secrets" / "backups"
    assert conn.created == date(2024, 1, 15)


# --- file-level errors ----------------------------------------------------------------------------


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[daemon]\nlog_level = "info"\nlog_format = json\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("TOML syntax error: ")
    assert "line 3" in info.value.problems[0]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == ["cannot read the file: No such file or directory"]
    assert str(info.value) == f"{missing}: 1 problem\n  - {info.value.problems[0]}"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'notes = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["not valid UTF-8 text"]


def test_config_error_str_lists_every_problem() -> None:
    error = ConfigError("/etc/x.toml", ["a: required", "b: unknown key"])
    assert str(error) == "/etc/x.toml: 2 problems\n  - a: required\n  - b: unknown key"


# --- keys, types, sections ------------------------------------------------------------------------


def test_unknown_keys_are_reported_with_their_path() -> None:
    data = doc(ra(duraton_seconds=900), daemon={"log_levle": "info"}, conections=[])
    assert problems(data) == [
        "daemon.log_levle: unknown key",
        "connections[0].duraton_seconds: unknown key",
        "conections: unknown key",
    ]


def test_missing_required_keys() -> None:
    assert one_problem(doc(ra(session_name=None))) == "connections[0].session_name: required"
    assert one_problem({}) == "connections: required"
    assert one_problem(doc()) == "connections: at least one connection is required"
    assert one_problem(doc(ra(), control={})) == "control.socket: required"


def test_unknown_and_missing_connection_type() -> None:
    assert problems(doc(ra(type="saml"), ra(name="other", type=None))) == [
        'connections[0].type: unknown connection type; must be "roles-anywhere" or "access-keys"',
        'connections[1].type: required; must be "roles-anywhere" or "access-keys"',
    ]


def test_wrong_value_types_get_short_messages() -> None:
    data = doc(
        ra(allowed_uids=["1001", -1], optional="yes", notes=5, duration_seconds="3600"),
        "not a table",
        daemon={"log_format": "text", "key_age_warning_days": 0},
        imds={"listen": "127.0.0.1:1", "connection": "reports"},
        health=[],
    )
    assert problems(data) == [
        'daemon.log_format: must be "json" or "console"',
        "daemon.key_age_warning_days: must be at least 1",
        "imds: must be an array of tables: write [[imds]]",
        "health: must be a table",
        # in the order the keys were written
        "connections[0].allowed_uids[0]: must be an integer",
        "connections[0].allowed_uids[1]: must be at least 0",
        "connections[0].optional: must be true or false",
        "connections[0].notes: must be a string",
        "connections[0].duration_seconds: must be an integer",
        "connections[1]: must be a table",
    ]


def test_created_must_be_a_date() -> None:
    assert one_problem(doc(ak(created="last year"))) == (
        "connections[0].created: must be a date (YYYY-MM-DD)"
    )


# --- connection rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [900, 3600, 43200])
def test_roles_anywhere_duration_in_range(seconds: int) -> None:
    parse_config(doc(ra(duration_seconds=seconds)))


@pytest.mark.parametrize("seconds", [0, 899, 43201])
def test_roles_anywhere_duration_out_of_range(seconds: int) -> None:
    assert one_problem(doc(ra(duration_seconds=seconds))) == (
        "connections[0].duration_seconds: must be between 900 and 43200"
    )


def test_access_keys_duration_depends_on_role_arn() -> None:
    parse_config(doc(ak(duration_seconds=129600)))
    assert one_problem(doc(ak(duration_seconds=129601))) == (
        "connections[0].duration_seconds: must be between 900 and 129600 (GetSessionToken)"
    )
    parse_config(doc(ak(role_arn=ROLE, duration_seconds=43200)))
    assert one_problem(doc(ak(role_arn=ROLE, duration_seconds=43201))) == (
        "connections[0].duration_seconds: must be between 900 and 43200 with role_arn (AssumeRole)"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "profile_arn",
            ROLE,
            "got an IAM role ARN; expected a Roles Anywhere profile ARN"
            " (arn:aws:rolesanywhere:<region>:<account>:profile/<id>)",
        ),
        (
            "trust_anchor_arn",
            PROFILE,
            "got a Roles Anywhere profile ARN; expected a Roles Anywhere trust anchor ARN"
            " (arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>)",
        ),
        (
            "role_arn",
            "arn:aws:s3:::my-bucket",
            'got an ARN of service "s3"; expected an IAM role ARN'
            " (arn:aws:iam::<account>:role/<name>)",
        ),
        (
            "role_arn",
            "reports",
            "must be an ARN like arn:aws:iam::<account>:role/<name>",
        ),
        (
            "role_arn",
            "arn:aws-eu:iam::111122223333:role/reports",
            "unknown partition; must be aws, aws-cn or aws-us-gov",
        ),
        (
            "role_arn",
            "arn:aws:iam::1111222233:role/reports",
            "the account must be 12 digits: arn:aws:iam::<account>:role/<name>",
        ),
        (
            "role_arn",
            "arn:aws:iam:us-east-1:111122223333:role/reports",
            "an IAM role ARN has no region: arn:aws:iam::<account>:role/<name>",
        ),
        (
            "role_arn",
            "arn:aws:iam::111122223333:role/bad name",
            "the role name must be 1 to 64 letters, digits or +=,.@_- (after an optional path)",
        ),
        (
            "profile_arn",
            "arn:aws:rolesanywhere:eu-west-2:111122223333:profile/",
            "the resource id is missing or malformed:"
            " arn:aws:rolesanywhere:<region>:<account>:profile/<id>",
        ),
        (
            "profile_arn",
            "arn:aws:rolesanywhere:Europe:111122223333:profile/abc",
            "the region part is not a region name like us-east-1:"
            " arn:aws:rolesanywhere:<region>:<account>:profile/<id>",
        ),
    ],
)
def test_arn_rules(key: str, value: str, message: str) -> None:
    assert one_problem(doc(ra(**{key: value}))) == f"connections[0].{key}: {message}"


def test_role_arn_with_a_path_is_fine() -> None:
    parse_config(doc(ra(role_arn="arn:aws:iam::111122223333:role/service/team/reports")))
    parse_config(doc(ak(role_arn="arn:aws-cn:iam::111122223333:role/x")))


def test_profile_in_another_region_than_the_anchor() -> None:
    profile = PROFILE.replace("eu-west-2", "us-east-1")
    assert one_problem(doc(ra(profile_arn=profile))) == (
        "connections[0].profile_arn: in region us-east-1 but trust_anchor_arn is in eu-west-2;"
        " they must be in the same region"
    )


def test_explicit_region_must_match_the_anchor() -> None:
    assert one_problem(doc(ra(region="us-east-1"))) == (
        "connections[0].region: us-east-1 differs from the trust anchor's region eu-west-2;"
        " leave region out or make them equal"
    )


@pytest.mark.parametrize("region", ["US-EAST-1", "useast1", "us-east", "eu-west-2a", ""])
def test_region_shape(region: str) -> None:
    assert one_problem(doc(ak(region=region))) == (
        "connections[0].region: must be a region name like us-east-1"
    )
    assert one_problem(doc(ra(region=region))) == (
        "connections[0].region: must be a region name like us-east-1"
    )


def test_bad_anchor_does_not_produce_spurious_region_problems() -> None:
    assert one_problem(doc(ra(trust_anchor_arn="nope"))) == (
        "connections[0].trust_anchor_arn: must be an ARN like"
        " arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>"
    )


@pytest.mark.parametrize("name", ["a", "Reports_2.prod-1", "x" * 64])
def test_good_connection_names(name: str) -> None:
    parse_config(doc(ra(name=name)))


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "with space", "a/b", "x" * 65])
def test_bad_connection_names(name: str) -> None:
    assert one_problem(doc(ra(name=name))) == (
        "connections[0].name: must be 1 to 64 letters, digits, '_', '.' or '-', starting with"
        " a letter or digit (names appear in URL paths)"
    )


def test_duplicate_connection_names() -> None:
    data = doc(ra(name="x"), ak(name="y"), ra(name="z"), ak(name="x"))
    assert problems(data) == ['connections[3].name: duplicate name "x" (also connections[0])']


@pytest.mark.parametrize("session", ["a", "x" * 65, "has space", "ünïcode"])
def test_session_name_shape(session: str) -> None:
    assert one_problem(doc(ra(session_name=session))) == (
        "connections[0].session_name: must be 2 to 64 letters, digits or +=,.@_-"
    )


def test_session_name_charset_accepts_aws_specials() -> None:
    parse_config(doc(ra(session_name="host_1+a=b,c.d@e-f")))


@pytest.mark.parametrize(
    ("key_id", "message"),
    [
        (
            "ASIAIOSFODNN7EXAMPLE",
            "an ASIA... key id is temporary (issued by STS); configure the long-term AKIA... key"
            " of an IAM user",
        ),
        ("AKIAIOSFODNN7EXAMPL", "must be 20 characters (got 19)"),
        ("AKIAiosfodnn7example", "must contain only uppercase letters and digits"),
        ("AROAIOSFODNN7EXAMPLE", "must start with AKIA (a long-term IAM user key)"),
    ],
)
def test_access_key_id_rules(key_id: str, message: str) -> None:
    assert one_problem(doc(ak(access_key_id=key_id))) == f"connections[0].access_key_id: {message}"


def test_session_name_and_external_id_need_role_arn() -> None:
    assert problems(doc(ak(session_name="s-1", external_id="ext-1"))) == [
        "connections[0].session_name: only used with role_arn (AssumeRole)",
        "connections[0].external_id: only used with role_arn (AssumeRole)",
    ]
    conn = parse_config(
        doc(ak(role_arn=ROLE, session_name="s-1", external_id="a:b/c"))
    ).connections[0]
    assert isinstance(conn, AccessKeysConnection)
    assert conn.external_id == "a:b/c"


def test_external_id_shape() -> None:
    assert one_problem(doc(ak(role_arn=ROLE, external_id="x"))) == (
        "connections[0].external_id: must be 2 to 1224 letters, digits or +=,.@:/_-"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://rolesanywhere.eu-west-2.amazonaws.com",
        "https://vpce-1.sts.us-east-1.vpce.amazonaws.com:8443/",
        "http://127.0.0.1:8080",
        "http://127.3.2.1",
        "http://localhost:9000/",
        "http://[::1]:9000",
    ],
)
def test_endpoint_accepted(url: str) -> None:
    parse_config(doc(ra(endpoint=url), ak(endpoint=url)))


PLAIN_HTTP = (
    "plain http is accepted only for a loopback host (127.0.0.1, ::1, localhost); use https"
)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://sts.amazonaws.com",
            PLAIN_HTTP,
        ),
        (
            "http://10.0.0.5:8080",
            PLAIN_HTTP,
        ),
        ("ftp://example.com", "must be an https URL like https://host[:port]"),
        ("sts.amazonaws.com", "must be an https URL like https://host[:port]"),
        ("https://h:99999", "must be a URL like https://host[:port]"),
        ("https://h/?x=1", "must not carry a user name, password, query or fragment"),
        ("https://user:pw@h", "must not carry a user name, password, query or fragment"),
    ],
)
def test_endpoint_refused(url: str, message: str) -> None:
    assert problems(doc(ra(endpoint=url), ak(endpoint=url))) == [
        f"connections[0].endpoint: {message}",
        f"connections[1].endpoint: {message}",
    ]


# --- listeners ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:9911", "127.0.0.1", 9911, "127.0.0.1:9911"),
        ("[::1]:9911", "::1", 9911, "[::1]:9911"),
        ("localhost:0", "localhost", 0, "localhost:0"),
        ("127.1.2.3:65535", "127.1.2.3", 65535, "127.1.2.3:65535"),
    ],
)
def test_address_parse(text: str, host: str, port: int, shown: str) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == shown
    assert address.is_loopback


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9911", 'must be "host:port", as in 127.0.0.1:9911'),
        (":9911", "the host is missing, as in 127.0.0.1:9911"),
        ("::1:9911", "an IPv6 address must be in brackets, as in [::1]:9911"),
        ("[::1]9911", 'must be "host:port", with IPv6 in brackets as in [::1]:9911'),
        ("[127.0.0.1]:9911", "brackets must hold an IPv6 address, as in [::1]:9911"),
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "the port must be a number from 0 to 65535"),
        ("127.0.0.256:9911", "the host is not a valid IPv4 address"),
        ("bad_host:9911", "the host is not a valid IP address or host name"),
        (9911, 'must be a "host:port" string'),
    ],
)
def test_bad_listen_address(text: Any, message: str) -> None:
    data = doc(ra(), health={"listen": text})
    assert one_problem(data) == f"health.listen: {message}"


NON_LOOPBACK = (
    "not a loopback address (127.0.0.0/8, ::1, localhost); set allow_non_loopback = true"
    " on this listener to serve credentials beyond this host"
)


@pytest.mark.parametrize("text", ["0.0.0.0:9911", "10.1.2.3:9911", "[::]:9911", "myhost:9911"])
def test_non_loopback_refused_unless_allowed(text: str) -> None:
    data = doc(
        ra(),
        imds=[{"listen": text, "connection": "reports"}],
        container={"listen": text.replace("9911", "9912")},
        health={"listen": text.replace("9911", "9913")},
    )
    assert problems(data) == [
        f"imds[0].listen: {NON_LOOPBACK}",
        f"container.listen: {NON_LOOPBACK}",
        f"health.listen: {NON_LOOPBACK}",
    ]
    for section in ("container", "health"):
        data[section]["allow_non_loopback"] = True
    data["imds"][0]["allow_non_loopback"] = True
    config = parse_config(data)
    assert config.imds[0].listen == Address.parse(text)
    assert config.container == ContainerListener(
        listen=Address.parse(text.replace("9911", "9912")), allow_non_loopback=True
    )
    assert isinstance(config.health, HealthListener)
    assert not config.health.listen.is_loopback


def test_imds_listener_fields() -> None:
    data = doc(ra(), imds=[{"listen": "[::1]:0", "connection": "reports", "allow_imdsv1": True}])
    assert parse_config(data).imds == [
        ImdsListener(listen=Address("::1", 0), connection="reports", allow_imdsv1=True)
    ]


def test_imds_must_name_an_existing_connection() -> None:
    data = doc(
        ra(name="a"),
        ak(name="b"),
        imds=[
            {"listen": "127.0.0.1:9911", "connection": "a"},
            {"listen": "127.0.0.1:9914", "connection": "c"},
        ],
    )
    assert problems(data) == ['imds[1].connection: no connection named "c"; known: a, b']


def test_listeners_may_not_share_an_address() -> None:
    data = doc(
        ra(),
        imds=[
            {"listen": "127.0.0.1:9911", "connection": "reports"},
            {"listen": "[::1]:9911", "connection": "reports"},
            {"listen": "127.0.0.1:0", "connection": "reports"},
        ],
        container={"listen": "[0:0::1]:9911"},
        health={"listen": "127.0.0.1:9911"},
    )
    assert problems(data) == [
        "container.listen: same address as imds[1].listen",
        "health.listen: same address as imds[0].listen",
    ]


def test_port_zero_may_repeat() -> None:
    data = doc(ra(), container={"listen": "127.0.0.1:0"}, health={"listen": "127.0.0.1:0"})
    assert parse_config(data).health == HealthListener(listen=Address("127.0.0.1", 0))


# --- all problems at once -------------------------------------------------------------------------


def test_every_problem_is_reported_in_one_error() -> None:
    data = doc(
        ra(name="a", duration_seconds=60, profile_arn=ROLE),
        ak(name="a", access_key_id="ASIAIOSFODNN7EXAMPLE", typo=1),
        {"name": "c", "type": "kerberos"},
        daemon={"log_level": "verbose"},
        imds=[{"listen": "0.0.0.0:9911", "connection": "missing"}],
        health={"listen": "127.0.0.1:9911"},
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="/etc/credential-sidecar/config.toml")
    expected = [
        'daemon.log_level: must be "debug", "info", "warning" or "error"',
        f"imds[0].listen: {NON_LOOPBACK}",
        'imds[0].connection: no connection named "missing"; known: a, c',
        "connections[0].profile_arn: got an IAM role ARN; expected a Roles Anywhere profile ARN"
        " (arn:aws:rolesanywhere:<region>:<account>:profile/<id>)",
        "connections[0].duration_seconds: must be between 900 and 43200",
        'connections[1].name: duplicate name "a" (also connections[0])',
        "connections[1].access_key_id: an ASIA... key id is temporary (issued by STS);"
        " configure the long-term AKIA... key of an IAM user",
        "connections[1].typo: unknown key",
        'connections[2].type: unknown connection type; must be "roles-anywhere" or "access-keys"',
    ]
    assert info.value.problems == expected
    assert info.value.source == "/etc/credential-sidecar/config.toml"
    assert str(info.value) == "\n".join(
        ["/etc/credential-sidecar/config.toml: 9 problems", *(f"  - {p}" for p in expected)]
    )


def test_cross_checks_tolerate_malformed_entries() -> None:
    data = {
        "imds": [5, {"connection": 7}, {"listen": None, "connection": "r"}],
        "container": "x",
        "connections": [3, ak(name=4), {"name": "r"}, None],
    }
    assert problems(data) == [
        "imds[0]: must be a table",
        "imds[1].connection: must be a string",
        "imds[1].listen: required",
        'imds[2].listen: must be a "host:port" string',
        "container: must be a table",
        "connections[0]: must be a table",
        "connections[1].name: must be a string",
        'connections[2].type: required; must be "roles-anywhere" or "access-keys"',
        "connections[3]: must be a table",
    ]


# --- secrets are never inline and never echoed ----------------------------------------------------


SECRET_MESSAGE = "never write a secret inline; put it in secret_access_key_file (mode 0600)"


@pytest.mark.parametrize("key", ["secret_access_key", "aws_secret_access_key"])
def test_inline_secret_refused_without_echo(key: str) -> None:
    data = doc(ak(**{key: CANARY}), ra(**{key: CANARY}), {"name": "x", key: CANARY})
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == [
        f"connections[0].{key}: {SECRET_MESSAGE}",
        f"connections[1].{key}: {SECRET_MESSAGE}",
        f"connections[2].{key}: {SECRET_MESSAGE}",
        'connections[2].type: required; must be "roles-anywhere" or "access-keys"',
    ]
    assert CANARY not in str(info.value)
    assert CANARY not in repr(info.value)
    assert all(CANARY not in str(arg) for arg in info.value.args)


def test_inline_passphrase_refused() -> None:
    assert one_problem(doc(ra(private_key_passphrase=CANARY))) == (
        "connections[0].private_key_passphrase: never write a secret inline;"
        " put it in private_key_passphrase_file (mode 0600)"
    )


def test_inline_secret_refused_anywhere_in_the_file() -> None:
    data = doc(ak(), daemon={"aws_secret_access_key": CANARY})
    assert problems(data) == [f"daemon.aws_secret_access_key: {SECRET_MESSAGE}"]


def test_no_field_echoes_its_value() -> None:
    """A secret pasted into the wrong key must not reach a terminal or a journal."""
    data = doc(
        ak(
            access_key_id=CANARY,
            role_arn=CANARY,
            session_name=CANARY,
            external_id=CANARY,
            region=CANARY,
            endpoint=CANARY,
            created=CANARY,
            duration_seconds=CANARY,
            notes=[CANARY],
            allowed_uids=[CANARY],
            oops=CANARY,
        ),
        ra(
            name="r",
            trust_anchor_arn=CANARY,
            profile_arn=CANARY,
            session_name=CANARY,
            region=CANARY,
            type="roles-anywhere",
            optional=CANARY,
        ),
        {"name": "t", "type": CANARY},
        daemon={"log_level": CANARY, "state_dir": [CANARY]},
        health={"listen": CANARY},
        imds=[{"listen": "127.0.0.1:1", "connection": "backups", "allow_imdsv1": CANARY}],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert len(info.value.problems) >= 20
    assert CANARY not in str(info.value)
    assert CANARY[:12] not in str(info.value)


# --- the shipped example --------------------------------------------------------------------------


def test_example_parses() -> None:
    config = parse_config(
        tomllib.loads(EXAMPLE.read_text()), source=str(EXAMPLE), base_dir=EXAMPLE.parent
    )
    assert {type(c) for c in config.connections} == {RolesAnywhereConnection, AccessKeysConnection}
    assert config.imds and config.container and config.health and config.control
    assert config.imds[0].connection == "reports"
    ra_conn = config.connection("reports")
    assert isinstance(ra_conn, RolesAnywhereConnection)
    assert ra_conn.region == "us-east-1"
    assert str(ra_conn.certificate).startswith("/etc/credential-sidecar/")
    assert "111122223333" in ra_conn.role_arn
    assert load_config(EXAMPLE).source == EXAMPLE


def test_example_sets_every_key() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    by_type = {c["type"]: c for c in raw["connections"]}
    sections: list[tuple[type[Config] | type[Any], dict[str, Any]]] = [
        (DaemonSettings, raw["daemon"]),
        (ImdsListener, raw["imds"][0]),
        (ContainerListener, raw["container"]),
        (HealthListener, raw["health"]),
        (ControlSettings, raw["control"]),
        (CredentialsFile, raw["credentials_file"][0]),
        (RolesAnywhereConnection, by_type["roles-anywhere"]),
        (AccessKeysConnection, by_type["access-keys"]),
    ]
    for model, table in sections:
        assert set(model.model_fields) == set(table), model.__name__
    assert set(Config.model_fields) == set(raw)


def test_a_dump_parses_back_to_the_same_config() -> None:
    config = load_config(EXAMPLE)
    dumped = config.model_dump(mode="json")
    assert dumped["imds"][0]["listen"] == "127.0.0.1:9911"
    assert parse_config(dumped).model_dump() == config.model_dump()


def test_config_error_pickles() -> None:
    error = ConfigError("/x.toml", ["a: required"])
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.source, clone.problems, str(clone)) == (error.source, error.problems, str(error))


def test_parse_config_does_not_mutate_its_input() -> None:
    data = doc(ra(certificate="rel.crt"), imds=[{"listen": "127.0.0.1:1", "connection": "reports"}])
    before = copy.deepcopy(data)
    parse_config(data, base_dir=Path("/x"))
    assert data == before


def test_two_connections_sharing_a_token_file_are_named_both(tmp_path: Path) -> None:
    shared = str(tmp_path / "run" / "app.token")
    data = doc(ra(name="a", container_token_file=shared), ak(name="b"),
               ra(name="c", container_token_file=str(tmp_path / "run" / ".." / "run" /
                                                     "app.token")))
    assert problems(data) == [
        f'connections[2].container_token_file: connections "a" (connections[0], its'
        f' container_token_file) and "c" would share the container token file {shared}:'
        " give each its own"]
    # Naming another connection's default file is the same mistake.
    state = tmp_path / "state"
    data = doc(ra(name="a"), ak(name="b", container_token_file=str(state / "tokens" / "a.token")),
               daemon={"state_dir": str(state)})
    assert problems(data) == [
        f'connections[1].container_token_file: connections "a" (connections[0], its default'
        f' token file) and "b" would share the container token file {state}/tokens/a.token:'
        " give each its own"]


def test_which_reloads_keep_a_connection_serving() -> None:
    """Neutral changes keep set and schedule; a rotated key (perhaps with neutral changes) is
    a rekey; anything else, or a change of type, is a new source."""
    def conn(data: dict[str, Any]) -> Any:
        return parse_config(doc(data)).connections[0]

    key = conn(ak())
    assert same_source(key, conn(ak(notes="moved", allowed_uids=[1001])))
    rotated = conn(ak(access_key_id="AKIAZZZZZZZZZZZZZZZZ", created="2026-11-30"))
    assert not same_source(key, rotated) and only_key_changed(key, rotated)
    assert only_key_changed(key, conn(ak(access_key_id="AKIAZZZZZZZZZZZZZZZZ", notes="moved")))
    assert not only_key_changed(key, key)
    assert not only_key_changed(key, conn(ak(access_key_id="AKIAZZZZZZZZZZZZZZZZ",
                                             region="eu-west-1")))
    assert not only_key_changed(key, conn(ra()))
    assert changed_fields(key, rotated) == ["access_key_id", "created"]

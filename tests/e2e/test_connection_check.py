"""`credential-sidecar test-connection` against moto with IAM checks on (and the Roles Anywhere
emulator): each step passes or names itself with the service's own words; exit 0, 4 or 2."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fake_aws as fa
from tests.helpers import harness as h
from tests.helpers.moto_tls import run_moto_tls

BUCKETS = ("first-bucket", "second-bucket")


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fa.FakeAws]:
    with fa.moto_server(tmp_path_factory.mktemp("moto")) as server:
        for bucket in BUCKETS:
            server.client("s3").create_bucket(Bucket=bucket)
        server.auth(True)
        yield server


def run(tmp: Path, connections: list[dict[str, Any]], name: str, *extra: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp / "config.toml"
    config.write_text(h.to_toml({"daemon": {"state_dir": str(tmp / "state")},
                                 "connections": connections}))
    return subprocess.run([*h.CLI, "test-connection", name, "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=90, env=env or h.clean_env())


def test_a_key_that_may_list_buckets_passes(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("lister", [*fa.APP_ACTIONS, "s3:ListAllMyBuckets"])
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", aws.url)
    done = run(tmp_path, [conn], "app")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == 'Test Connection "app" (access-keys, GetSessionToken, us-east-1)'
    assert lines[1].startswith("[1/3] credentials: ok: ASIA")
    assert f"from GetSessionToken with {key.id}" in lines[1]
    assert lines[2] == (f"[2/3] sts:GetCallerIdentity: ok: account {fa.ACCOUNT},"
                        f" arn:aws:iam::{fa.ACCOUNT}:user/lister")
    assert lines[3] == "[3/3] s3:ListBuckets: ok: 2 buckets"
    assert lines[4] == "Test Connection succeeded."
    assert "warning" not in done.stdout
    assert key.secret not in done.stdout + done.stderr


@pytest.mark.parametrize("how", ["not allowed", "denied"])
def test_a_valid_identity_that_may_not_list_buckets_fails_step_3(
    aws: fa.FakeAws, tmp_path: Path, how: str
) -> None:
    user = f"nolist-{how.replace(' ', '-')}"
    if how == "not allowed":
        key = aws.user(user, fa.APP_ACTIONS)
    else:
        key = aws.user(user, [*fa.APP_ACTIONS, "s3:*"], deny=["s3:ListAllMyBuckets"])
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", aws.url)
    done = run(tmp_path, [conn], "app")
    assert done.returncode == 4
    assert "[2/3] sts:GetCallerIdentity: ok" in done.stdout
    assert "[3/3] s3:ListBuckets: FAILED: AccessDenied: Access Denied" in done.stdout
    assert done.stderr.strip() == (
        "Test Connection failed at step 3 (s3:ListBuckets): the identity is valid but may not"
        " list buckets (it needs s3:ListAllMyBuckets). The service said: AccessDenied:"
        " Access Denied")


def test_a_deactivated_key_fails_step_1_with_the_services_message(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    key = aws.user("inactive", [*fa.APP_ACTIONS, "s3:ListAllMyBuckets"])
    aws.client("iam").update_access_key(UserName="inactive", AccessKeyId=key.id,
                                        Status="Inactive")
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", aws.url)
    done = run(tmp_path, [conn], "app")
    assert done.returncode == 4
    assert ("[1/3] credentials: FAILED: InvalidClientTokenId: The security token included in"
            " the request is invalid.") in done.stdout
    assert "failed at step 1 (credentials)" in done.stderr
    assert "[2/3]" not in done.stdout


def test_root_credentials_pass_with_a_warning(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("pretend-root", [*fa.APP_ACTIONS, "s3:ListAllMyBuckets"])
    aws.switches(root_keys=[key.id])
    try:
        conn = fa.access_key_connection("root", key, tmp_path / "root.secret", aws.url)
        done = run(tmp_path, [conn], "root")
    finally:
        aws.switches(root_keys=[])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"account {fa.ACCOUNT}, arn:aws:iam::{fa.ACCOUNT}:root" in done.stdout
    assert ("      warning: these are the AWS account root user's credentials; AWS advises an"
            " IAM user with only the permissions needed instead") in done.stdout


def test_assume_role_mode_tests_the_roles_credentials(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("tc-assumer", ["sts:AssumeRole"])
    role = aws.role("tc-lister", "tc-assumer", ["s3:ListAllMyBuckets", "sts:GetCallerIdentity"])
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", aws.url, role_arn=role,
                                    session_name="tc")
    done = run(tmp_path, [conn], "app")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"from AssumeRole {role} with {key.id}" in done.stdout
    assert f"arn:aws:sts::{fa.ACCOUNT}:assumed-role/tc-lister/tc" in done.stdout


@pytest.mark.parametrize("by", ["option", "environment"])
def test_the_endpoint_can_come_from_the_command_line_or_the_environment(
    aws: fa.FakeAws, tmp_path: Path, by: str
) -> None:
    key = aws.user(f"by-{by}", [*fa.APP_ACTIONS, "s3:ListAllMyBuckets"])
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", None)
    if by == "option":
        done = run(tmp_path, [conn], "app", "--endpoint-url", aws.url)
    else:
        done = run(tmp_path, [conn], "app", env=h.clean_env(AWS_ENDPOINT_URL=aws.url))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[3/3] s3:ListBuckets: ok: 2 buckets" in done.stdout


def test_roles_anywhere_connections_are_tested_too(aws: fa.FakeAws, tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        conn = h.connection("ra", material, emu.url)
        # moto with IAM checks on knows nothing of the emulator's sets: STS refuses them.
        refused = run(tmp_path, [conn], "ra", "--endpoint-url", aws.url)
        aws.auth(False)
        try:
            passed = run(tmp_path, [conn], "ra", "--endpoint-url", aws.url)
        finally:
            aws.auth(True)
        issued = {c["accessKeyId"] for c in emu.stats()["issued"]}
    assert refused.returncode == 4
    assert "[1/3] credentials: ok: ASIA" in refused.stdout
    assert "[2/3] sts:GetCallerIdentity: FAILED: InvalidClientTokenId" in refused.stdout
    assert "failed at step 2 (sts:GetCallerIdentity): STS does not accept" in refused.stderr
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert 'Test Connection "ra" (roles-anywhere, Roles Anywhere, us-east-1)' in passed.stdout
    served = passed.stdout.splitlines()[1].split()[3]
    assert served in issued, "the emulator's own set was used"
    assert "[3/3] s3:ListBuckets: ok: 2 buckets" in passed.stdout


def test_bad_config_and_unknown_names_exit_2(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("tc-config", fa.APP_ACTIONS)
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", aws.url)
    unknown = run(tmp_path, [conn], "nope")
    assert unknown.returncode == 2 and "no connection named 'nope'; known: app" in unknown.stderr
    invalid = run(tmp_path, [{**conn, "duration_seconds": 5}], "app")
    assert invalid.returncode == 2 and "duration_seconds" in invalid.stderr
    plain = run(tmp_path, [conn], "app", "--endpoint-url", "http://example.com")
    assert plain.returncode == 2
    assert "--endpoint-url: plain http is accepted only for a loopback host" in plain.stderr


def test_an_exposed_secret_file_fails_step_1_and_names_the_fix(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    key = aws.user("tc-exposed", fa.APP_ACTIONS)
    conn = fa.access_key_connection("app", key, tmp_path / "app.secret", aws.url)
    (tmp_path / "app.secret").chmod(0o640)
    done = run(tmp_path, [conn], "app")
    assert done.returncode == 4
    assert "has mode 0640" in done.stdout and "chmod 600" in done.stdout
    assert key.secret not in done.stdout + done.stderr


def test_the_daemons_ca_bundle_is_trusted_as_the_daemon_trusts_it(tmp_path: Path) -> None:
    """An STS behind a private CA named in [daemon] ca_bundle: every step trusts it, as the
    running daemon would; without it, step 1 names the TLS failure."""
    with run_moto_tls(tmp_path / "moto") as moto:
        key = fa.Key("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "any")
        conn = fa.access_key_connection("app", key, tmp_path / "app.secret", moto.url)
        config = tmp_path / "config.toml"
        daemon = {"state_dir": str(tmp_path / "state")}
        env = h.clean_env()
        config.write_text(h.to_toml({"daemon": daemon, "connections": [conn]}))
        untrusted = subprocess.run([*h.CLI, "test-connection", "app", "--config", str(config)],
                                   capture_output=True, text=True, timeout=90, env=env)
        config.write_text(h.to_toml({"daemon": {**daemon, "ca_bundle": str(moto.ca_pem)},
                                     "connections": [conn]}))
        trusted = subprocess.run([*h.CLI, "test-connection", "app", "--config", str(config)],
                                 capture_output=True, text=True, timeout=90, env=env)
    assert untrusted.returncode == 4 and "[1/3] credentials: FAILED" in untrusted.stdout
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "[3/3] s3:ListBuckets: ok" in trusted.stdout
    assert key.secret not in trusted.stdout + trusted.stderr

"""`credential-sidecar rotate-keys` against moto's IAM (checks on), with the daemon running:
a whole rotation, and rotations that stop early or halfway, always leaving a working key."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers import fake_aws as fa
from tests.helpers import harness as h

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
CREDS = "latest/meta-data/iam/security-credentials/"
BUCKET = "rotation-bucket"
NOBODY = 65534


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fa.FakeAws]:
    with fa.moto_server(tmp_path_factory.mktemp("moto")) as server:
        server.client("s3").create_bucket(Bucket=BUCKET)
        server.auth(True)
        yield server


def rotate(config: Path, *args: str, name: str = "app") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*h.CLI, "rotate-keys", name, "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=h.clean_env())


def served(daemon: h.Daemon, name: str = "app") -> dict[str, Any]:
    base = daemon.url(f"imds:{name}")
    _, _, token = h.http("PUT", base + "latest/api/token", {TTL: "60"})
    code, _, body = h.http("GET", base + CREDS + name, {"X-aws-ec2-metadata-token": token.decode()})
    assert code == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def row(daemon: h.Daemon, name: str = "app") -> dict[str, Any]:
    code, _, body = h.http("GET", daemon.url("health") + "status")
    assert code == 200
    return next(r for r in json.loads(body)["connections"] if r["name"] == name)


def works(aws: fa.FakeAws, doc: dict[str, Any]) -> None:
    s3 = aws.client("s3", key_id=doc["AccessKeyId"], secret=doc["SecretAccessKey"],
                    token=doc["Token"])
    s3.put_object(Bucket=BUCKET, Key=doc["AccessKeyId"], Body=b"x")


def refused(aws: fa.FakeAws, key_id: str, secret: str) -> str:
    with pytest.raises(ClientError) as caught:
        aws.client("sts", key_id=key_id, secret=secret).get_caller_identity()
    return str(caught.value.response["Error"]["Code"])


def setup(aws: fa.FakeAws, tmp: Path, user: str, actions: list[str]) -> tuple[fa.Key, dict]:
    key = aws.user(user, [*actions, "s3:*"])
    conn = fa.access_key_connection("app", key, tmp / "app.secret", aws.url,
                                    created="2024-01-15", notes="rotated by the tests")
    return key, conn


def control(tmp: Path) -> dict[str, Any]:
    return {"control": {"socket": str(tmp / "control.sock")}}


def test_a_whole_rotation_with_the_daemon_running(aws: fa.FakeAws, tmp_path: Path) -> None:
    old, conn = setup(aws, tmp_path, "rotated", fa.ROTATE_ACTIONS)
    with h.daemon(tmp_path, [conn], extra=control(tmp_path)) as daemon:
        before = served(daemon)
        assert aws.sessions()[before["AccessKeyId"]] == old.id
        config_before = daemon.config_path.read_text()
        os.chown(tmp_path / "app.secret", NOBODY, NOBODY)  # as if the daemon ran as its own user
        aws.switches(unready_new_keys=2)  # IAM's eventual consistency: the first tries fail
        try:
            done = rotate(daemon.config_path, "--wait-seconds", "30")
        finally:
            aws.switches(unready_new_keys=0)
        assert done.returncode == 0, done.stdout + done.stderr
        states = aws.key_states("rotated")
        new_id = next(k for k in states if k != old.id)
        assert states == {old.id: "Inactive", new_id: "Active"}
        # The config changed in exactly the key's line and created; the secret file too.
        changed = [(a, b) for a, b in zip(config_before.splitlines(),
                                          daemon.config_path.read_text().splitlines(),
                                          strict=True) if a != b]
        assert [a for a, _ in changed] == [f'access_key_id = "{old.id}"', 'created = "2024-01-15"']
        assert changed[0][1] == f'access_key_id = "{new_id}"'
        new_secret = (tmp_path / "app.secret").read_text().strip()
        assert new_secret != old.secret
        assert (tmp_path / "app.secret").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "app.secret").stat().st_uid == NOBODY, "owned as the old file was"
        assert aws.client("sts", key_id=new_id, secret=new_secret).get_caller_identity()
        assert not (tmp_path / "app.secret.bak").exists()
        assert not (tmp_path / "app.secret.new").exists()
        # The daemon runs on the new key, and what it serves works.
        assert row(daemon)["long_term_key_id"] == new_id
        after = h.wait_for(lambda: (d := served(daemon))["AccessKeyId"] != before["AccessKeyId"]
                           and d, what="a set from the new key")
        assert aws.sessions()[after["AccessKeyId"]] == new_id
        works(aws, after)
        log = daemon.process.log.read_text()
    assert refused(aws, old.id, old.secret) == "InvalidClientTokenId", "the old key is retired"
    assert "the new key works: 3 STS calls in a row succeeded (5 tries)" in done.stdout
    assert "the daemon renewed with the new key" in done.stdout
    assert f"key {old.id}: Inactive" in done.stdout
    assert f"key {new_id}: Active, in {tmp_path / 'app.secret'}" in done.stdout
    assert "access key changed, renewing with it" in log
    for secret in (old.secret, new_secret):
        assert secret not in log and secret not in done.stdout + done.stderr


def test_without_a_running_daemon_and_with_delete_old(aws: fa.FakeAws, tmp_path: Path) -> None:
    old, conn = setup(aws, tmp_path, "offline", fa.ROTATE_ACTIONS)
    config = tmp_path / "config.toml"
    config.write_text(h.to_toml(h.daemon_config(tmp_path, [conn])))
    done = rotate(config, "--delete-old")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no running daemon found" in done.stdout
    states = aws.key_states("offline")
    assert old.id not in states and list(states.values()) == ["Active"]
    assert f"key {old.id}: deleted (--delete-old)" in done.stdout


def test_two_keys_already_stops_before_changing_anything(aws: fa.FakeAws, tmp_path: Path) -> None:
    old, conn = setup(aws, tmp_path, "crowded", fa.ROTATE_ACTIONS)
    other = aws.new_key("crowded")
    config = tmp_path / "config.toml"
    config.write_text(h.to_toml(h.daemon_config(tmp_path, [conn])))
    text, secret = config.read_bytes(), (tmp_path / "app.secret").read_bytes()
    done = rotate(config, "--delete-inactive")
    assert done.returncode == 4
    assert (f"the identity already has two access keys, the most AWS allows: the configured"
            f" {old.id} and {other.id} (Active, created ") in done.stderr
    assert "deactivate and delete it if nothing uses it" in done.stderr
    assert aws.key_states("crowded") == {old.id: "Active", other.id: "Active"}
    assert config.read_bytes() == text and (tmp_path / "app.secret").read_bytes() == secret
    # An inactive second key may be deleted to make room, when the operator says so.
    aws.client("iam").update_access_key(UserName="crowded", AccessKeyId=other.id,
                                        Status="Inactive")
    refuses = rotate(config)
    assert refuses.returncode == 4 and "pass --delete-inactive" in refuses.stderr
    done = rotate(config, "--delete-inactive")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deleted the inactive key {other.id} to make room" in done.stdout
    assert other.id not in aws.key_states("crowded")


def test_a_new_key_that_never_works_is_deleted_and_the_old_stays(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    old, conn = setup(aws, tmp_path, "never", fa.ROTATE_ACTIONS)
    with h.daemon(tmp_path, [conn], extra=control(tmp_path)) as daemon:
        text, secret = daemon.config_path.read_bytes(), (tmp_path / "app.secret").read_bytes()
        aws.switches(unready_new_keys=-1)
        try:
            done = rotate(daemon.config_path, "--wait-seconds", "3")
        finally:
            aws.switches(unready_new_keys=0)
        assert done.returncode == 4
        assert daemon.config_path.read_bytes() == text
        assert (tmp_path / "app.secret").read_bytes() == secret
        assert not (tmp_path / "app.secret.new").exists()
        assert aws.key_states("never") == {old.id: "Active"}
        works(aws, served(daemon))
        assert row(daemon)["long_term_key_id"] == old.id
    assert "did not work within 3 s" in done.stderr
    assert "InvalidClientTokenId" in done.stderr
    assert f"key {old.id}: Active (configured: the daemon uses this one)" in done.stderr
    assert "deleted (it never worked)" in done.stderr


def test_a_rotation_failing_halfway_leaves_the_new_key_working(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    # May create keys but not deactivate them: the rotation fails after the swap.
    actions = [a for a in fa.ROTATE_ACTIONS if a != "iam:UpdateAccessKey"]
    old, conn = setup(aws, tmp_path, "halfway", actions)
    with h.daemon(tmp_path, [conn], extra=control(tmp_path)) as daemon:
        done = rotate(daemon.config_path)
        assert done.returncode == 4, done.stdout + done.stderr
        states = aws.key_states("halfway")
        new_id = next(k for k in states if k != old.id)
        assert states == {old.id: "Active", new_id: "Active"}
        assert f'access_key_id = "{new_id}"' in daemon.config_path.read_text()
        assert row(daemon)["long_term_key_id"] == new_id
        doc = h.wait_for(lambda: (d := served(daemon)) and aws.sessions().get(
            d["AccessKeyId"]) == new_id and d, what="a set from the new key")
        works(aws, doc)
    backup = tmp_path / "app.secret.bak"
    assert backup.read_text().strip() == old.secret, "the old secret is kept"
    assert ("rotate-keys failed: iam:UpdateAccessKey " + old.id + " Inactive failed:"
            " AccessDenied") in done.stderr
    assert f"key {new_id}: Active, in {tmp_path / 'app.secret'}" in done.stderr
    assert "(configured: the daemon uses this one)" in done.stderr
    assert f"key {old.id}: Active, no longer used; old secret in {backup}" in done.stderr
    assert (f"to do: deactivate {old.id}: aws iam update-access-key --access-key-id {old.id}"
            " --status Inactive") in done.stderr


def test_a_config_it_cannot_edit_is_refused_before_any_key_is_made(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    old, conn = setup(aws, tmp_path, "inline", fa.ROTATE_ACTIONS)
    config = tmp_path / "config.toml"
    inline = ", ".join(f"{k} = {h.toml_value(v)}" for k, v in conn.items())
    config.write_text(f"connections = [{{{inline}}}]\n\n"
                      f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    done = rotate(config)
    assert done.returncode == 4
    assert "cannot be updated with the new key id" in done.stderr
    assert aws.key_states("inline") == {old.id: "Active"}


def test_only_access_key_connections_rotate(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    config = tmp_path / "config.toml"
    config.write_text(h.to_toml(h.daemon_config(
        tmp_path, [h.connection("ra", material, "http://127.0.0.1:9")])))
    done = rotate(config, name="ra")
    assert done.returncode == 2
    assert "only access-keys connections have long-term keys to rotate" in done.stderr


def test_a_systemd_credential_is_refused_with_the_manual_procedure(tmp_path: Path) -> None:
    conn = {"name": "app", "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "endpoint": "http://127.0.0.1:9"}  # secret from $CREDENTIALS_DIRECTORY/app
    config = tmp_path / "config.toml"
    config.write_text(h.to_toml(h.daemon_config(tmp_path, [conn])))
    done = rotate(config)
    assert done.returncode == 4
    assert "the secret comes from a systemd credential" in done.stderr
    assert "systemctl restart credential-sidecar" in done.stderr
    assert "key AKIAIOSFODNN7EXAMPLE: " not in done.stderr, "no key was listed or touched"

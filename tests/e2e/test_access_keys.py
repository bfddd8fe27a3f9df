"""Access-key connections against moto with IAM checks on: the daemon serves STS session
credentials through every door, never the long-term key, and knows its key's age and owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import fake_aws as fa
from tests.helpers import harness as h
from tests.helpers.sdk import BOTO3_SNIPPET, imds_env

BUCKET = "vended-bucket"


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fa.FakeAws]:
    with fa.moto_server(tmp_path_factory.mktemp("moto")) as server:
        server.client("s3").create_bucket(Bucket=BUCKET)
        server.auth(True)  # from here on moto verifies signatures and IAM policies
        yield server


@dataclass
class Served:
    daemon: h.Daemon
    tmp: Path

    def status(self) -> dict[str, dict[str, Any]]:
        code, _, body = h.http("GET", self.daemon.url("health") + "status")
        assert code == 200
        return {row["name"]: row for row in json.loads(body)["connections"]}

    def metrics(self) -> str:
        code, _, body = h.http("GET", self.daemon.url("health") + "metrics")
        assert code == 200
        return body.decode()

    def imds(self, door: str) -> dict[str, Any]:
        return h.imds_read(self.daemon.url(door))[1]

    def process(self, name: str) -> dict[str, Any]:
        """credential-process over the control socket (as root, whom the socket admits)."""
        done = subprocess.run([*h.CLI, "credential-process", name, "--socket",
                               str(self.tmp / "control.sock")], capture_output=True, text=True,
                              timeout=30, env=h.clean_env())
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def container(self, name: str) -> dict[str, Any]:
        token = (self.tmp / "state" / "tokens" / f"{name}.token").read_text()
        code, _, body = h.http("GET", self.daemon.url("container") + f"v1/credentials/{name}",
                               {"Authorization": token})
        assert code == 200, body
        return json.loads(body)  # type: ignore[no-any-return]


def s3_works(aws: fa.FakeAws, key_id: str, secret: str, token: str) -> None:
    """Signed with the served set, verified by moto against the session it issued."""
    s3 = aws.client("s3", key_id=key_id, secret=secret, token=token)
    s3.put_object(Bucket=BUCKET, Key=f"from-{key_id}", Body=b"hello")
    assert s3.get_object(Bucket=BUCKET, Key=f"from-{key_id}")["Body"].read() == b"hello"


@pytest.fixture(scope="module")
def keys(aws: fa.FakeAws) -> dict[str, fa.Key]:
    """An app user that may use S3; one that may not list its keys; one that only assumes a role."""
    return {
        "app": aws.user("app", [*fa.APP_ACTIONS, "s3:*"]),
        "quiet": aws.user("quiet", ["sts:GetSessionToken", "sts:GetCallerIdentity", "s3:*"]),
        "assumer": aws.user("assumer", ["sts:AssumeRole", "sts:GetCallerIdentity",
                                        "iam:ListAccessKeys"]),
    }


@pytest.fixture(scope="module")
def served(aws: fa.FakeAws, keys: dict[str, fa.Key],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("access-keys")
    role = aws.role("vended", "assumer", ["s3:*", "sts:GetCallerIdentity"])
    old = (datetime.now(UTC) - timedelta(days=120)).date()
    conns = [
        fa.access_key_connection("app", keys["app"], tmp / "app.secret", aws.url,
                                 notes="nightly backups"),
        # Without iam:ListAccessKeys the key's age comes from the config's `created`.
        fa.access_key_connection("quiet", keys["quiet"], tmp / "quiet.secret", aws.url,
                                 created=old.isoformat()),
        fa.access_key_connection("assumed", keys["assumer"], tmp / "assumer.secret", aws.url,
                                 role_arn=role, session_name="e2e-assumed",
                                 external_id="e2e-external"),
    ]
    imds = [{"listen": "127.0.0.1:0", "connection": "app"},
            {"listen": "127.0.0.1:0", "connection": "assumed"}]
    extra = {"container": {"listen": "127.0.0.1:0"},
             "control": {"socket": str(tmp / "control.sock")}}
    with h.daemon(tmp, conns, imds=imds, extra=extra) as daemon:
        yield Served(daemon, tmp)


def test_every_door_serves_session_credentials_that_work(
    aws: fa.FakeAws, keys: dict[str, fa.Key], served: Served
) -> None:
    sessions = aws.sessions()
    via_imds = served.imds("imds:app")
    via_container = served.container("app")
    via_process = served.process("app")
    assert via_process["AccessKeyId"] == via_imds["AccessKeyId"]
    assert via_process["SessionToken"] == via_imds["Token"]
    for doc in (via_imds, via_container):
        assert doc["AccessKeyId"].startswith("ASIA") and len(doc["AccessKeyId"]) == 20
        assert doc["AccessKeyId"] != keys["app"].id
        assert sessions[doc["AccessKeyId"]] == keys["app"].id, "issued by STS for the app key"
        s3_works(aws, doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"])
    assert via_imds["Code"] == "Success" and via_imds["AccessKeyId"] == via_container["AccessKeyId"]
    assert via_container["AccountId"] == fa.ACCOUNT, "learned from GetCallerIdentity"


def test_boto3_over_imds_uses_the_vended_set(aws: fa.FakeAws, served: Served) -> None:
    env = imds_env(served.daemon.url("imds:app"), served.tmp)
    out = subprocess.run([sys.executable, "-c", BOTO3_SNIPPET], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["method"] == "iam-role" and got["access_key"].startswith("ASIA")
    s3_works(aws, got["access_key"], got["secret_key"], got["token"])


def test_assume_role_mode_serves_the_roles_credentials(
    aws: fa.FakeAws, keys: dict[str, fa.Key], served: Served
) -> None:
    doc = served.imds("imds:assumed")
    assert doc["AccessKeyId"].startswith("ASIA")
    who = aws.client("sts", key_id=doc["AccessKeyId"], secret=doc["SecretAccessKey"],
                     token=doc["Token"]).get_caller_identity()
    assert who["Arn"] == f"arn:aws:sts::{fa.ACCOUNT}:assumed-role/vended/e2e-assumed"
    s3_works(aws, doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"])
    # The user itself may not touch S3: only the role's credentials could have done that.
    with pytest.raises(ClientError) as denied:
        aws.client("s3", keys["assumer"]).list_buckets()
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert served.status()["assumed"]["mode"] == "AssumeRole"


def test_status_shows_the_account_record_and_key_age(
    keys: dict[str, fa.Key], served: Served
) -> None:
    rows = h.wait_for(lambda: (r := served.status())["app"].get("key_created_from") == "iam"
                      and r, what="the key's creation date from IAM")
    app, quiet = rows["app"], rows["quiet"]
    assert app["long_term_key_id"] == keys["app"].id
    assert app["key_age_days"] == 0 and app["key_status"] == "Active"
    assert app["identity_arn"] == f"arn:aws:iam::{fa.ACCOUNT}:user/app"
    assert app["root_key"] is False and app["mode"] == "GetSessionToken"
    assert app["notes"] == "nightly backups"
    assert quiet["key_created_from"] == "config" and quiet["key_age_days"] == 120
    assert quiet["key_age_warning"] is True
    ids = {row["id"] for row in rows.values()}
    assert len(ids) == 3 and None not in ids
    assert all(row["created"] and row["modified"] for row in rows.values())
    metrics = {
        s.labels["connection"]: s.value
        for family in text_string_to_metric_families(served.metrics())
        for s in family.samples if s.name == "credential_sidecar_key_age_days"
    }
    assert metrics == {"app": 0.0, "quiet": 120.0, "assumed": 0.0}
    warnings = [e for e in served.daemon.events()
                if e.get("event", "").startswith("access key is older")]
    assert [w["connection"] for w in warnings] == ["quiet"]
    assert warnings[0]["key_age_days"] == 120 and warnings[0]["key_age_warning_days"] == 90


def test_the_long_term_key_reaches_no_response_and_no_log_line(
    aws: fa.FakeAws, keys: dict[str, fa.Key], served: Served
) -> None:
    bodies = [json.dumps(served.imds("imds:app")), json.dumps(served.imds("imds:assumed")),
              json.dumps(served.container("app")), json.dumps(served.container("quiet")),
              json.dumps(served.process("assumed")), json.dumps(served.status()),
              served.metrics(), status_command(served.daemon.config_path, "--json").stdout]
    log = served.daemon.process.log.read_text()
    assert "credentials renewed" in log
    for key in keys.values():
        for text in [*bodies, log]:
            assert key.secret not in text
    # The key id is public, but no door hands it out as credentials.
    for body in bodies[:5]:
        assert keys["app"].id not in body and keys["assumer"].id not in body


def test_secret_file_readable_by_others_is_refused(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    key = aws.user("exposed", fa.APP_ACTIONS)
    conn = fa.access_key_connection("exposed", key, tmp_path / "exposed.secret", aws.url)
    (tmp_path / "exposed.secret").chmod(0o644)
    with h.daemon(tmp_path, [conn], wait_ready=False) as daemon:
        row = h.wait_for(lambda: (r := _status(daemon)["exposed"])["last_error"] and r,
                         what="the refusal")
        assert row["state"] == "failed"
        assert f"{tmp_path / 'exposed.secret'} has mode 0644" in row["last_error"]
        assert "chmod 600" in row["last_error"]
    assert key.secret not in daemon.process.log.read_text()
    assert key.id not in aws.sessions().values(), "no STS call with an exposed key"


def test_secret_from_systemd_credentials_directory(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("systemd", fa.APP_ACTIONS)
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir(mode=0o700)
    key.write(creds_dir / "unit")  # LoadCredential=unit:... puts it at $CREDENTIALS_DIRECTORY/unit
    conn = {"name": "unit", "type": "access-keys", "access_key_id": key.id,
            "endpoint": aws.url}
    env = h.clean_env(CREDENTIALS_DIRECTORY=str(creds_dir))
    with h.daemon(tmp_path, [conn], env=env) as daemon:
        doc = Served(daemon, tmp_path).imds("imds:unit")
    assert aws.sessions()[doc["AccessKeyId"]] == key.id


def test_aws_endpoint_url_from_the_environment_is_honoured(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    key = aws.user("by-env", fa.APP_ACTIONS)
    conn = fa.access_key_connection("env", key, tmp_path / "env.secret", None)
    env = h.clean_env(AWS_ENDPOINT_URL=aws.url)
    with h.daemon(tmp_path, [conn], env=env) as daemon:
        doc = Served(daemon, tmp_path).imds("imds:env")
        row = h.wait_for(lambda: (r := _status(daemon)["env"])["key_created_from"] and r,
                         what="the key facts")
    assert aws.sessions()[doc["AccessKeyId"]] == key.id
    assert row["key_created_from"] == "iam", "IAM reached through AWS_ENDPOINT_URL too"


def test_a_refused_key_fails_with_the_services_own_words(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("revoked", fa.APP_ACTIONS)
    aws.client("iam").update_access_key(UserName="revoked", AccessKeyId=key.id,
                                        Status="Inactive")
    conn = fa.access_key_connection("revoked", key, tmp_path / "revoked.secret", aws.url)
    with h.daemon(tmp_path, [conn], wait_ready=False) as daemon:
        row = h.wait_for(lambda: (r := _status(daemon)["revoked"])["last_error"] and r,
                         what="the refusal")
        code, _, body = h.http("GET", daemon.url("health") + "readyz")
    assert row["state"] == "failed"
    assert row["last_error"] == ("InvalidClientTokenId (HTTP 403): The security token included "
                                 "in the request is invalid.")
    assert code == 503 and "InvalidClientTokenId" in body.decode()
    failed = [e for e in daemon.events() if e.get("event") == "renewal failed"]
    assert failed and "retrying will not fix it" in failed[0]["hint"]


def _status(daemon: h.Daemon) -> dict[str, dict[str, Any]]:
    code, _, body = h.http("GET", daemon.url("health") + "status")
    assert code == 200
    return {row["name"]: row for row in json.loads(body)["connections"]}



def status_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*h.CLI, "status", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=h.clean_env())


def test_status_name_shows_the_whole_account_record(served: Served) -> None:
    served.imds("imds:app")
    served.container("app")
    row = served.status()["app"]
    done = status_command(served.daemon.config_path, "app")
    assert done.returncode == 0, done.stderr
    record = {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
              for line in done.stdout.splitlines() if not line.startswith(" ")}
    assert record["id"] == row["id"] and record["notes"] == "nightly backups"
    assert record["created"] == row["created"] and record["modified"] == row["modified"]
    assert record["access key"] == row["long_term_key_id"]
    assert record["key age (days)"] == "0" and record["mode"] == "GetSessionToken"
    doors = [e["door"] for e in row["used_by"]]
    assert {"imds:app", "container"} <= set(doors)
    me = f"uid:{os.geteuid()}"  # the TCP doors record the peer's uid too
    assert f"container ({me}) x" in done.stdout and f"imds:app ({me}) x" in done.stdout
    assert ", last 20" in done.stdout
    quiet = status_command(served.daemon.config_path, "quiet")
    assert "key age (days):        120  (older than the warning age: rotate it)" in quiet.stdout
    as_json = status_command(served.daemon.config_path, "--json", "app")
    assert json.loads(as_json.stdout)["id"] == row["id"]
    missing = status_command(served.daemon.config_path, "nope")
    assert missing.returncode == 2 and "no connection named 'nope'" in missing.stderr


def test_account_records_survive_restarts_and_track_each_connections_changes(
    aws: fa.FakeAws, tmp_path: Path
) -> None:
    keys = {n: aws.user(f"record-{n}", fa.APP_ACTIONS) for n in ("one", "two")}
    conns = [fa.access_key_connection(n, k, tmp_path / f"{n}.secret", aws.url, notes="v1")
             for n, k in keys.items()]
    clock = tmp_path / "clock"
    clock.write_text("0")
    env = h.clean_env(CREDENTIAL_SIDECAR_TEST_CLOCK_FILE=str(clock))
    with h.daemon(tmp_path, conns, env=env) as daemon:
        first = _status(daemon)
    with h.daemon(tmp_path, conns, log_name="restart.log", env=env) as daemon:
        restarted = _status(daemon)
        assert all(restarted[n][f] == first[n][f] for n in keys
                   for f in ("id", "created", "modified"))
        changed = [dict(conns[0]), {**conns[1], "notes": "v2"}]
        daemon.config_path.write_text(h.to_toml(h.daemon_config(tmp_path, changed)))
        # The change happens two minutes later (the file replaced atomically, and the daemon
        # seen to have read it: the set it holds has two minutes less left).
        left = restarted["two"]["seconds_left"]
        (tmp_path / "clock.tmp").write_text("120")
        (tmp_path / "clock.tmp").replace(clock)
        h.wait_for(lambda: _status(daemon)["two"]["seconds_left"] <= left - 100,
                   what="the daemon to see the clock move")
        daemon.process.proc.send_signal(signal.SIGHUP)
        rows = h.wait_for(lambda: (r := _status(daemon))["two"]["notes"] == "v2" and r,
                          what="the reload")
    assert rows["one"] == {**rows["one"], "id": first["one"]["id"],
                           "modified": first["one"]["modified"]}
    assert rows["two"]["id"] == first["two"]["id"]
    assert rows["two"]["created"] == first["two"]["created"]
    moved = (datetime.fromisoformat(rows["two"]["modified"])
             - datetime.fromisoformat(first["two"]["modified"]))
    assert moved >= timedelta(seconds=120)
    on_disk = json.loads((tmp_path / "state" / "connections.json").read_text())
    assert on_disk["connections"]["two"]["id"] == first["two"]["id"]
    assert (tmp_path / "state" / "connections.json").stat().st_mode & 0o777 == 0o600
    for key in keys.values():
        assert key.secret not in json.dumps(on_disk)


def test_a_root_key_is_served_with_a_warning(aws: fa.FakeAws, tmp_path: Path) -> None:
    key = aws.user("daemon-root", fa.APP_ACTIONS)
    aws.switches(root_keys=[key.id])
    try:
        conn = fa.access_key_connection("root", key, tmp_path / "root.secret", aws.url)
        with h.daemon(tmp_path, [conn]) as daemon:
            row = h.wait_for(lambda: (r := _status(daemon)["root"])["identity_arn"] and r,
                             what="the key's owner")
            Served(daemon, tmp_path).imds("imds:root")
    finally:
        aws.switches(root_keys=[])
    assert row["root_key"] is True and row["state"] == "ready"
    assert any(e.get("event", "").startswith("this connection uses the AWS account root")
               for e in daemon.events())

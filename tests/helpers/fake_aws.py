"""A moto server process (see moto_aws.py) and the IAM users, keys and files tests need."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from credential_sidecar.upstream import secret_file
from tests.helpers import harness as h

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*",
                                                      "Resource": "*"}]}
# What an access-key connection needs: session credentials, and to read its own key's age.
APP_ACTIONS = ["sts:GetSessionToken", "sts:GetCallerIdentity", "iam:ListAccessKeys"]
ROTATE_ACTIONS = [*APP_ACTIONS, "iam:CreateAccessKey", "iam:UpdateAccessKey",
                  "iam:DeleteAccessKey"]


@dataclass
class Key:
    id: str
    secret: str
    user: str

    def write(self, path: Path) -> Path:
        """The secret in a 0600 file, as an operator (or import-keys) would leave it."""
        secret_file.write_secret(path, self.secret, replace=True)
        return path


@dataclass
class FakeAws:
    process: h.Process
    url: str
    admin: Key

    def client(self, service: str, key: Key | None = None, token: str | None = None,
               secret: str | None = None, key_id: str | None = None) -> Any:
        key = key or self.admin
        return boto3.client(
            service, region_name=REGION, endpoint_url=self.url,
            aws_access_key_id=key_id or key.id, aws_secret_access_key=secret or key.secret,
            aws_session_token=token,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=10),
        )

    def auth(self, enabled: bool) -> None:
        """moto's IAM checks: every request after this is verified and authorised (or none)."""
        status, _, body = h.http("POST", self.url + "/moto-api/reset-auth",
                                 {"Content-Type": "text/plain"}, b"0" if enabled else b"inf")
        assert status == 200, body

    def switches(self, **values: Any) -> None:
        status, _, body = h.http("POST", self.url + "/_moto_aws/config",
                                 {"Content-Type": "application/json"}, json.dumps(values).encode())
        assert status == 200, body

    def sessions(self) -> dict[str, str]:
        """Session key id -> the long-term key that asked for it."""
        status, _, body = h.http("GET", self.url + "/_moto_aws/stats")
        assert status == 200, body
        return {s["access_key_id"]: s["parent"] for s in json.loads(body)["sessions"]}

    def user(self, name: str, actions: list[str], *, deny: list[str] | None = None) -> Key:
        """An IAM user allowed exactly these actions, and one access key of it."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        statements: list[dict[str, Any]] = [
            {"Effect": "Allow", "Action": actions, "Resource": "*"}]
        if deny:
            statements.append({"Effect": "Deny", "Action": deny, "Resource": "*"})
        iam.put_user_policy(UserName=name, PolicyName="test", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": statements}))
        return self.new_key(name)

    def new_key(self, user: str) -> Key:
        made = self.client("iam").create_access_key(UserName=user)["AccessKey"]
        return Key(made["AccessKeyId"], made["SecretAccessKey"], user)

    def key_states(self, user: str) -> dict[str, str]:
        listed = self.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in listed}

    def role(self, name: str, trusted_user: str, actions: list[str]) -> str:
        """A role the user may assume, allowed these actions; returns its ARN."""
        iam = self.client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{trusted_user}"}}]}
        arn: str = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"]["Arn"]
        iam.put_role_policy(RoleName=name, PolicyName="test", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        return arn


def access_key_connection(name: str, key: Key, secret_file: Path, endpoint: str | None,
                          **extra: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "name": name, "type": "access-keys", "access_key_id": key.id,
        "secret_access_key_file": str(key.write(secret_file)), "region": REGION,
        "duration_seconds": 3600,
    }
    if endpoint:
        conn["endpoint"] = endpoint
    conn.update(extra)
    return conn


@contextmanager
def moto_server(tmp: Path) -> Iterator[FakeAws]:
    """A real moto process on loopback, IAM checks off, with an all-powerful admin user."""
    tmp.mkdir(parents=True, exist_ok=True)
    port_file = tmp / "moto.port"
    log = tmp / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.moto_aws", "--port-file",
                                 str(port_file)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(ROOT), env=h.clean_env())
    process = h.Process(proc, log)
    try:
        def port() -> str | None:
            if proc.poll() is not None:
                raise AssertionError("moto exited early:\n" + "\n".join(process.lines()[-30:]))
            return port_file.read_text().strip() if port_file.exists() else None

        url = f"http://127.0.0.1:{h.wait_for(port, what='the moto server port file')}"
        bootstrap = Key("AKIAIOSFODNN7EXAMPLE", "x" * 40, "bootstrap")
        aws = FakeAws(process, url, bootstrap)
        iam = aws.client("iam")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all",
                            PolicyDocument=json.dumps(ALLOW_ALL))
        aws.admin = aws.new_key("admin")
        yield aws
    finally:
        process.stop()

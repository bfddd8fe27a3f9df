"""Every client as it is used in the wild, through every door it knows.

One emulator, one daemon (IMDS, container and control socket) and one moto S3 for the module.
Each client resolves credentials the way an app would; each answer is compared with what the
emulator issued (secret and session token too, wherever the client lets us see them; where it
only signs requests, the key id and session token on the wire).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.helpers import harness as h
from tests.helpers.sdk import BOTO3_SNIPPET, imds_env, issued_by

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
BUCKET = "matrix-bucket"
CLI_V1 = Path(sys.executable).with_name("aws")
CLI_V2 = "/usr/bin/aws"
SIDECAR = Path(sys.executable).with_name("credential-sidecar")

AIOBOTOCORE_SNIPPET = """
import asyncio, json
from aiobotocore.session import get_session

async def main():
    creds = await get_session().get_credentials()
    frozen = await creds.get_frozen_credentials()
    print(json.dumps({"method": creds.method, "access_key": frozen.access_key,
                      "secret_key": frozen.secret_key, "token": frozen.token}))

asyncio.run(main())
"""


@dataclass
class Stack:
    daemon: h.Daemon
    emulator: h.Emulator
    tmp: Path
    socket: Path
    token_file: Path
    moto: str

    @property
    def token(self) -> str:
        return self.token_file.read_text()

    def check(self, access_key: str, secret: str | None, token: str) -> None:
        """The client holds exactly a set the emulator issued (secret too, when shown)."""
        issued = issued_by(self.emulator, access_key)
        if secret is not None:
            assert secret == issued["secretAccessKey"]
        assert token == issued["sessionToken"]

    def base_env(self, **extra: str) -> dict[str, str]:
        env = h.clean_env(
            AWS_CONFIG_FILE=str(self.tmp / "no-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.tmp / "no-credentials"),
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",  # container and process tests must not fall back
            HOME=str(self.tmp),
        )
        env.update(extra)
        return env

    def container_env(self, token: str = "env") -> dict[str, str]:
        env = self.base_env(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=self.daemon.url("container") + "v1/credentials/app"
        )
        if token == "env":
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = self.token
        else:
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(self.token_file)
        return env

    def imds_env(self) -> dict[str, str]:
        return imds_env(self.daemon.url("imds:app"), self.tmp)

    def process_env(self) -> dict[str, str]:
        config = self.tmp / "aws-config"
        config.write_text(
            "[profile sidecar]\n"
            f"credential_process = {SIDECAR} credential-process app --socket {self.socket}\n"
            "region = us-east-1\n"
        )
        return self.base_env(AWS_CONFIG_FILE=str(config), AWS_PROFILE="sidecar")


def _moto_up(url: str) -> bool:
    try:
        return h.http("GET", url + "/moto-api/")[0] == 200
    except OSError:
        return False


@contextmanager
def moto_server(tmp: Path) -> Iterator[str]:
    """moto in server mode (S3 here) on a free loopback port; it accepts any keys."""
    port = h.free_port()
    log = (tmp / "moto.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=h.clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        h.wait_for(lambda: proc.poll() is None and _moto_up(url), what="moto_server")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("matrix")
    material = h.make_pki(tmp / "pki")
    sock_dir = Path(tempfile.mkdtemp(prefix="cs-matrix-"))  # a socket path fits in 108 bytes
    socket = sock_dir / "control.sock"
    extra = {"container": {"listen": "127.0.0.1:0"}, "control": {"socket": str(socket)}}
    try:
        with moto_server(tmp) as moto, h.emulator(tmp, [material.ca_file]) as emu, \
                h.daemon(tmp, [h.connection("app", material, emu.url)], extra=extra) as daemon:
            s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1",
                              aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                              aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
            s3.create_bucket(Bucket=BUCKET)
            yield Stack(daemon, emu, tmp, socket, tmp / "state" / "tokens" / "app.token", moto)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def run(args: list[str], env: dict[str, str],
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, f"{args[0]} failed ({out.returncode}):\n{out.stderr[-3000:]}"
    return out


def on_the_wire(text: str) -> tuple[str, str]:
    """The key id and session token a client signed with, from its own debug output."""
    key = re.search(r"Credential=(A[A-Z0-9]{19})/", text)
    token = re.search(r"X-Amz-Security-Token'?:\s*b?'?([A-Za-z0-9+/=_-]{20,})", text)
    assert key and token, "no signed request in the client's debug output"
    return key.group(1), token.group(1)


# --- Python: botocore/boto3 and aiobotocore ----------------------------------------------------


@pytest.mark.parametrize("token", ["env", "file"])
def test_boto3_container_provider(stack: Stack, token: str) -> None:
    got = json.loads(run([sys.executable, "-c", BOTO3_SNIPPET], stack.container_env(token)).stdout)
    assert got["method"] == "container-role"
    stack.check(got["access_key"], got["secret_key"], got["token"])


def test_boto3_credential_process(stack: Stack) -> None:
    got = json.loads(run([sys.executable, "-c", BOTO3_SNIPPET], stack.process_env()).stdout)
    assert got["method"] == "custom-process"
    stack.check(got["access_key"], got["secret_key"], got["token"])


@pytest.mark.parametrize("door", ["imds", "container"])
def test_aiobotocore(stack: Stack, door: str) -> None:
    env = stack.imds_env() if door == "imds" else stack.container_env("file")
    got = json.loads(run([sys.executable, "-c", AIOBOTOCORE_SNIPPET], env).stdout)
    assert got["method"] == ("iam-role" if door == "imds" else "container-role")
    stack.check(got["access_key"], got["secret_key"], got["token"])


# --- AWS CLI v1 (PyPI) and v2 (Debian) -----------------------------------------------------------


@pytest.mark.parametrize("source", ["container-env", "container-file", "process"])
def test_aws_cli_v1_signs_a_real_call_with_the_issued_set(stack: Stack, source: str) -> None:
    assert CLI_V1.exists(), "the awscli package from PyPI is a test dependency"
    env = stack.process_env() if source == "process" else stack.container_env(source[10:])
    listed = run([str(CLI_V1), "configure", "list"], env).stdout
    kind = "custom-process" if source == "process" else "container-role"
    assert kind in next(line for line in listed.splitlines() if "access_key" in line)
    out = run([str(CLI_V1), "s3api", "list-buckets", "--endpoint-url", stack.moto, "--debug"], env)
    assert BUCKET in {b["Name"] for b in json.loads(out.stdout)["Buckets"]}
    key, token = on_the_wire(out.stderr)
    stack.check(key, None, token)


@pytest.mark.parametrize("source", ["container-env", "process"])
def test_debian_aws_cli_v2_exports_the_issued_set(stack: Stack, source: str) -> None:
    # Debian's CLI v2 (2.9) predates AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: the env token only.
    if shutil.which(CLI_V2) is None:
        pytest.fail(f"{CLI_V2} is missing: .ci/run installs Debian's awscli")
    env = stack.process_env() if source == "process" else stack.container_env("env")
    out = run([CLI_V2, "configure", "export-credentials", "--format", "process"], env, 120)
    got = json.loads(out.stdout)
    assert got["Version"] == 1
    stack.check(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])


# --- JavaScript SDK v3 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "door", "token"),
    [
        ("instance", "imds", None),  # fromInstanceMetadata
        ("container", "container", "env"),  # fromContainerMetadata
        ("http", "container", "file"),  # fromHttp: the token file
        ("chain", "container", "file"),  # the default chain, as most apps use it
    ],
)
def test_js_sdk_v3(stack: Stack, provider: str, door: str, token: str | None) -> None:
    if not (JS_DIR / "node_modules" / "@aws-sdk" / "credential-providers").is_dir():
        pytest.fail(f"run `npm ci` in {JS_DIR} (.ci/run does)")
    env = stack.imds_env() if door == "imds" else stack.container_env(token or "env")
    out = run(["node", str(JS_DIR / "resolve.mjs"), provider], env | {"NODE_NO_WARNINGS": "1"})
    got = json.loads(out.stdout)
    stack.check(got["accessKeyId"], got["secretAccessKey"], got["sessionToken"])
    assert got["expiration"], "the SDK read the expiry (it schedules its refresh on it)"


# --- rclone (Go SDK v1) --------------------------------------------------------------------------


@pytest.mark.parametrize("door", ["container", "imds"])
def test_rclone_env_auth_lists_and_copies(stack: Stack, door: str) -> None:
    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is missing: .ci/run installs Debian's rclone")
    config = stack.tmp / f"rclone-{door}.conf"
    config.write_text(
        "[moto]\ntype = s3\nprovider = AWS\nenv_auth = true\nregion = us-east-1\n"
        f"endpoint = {stack.moto}\n"
    )
    env = stack.imds_env() if door == "imds" else stack.container_env("env")
    env.pop("AWS_CA_BUNDLE", None)  # rclone refuses a CA bundle with its own HTTP transport
    env.pop("AWS_EC2_METADATA_DISABLED", None)
    env["RCLONE_CONFIG"] = str(config)
    # With provider = AWS rclone addresses a bucket as a virtual host (matrix-bucket.127.0.0.1),
    # which no resolver maps to loopback. moto's server understands such requests, so rclone
    # reaches it as its HTTP proxy; the credential doors sit on loopback IPs, never proxied.
    for key in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        env.pop(key, None)
    env["HTTP_PROXY"] = env["http_proxy"] = stack.moto
    fail_fast = ["--retries", "1", "--low-level-retries", "1"]
    listed = run([rclone, "lsd", "moto:", "--dump", "headers,auth", *fail_fast], env, 20)
    assert BUCKET in listed.stdout
    key, token = on_the_wire(listed.stderr)
    stack.check(key, None, token)
    source = stack.tmp / f"hello-{door}.txt"
    source.write_text(f"hello through {door}\n")
    run([rclone, "copy", str(source), f"moto:{BUCKET}/", *fail_fast], env, 20)
    files = run([rclone, "lsf", f"moto:{BUCKET}/", *fail_fast], env, 20).stdout.split()
    assert source.name in files
    s3 = boto3.client("s3", endpoint_url=stack.moto, region_name="us-east-1",
                      aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                      aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    body = s3.get_object(Bucket=BUCKET, Key=source.name)["Body"].read()
    assert body == source.read_bytes()

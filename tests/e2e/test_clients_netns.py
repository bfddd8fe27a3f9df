"""s3cmd, restic and the Go SDKs' defaults against the daemon at the real IMDS addresses.

s3cmd and minio-go (restic) hard-code http://169.254.169.254 and take no override, so the module
runs the emulator, the daemon (IMDS on 169.254.169.254:80 and [fd00:ec2::254]:80), moto and the
verifying proxy inside a network namespace of its own, whose only interface is its loopback.
Needs root (`ip netns`), as CI has.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import go_clients, procs
from tests.helpers.client_stack import ClientStack, netns_stack
from tests.helpers.netns import reap_stale

S3CMD_BUCKET = "s3cmd-bucket"
# The first test may have to build the Go programs (tests/setup/clients.sh prebuilds them).
pytestmark = pytest.mark.timeout(600)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: tests/setup/clients.sh installs {package}")
    return path


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    if shutil.which("go") is None:
        pytest.fail("go is missing: tests/setup/clients.sh installs golang-go and the SDKs")
    for name in go_clients.PROGRAMS:
        go_clients.build(name)
    if shutil.which("ip") is None:
        pytest.fail("ip is missing: tests/setup/clients.sh installs iproute2")
    reap_stale()  # namespaces a killed earlier run of ours left behind
    with netns_stack(tmp_path_factory.mktemp("clients-netns")) as made:
        yield made


@pytest.fixture
def stack(module_stack: ClientStack) -> ClientStack:
    module_stack.sync()
    return module_stack


def s3cmd(stack: ClientStack, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """s3cmd with a config that names no keys: it then asks IMDS."""
    assert stack.netns is not None
    host = stack.proxy.url.removeprefix("http://")
    config = home / "s3cfg"
    config.write_text("[default]\naccess_key = \nsecret_key = \naccess_token = \n"
                      f"host_base = {host}\nhost_bucket = {host}\nuse_https = False\n"
                      "signature_v2 = False\nbucket_location = us-east-1\n")
    return stack.netns.run([need("s3cmd", "s3cmd"), "-c", str(config), *args],
                           env=procs.clean_env(home))


def restic(stack: ClientStack, home: Path, repo: str, *args: str,
           **env: str) -> subprocess.CompletedProcess[str]:
    assert stack.netns is not None
    full_env = procs.clean_env(home, RESTIC_PASSWORD="correct horse",
                               XDG_CACHE_HOME=str(home / "cache"), **env)
    return stack.netns.run([need("restic", "restic"), "-r", f"s3:{stack.proxy.url}/{repo}",
                            *args], env=full_env, timeout=180)


def test_s3cmd_signs_with_the_imds_set(stack: ClientStack, tmp_path: Path) -> None:
    stack.moto.create_bucket(S3CMD_BUCKET)
    source = tmp_path / "hello.txt"
    source.write_text("hello from s3cmd\n")
    for args in (["ls"], ["put", str(source), f"s3://{S3CMD_BUCKET}/hello.txt"],
                 ["ls", f"s3://{S3CMD_BUCKET}"]):
        out = s3cmd(stack, tmp_path, *args)
        assert out.returncode == 0, out.stderr
    assert "hello.txt" in out.stdout
    assert stack.moto.get(S3CMD_BUCKET, "hello.txt") == source.read_bytes()
    app = stack.served()[0]
    stack.proxy.assert_all_signed(app.access_key_id, minimum=3)


def test_restic_signs_with_the_imds_set(stack: ClientStack, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file.txt").write_text("restic payload\n")
    for args in (["init"], ["backup", str(tmp_path / "data")], ["snapshots", "--json"]):
        out = restic(stack, tmp_path, "restic-imds", *args)
        assert out.returncode == 0, out.stderr
    assert str(tmp_path / "data") in out.stdout
    app = stack.served()[0]
    verdicts = stack.proxy.assert_all_signed(app.access_key_id, minimum=10)
    # minio-go uploads over plain HTTP as aws-chunked streams: every chunk signature verified.
    assert any(v["chunks"] > 0 for v in verdicts)


def test_restic_container_door_with_the_env_token(stack: ClientStack, tmp_path: Path) -> None:
    out = restic(stack, tmp_path, "restic-container", "init",
                 AWS_CONTAINER_CREDENTIALS_FULL_URI=stack.container_url(),
                 AWS_CONTAINER_AUTHORIZATION_TOKEN=stack.container_token)
    assert out.returncode == 0, out.stderr
    stack.proxy.assert_all_signed(stack.served()[0].access_key_id, minimum=3)


def test_restic_with_only_a_token_file_goes_anonymous(stack: ClientStack,
                                                      tmp_path: Path) -> None:
    """minio-go 7.0.46 reads only AWS_CONTAINER_AUTHORIZATION_TOKEN; when the door refuses it,
    its chain falls back to unsigned requests without a word. Only S3 (here the proxy) says no."""
    out = restic(stack, tmp_path, "restic-token-file", "init",
                 AWS_CONTAINER_CREDENTIALS_FULL_URI=stack.container_url(),
                 AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(stack.token_file))
    assert out.returncode == 1
    assert "client.BucketExists: Access Denied." in out.stderr
    verdicts = stack.proxy.verdicts()
    assert verdicts and all(v["reason"].startswith("unsigned") for v in verdicts)


@pytest.mark.parametrize("program", go_clients.PROGRAMS)
@pytest.mark.parametrize("mode", ["IPv4", "IPv6"])
def test_go_sdks_at_their_default_imds_endpoints(stack: ClientStack, tmp_path: Path,
                                                 program: str, mode: str) -> None:
    """No endpoint configured: http://169.254.169.254, or http://[fd00:ec2::254] in IPv6 mode
    (served here by a second connection, "app6")."""
    assert stack.netns is not None
    bucket = f"netns-{program}-{mode.lower()}"
    stack.moto.create_bucket(bucket)
    env = stack.base_env(tmp_path)
    if mode == "IPv6":
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"] = "IPv6"
    run = go_clients.run(program, ["-provider", "chain", "-s3-endpoint", stack.proxy.url,
                                   "-bucket", bucket], env, wrap=stack.netns.wrap([]))
    assert run.ok, run.result
    app, app6 = stack.served()
    expected = app6 if mode == "IPv6" else app
    assert run.result["access_key_id"] == expected.access_key_id
    stack.check(run.result["access_key_id"], run.result["secret_access_key"],
                run.result["session_token"])
    stack.proxy.assert_all_signed(expected.access_key_id, minimum=3)


@pytest.mark.parametrize("program", [*go_clients.PROGRAMS, "restic"])
def test_container_uri_must_be_loopback_for_these_clients(stack: ClientStack, tmp_path: Path,
                                                          program: str) -> None:
    """Go SDK v1/v2 and minio-go of these versions refuse a non-loopback FULL_URI host (the
    daemon's 169.254.170.2 / .23 aliases are for newer SDKs); refused before any connection."""
    assert stack.netns is not None
    uri = "http://169.254.170.23/v1/credentials/app"
    if program == "restic":
        out = restic(stack, tmp_path, "restic-non-loopback", "init",
                     AWS_CONTAINER_CREDENTIALS_FULL_URI=uri,
                     AWS_CONTAINER_AUTHORIZATION_TOKEN=stack.container_token)
        assert out.returncode == 1  # anonymous again
        assert "client.BucketExists: Access Denied." in out.stderr
        assert all(v["reason"].startswith("unsigned") for v in stack.proxy.verdicts())
        return
    env = stack.base_env(tmp_path, AWS_EC2_METADATA_DISABLED="true",
                         AWS_CONTAINER_CREDENTIALS_FULL_URI=uri,
                         AWS_CONTAINER_AUTHORIZATION_TOKEN=stack.container_token)
    run = go_clients.run(program, ["-provider", "chain"], env, wrap=stack.netns.wrap([]))
    assert not run.ok
    assert 'invalid endpoint host, "169.254.170.23", only loopback hosts are allowed' in \
        run.result["error"]

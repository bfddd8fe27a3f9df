"""Debian's Go SDKs (aws-sdk-go 1.44.133, aws-sdk-go-v2 1.17.x) through every door of the daemon.

Each client program (tests/go) resolves credentials the way it is configured to, prints what it
got, then lists buckets, puts and reads back an object through the verifying proxy in front of
moto: every S3 request must verify with the set the daemon served, and that set must be one the
emulator issued.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import go_clients
from tests.helpers.client_stack import ClientStack, loopback_stack

BUCKET = "go-clients"
SOURCE = {"imds": "EC2RoleProvider", "container": "CredentialsEndpointProvider",
          "process": "ProcessProvider"}
# The first test may have to build the Go programs (tests/setup/clients.sh prebuilds them).
pytestmark = pytest.mark.timeout(600)
SOURCES = ["imds", "chain-imds", "container-env", "container-file", "chain-container-env",
           "process", "chain-process"]


@pytest.fixture(scope="module")
def go_binaries() -> dict[str, go_clients.Built]:
    if shutil.which("go") is None:
        pytest.fail("go is missing: tests/setup/clients.sh installs golang-go and the SDKs")
    return {name: go_clients.build(name) for name in go_clients.PROGRAMS}


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientStack]:
    with loopback_stack(tmp_path_factory.mktemp("go-clients")) as made:
        made.moto.create_bucket(BUCKET)
        yield made


@pytest.fixture
def stack(module_stack: ClientStack) -> ClientStack:
    module_stack.sync()  # the proxy accepts what the daemon serves now; fresh verdict log
    return module_stack


def env_for(stack: ClientStack, home: Path, source: str) -> dict[str, str]:
    if source in ("imds", "chain-imds"):
        return stack.imds_env(home)
    if source == "chain-process":
        return stack.process_env(home)
    if source == "process":
        return stack.base_env(home, AWS_EC2_METADATA_DISABLED="true")
    return stack.container_env(home, source.rsplit("-", 1)[1])


def _parse(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("program", go_clients.PROGRAMS)
@pytest.mark.parametrize("source", SOURCES)
def test_go_sdk_gets_the_issued_set_and_signs_s3_with_it(
    go_binaries: dict[str, go_clients.Built], stack: ClientStack, tmp_path: Path,
    program: str, source: str,
) -> None:
    provider = "chain" if source.startswith("chain") else source.split("-")[0]
    key = f"{program}-{source}.txt"
    args = ["-provider", provider, "-s3-endpoint", stack.proxy.url, "-bucket", BUCKET,
            "-key", key]
    if provider == "process":
        args += ["-command", stack.process_command()]
    run = go_clients.run(program, args, env_for(stack, tmp_path, source))
    assert run.ok, f"{run.result}\n{run.stderr[-2000:]}"
    got = run.result
    stack.check(got["access_key_id"], got["secret_access_key"], got["session_token"])
    assert got["source"] == SOURCE[source.removeprefix("chain-").split("-")[0]]
    if source == "container-file":
        # Neither SDK reads AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: the program does.
        assert got["token_from"] == "file (read by the program)"
    if got["can_expire"]:
        expires = _parse(got["expires"])
        assert datetime.now(UTC) < expires <= datetime.now(UTC) + timedelta(hours=1, minutes=1)
    else:  # v1's default chain (a ChainProvider) cannot tell its expiry
        assert program == "v1creds" and "does not support ExpiresAt" in got["expires_error"]
    assert BUCKET in got["s3"]["buckets"]
    assert key in stack.moto.keys(BUCKET)
    verdicts = stack.proxy.assert_all_signed(got["access_key_id"], minimum=3)
    assert {v["method"] for v in verdicts} >= {"GET", "PUT"}


@pytest.mark.parametrize("program", go_clients.PROGRAMS)
def test_imds_region_and_identity_document(go_binaries: dict[str, go_clients.Built],
                                           stack: ClientStack, tmp_path: Path,
                                           program: str) -> None:
    """Both SDKs take the region from the identity document, not from placement/region."""
    run = go_clients.run(program, ["-provider", "imds", "-imds-extras"],
                         stack.imds_env(tmp_path))
    assert run.ok, run.result
    assert run.result["region"] == "us-east-1"
    assert run.result["identity_document"]["region"] == "us-east-1"


@pytest.mark.parametrize("program", go_clients.PROGRAMS)
def test_the_sdk_chain_ignores_the_token_file(go_binaries: dict[str, go_clients.Built],
                                              stack: ClientStack, tmp_path: Path,
                                              program: str) -> None:
    """A token file alone: the SDK sends no Authorization and the door refuses it."""
    run = go_clients.run(program, ["-provider", "chain"], stack.container_env(tmp_path, "file"))
    assert not run.ok
    expected = ("failed to refresh cached credentials, failed to load credentials"
                if program == "v2creds" else "CredentialsEndpointError: failed to load credentials")
    assert expected in run.result["error"]

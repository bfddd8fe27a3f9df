"""Real SDKs resolve credentials through the daemon's IMDS door and get the issued keys."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import harness as h
from tests.helpers.sdk import BOTO3_SNIPPET, imds_env, issued_by


@pytest.fixture(scope="module", params=["p256", "rsa"])
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[h.Daemon, h.Emulator, Path]]:
    tmp = tmp_path_factory.mktemp(f"sdk-{request.param}")
    # A chain with an intermediate CA: only the root is configured in the emulator.
    material = h.make_pki(tmp / "pki", request.param, with_intermediate=True)
    with h.emulator(tmp, [material.ca_file]) as emu, \
            h.daemon(tmp, [h.connection("app", material, emu.url)]) as daemon:
        yield daemon, emu, tmp


def test_boto3_gets_exactly_the_issued_keys(stack: tuple[h.Daemon, h.Emulator, Path]) -> None:
    daemon, emu, tmp = stack
    out = subprocess.run([sys.executable, "-c", BOTO3_SNIPPET], capture_output=True, text=True,
                         env=imds_env(daemon.url("imds:app"), tmp), timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["method"] == "iam-role"
    issued = issued_by(emu, got["access_key"])
    assert got["secret_key"] == issued["secretAccessKey"]
    assert got["token"] == issued["sessionToken"]


@pytest.mark.parametrize("aws", ["/usr/bin/aws"])
def test_debian_aws_cli_v2_exports_the_issued_keys(
    stack: tuple[h.Daemon, h.Emulator, Path], aws: str
) -> None:
    if shutil.which(aws) is None:
        pytest.fail(f"{aws} is missing: .ci/run installs Debian's awscli")
    daemon, emu, tmp = stack
    out = subprocess.run([aws, "configure", "export-credentials", "--format", "process"],
                         capture_output=True, text=True, timeout=120, check=True,
                         env=imds_env(daemon.url("imds:app"), tmp))
    got = json.loads(out.stdout)
    assert got["Version"] == 1
    issued = issued_by(emu, got["AccessKeyId"])
    assert got["SecretAccessKey"] == issued["secretAccessKey"]
    assert got["SessionToken"] == issued["sessionToken"]


def test_pypi_aws_cli_v1_resolves_an_iam_role(stack: tuple[h.Daemon, h.Emulator, Path]) -> None:
    daemon, emu, tmp = stack
    aws = Path(sys.executable).with_name("aws")
    assert aws.exists(), "the awscli package from PyPI is a test dependency"
    out = subprocess.run([str(aws), "configure", "list"], capture_output=True, text=True,
                         timeout=120, check=True, env=imds_env(daemon.url("imds:app"), tmp))
    access_line = next(line for line in out.stdout.splitlines() if "access_key" in line)
    assert "iam-role" in access_line
    last4 = access_line.split()[1][-4:]
    assert any(c["accessKeyId"].endswith(last4) for c in emu.stats()["issued"])

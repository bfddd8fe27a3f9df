"""What several client tests share: a boto3 snippet and the environment that points SDKs at IMDS."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import harness as h

BOTO3_SNIPPET = """
import json, boto3
session = boto3.Session()
creds = session.get_credentials()
frozen = creds.get_frozen_credentials()
print(json.dumps({"method": creds.method, "access_key": frozen.access_key,
                  "secret_key": frozen.secret_key, "token": frozen.token}))
"""


def imds_env(base: str, tmp: Path) -> dict[str, str]:
    return h.clean_env(
        AWS_EC2_METADATA_SERVICE_ENDPOINT=base,
        AWS_EC2_METADATA_V1_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-credentials"),
        AWS_DEFAULT_REGION="us-east-1",
        HOME=str(tmp),
    )


def issued_by(emu: h.Emulator, access_key: str) -> dict[str, str]:
    issued = {c["accessKeyId"]: c for c in emu.stats()["issued"]}
    assert access_key in issued, "the client got keys the emulator never issued"
    return issued[access_key]

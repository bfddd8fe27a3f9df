"""A whole renewal and request cycle; no secret may appear in any log line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon import pki
from tests.e2e import harness as h
from tests.e2e.test_sdk_clients import BOTO3_SNIPPET, imds_env

CANARY_PASSPHRASE = "canary-passphrase-5f1d2c9e7b"


def test_no_secret_reaches_the_logs(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    # An encrypted key whose passphrase is our canary.
    pki.write_private(material.key, material.leaf.key_pem(CANARY_PASSPHRASE.encode()))
    passphrase = pki.write_private(tmp_path / "pki" / "pass", CANARY_PASSPHRASE.encode() + b"\n")
    key_pem = material.leaf.key_pem().decode()
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        # Fail once first, so the failure path logs too.
        emu.faults(fail_status=500, fail_count=1)
        conn = h.connection("app", material, emu.url, private_key_passphrase_file=str(passphrase))
        with h.daemon(tmp_path, [conn], log_level="debug") as daemon:
            out = subprocess.run([sys.executable, "-c", BOTO3_SNIPPET], capture_output=True,
                                 text=True, env=imds_env(daemon.url("imds:app"), tmp_path),
                                 timeout=60, check=True)
            served = json.loads(out.stdout)
            status, _, body = h.http("GET", daemon.url("health") + "status")
            assert status == 200
        log = daemon.process.log.read_text()
        issued = emu.stats()["issued"]
    assert issued and served["access_key"] in {c["accessKeyId"] for c in issued}
    assert "renewal failed" in log and "credentials renewed" in log
    secrets = [CANARY_PASSPHRASE, served["secret_key"], served["token"]]
    for cred in issued:
        secrets += [cred["secretAccessKey"], cred["sessionToken"]]
    body_text = body.decode()
    for secret in secrets:
        assert secret not in log
        assert secret not in body_text
    for line in key_pem.splitlines()[1:-1]:
        assert line not in log

"""`credential-sidecar demo --key-store softhsm`: the demo's key made on a throwaway SoftHSM2
token, credentials served through the IMDS endpoint it prints, the token gone on exit."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from credential_sidecar.devtools import softhsm
from tests.helpers import harness as h


@pytest.mark.skipif(softhsm.missing() is not None, reason=str(softhsm.missing()))
def test_demo_with_the_key_on_a_softhsm_token(tmp_path: Path) -> None:
    process = h.start(["demo", "--key-store", "softhsm"], tmp_path / "demo.log")
    try:
        line = h.wait_for(
            lambda: next((x for x in process.lines()
                          if x.startswith("export AWS_EC2_METADATA_SERVICE_ENDPOINT=")), None),
            timeout=90, what="the demo's export line")
        _, creds = h.imds_read(line.split("=", 1)[1])
        assert creds["Code"] == "Success" and str(creds["AccessKeyId"]).startswith("ASIA")
        log = "\n".join(process.lines())
        assert "demo key generated on a pkcs11 token" in log
        assert "token_label=credential-sidecar-demo" in log
        assert "pkcs11 session opened" in log  # the daemon signs with the token's key
        conf = next(x.split("softhsm2_conf=", 1)[1].split()[0] for x in process.lines()
                    if "softhsm2_conf=" in x)
        pin = Path(conf).with_name("pin")
        assert pin.stat().st_mode & 0o777 == 0o600
        pin_text = pin.read_text().strip()
    finally:
        code = process.stop(signal.SIGTERM)
    assert code == 0
    assert pin_text not in "\n".join(process.lines()), "the PIN is never logged"
    assert not Path(conf).exists(), "the throwaway token is removed on exit"


def test_demo_softhsm_without_softhsm_says_what_to_install(tmp_path: Path) -> None:
    env = {**h.clean_env(), "PATH": str(tmp_path)}  # no softhsm2-util on it
    result = subprocess.run([*h.CLI, "demo", "--key-store", "softhsm"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "apt-get install softhsm2 p11-kit-modules" in result.stderr

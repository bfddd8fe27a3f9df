"""The real daemon process serving credentials signed by a token key and by a TPM key: config
file -> `credential-sidecar run` -> emulator process -> IMDS read, as an SDK would."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from credential_sidecar.upstream.hardware.tpm_key import TpmKey
from tests.helpers import harness as h
from tests.helpers.hwkeys import make_intermediate, make_leaf, make_root
from tests.helpers.softhsm import USER_PIN, SoftHsm
from tests.helpers.swtpm import Swtpm


def _pem(path: Path, *certs: object) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]
                              for c in certs))
    return path


def _serve(tmp: Path, anchor: Path,
           conn: dict[str, object]) -> tuple[dict[str, object], str, dict[str, object]]:
    """Credentials through IMDS, the daemon's log, and the connection's /status row."""
    with h.emulator(tmp, [anchor]) as emu:
        connection = {**h.connection("hw", h.make_pki(tmp / "unused"), emu.url), **conn}
        with h.daemon(tmp, [connection]) as daemon:
            _, creds = h.imds_read(daemon.url("imds:hw"))
            _, _, body = h.http("GET", daemon.url("health") + "status")
            log = "\n".join(daemon.process.lines())
        assert emu.stats()["succeeded"] >= 1
    row = next(r for r in json.loads(body)["connections"] if r["name"] == "hw")
    return creds, log, row


def test_daemon_with_a_token_key(softhsm: SoftHsm, tmp_path: Path) -> None:
    anchor = _pem(tmp_path / "anchor.pem", softhsm.root.cert)
    creds, log, row = _serve(tmp_path, anchor, {
        "private_key": softhsm.uri("p256"),
        "certificate": "pkcs11:token=sidecar;object=p256;type=cert",
    })
    assert creds["Code"] == "Success" and creds["AccessKeyId"]
    assert "pkcs11 session opened" in log
    assert USER_PIN not in log
    assert row["key_store"] == "pkcs11 token 'sidecar'"
    assert USER_PIN not in json.dumps(row) and str(softhsm.pin_file) not in json.dumps(row)


def test_daemon_with_a_tpm_key_file(swtpm: Swtpm, tmp_path: Path) -> None:
    root = make_root("Daemon TPM Root")
    inter = make_intermediate(root, "Daemon TPM Intermediate")
    probe = TpmKey(swtpm.keys["rsa-pem"], tcti=swtpm.tcti)
    try:
        leaf = make_leaf(inter, "daemon tpm", probe.public_key())
    finally:
        probe.close()
    creds, _, row = _serve(tmp_path, _pem(tmp_path / "anchor.pem", root.cert), {
        "private_key": swtpm.keys["rsa-pem"],
        "certificate": str(_pem(tmp_path / "leaf.pem", leaf, inter.cert)),
        "tpm_tcti": swtpm.tcti,
    })
    assert creds["Code"] == "Success" and creds["AccessKeyId"]
    assert row["key_store"] == "tpm (key file)"


def test_status_says_a_key_file_is_a_file(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    creds, _, row = _serve(tmp_path, material.ca_file, {
        "certificate": str(material.cert), "private_key": str(material.key)})
    assert creds["Code"] == "Success"
    assert row["key_store"] == "file"

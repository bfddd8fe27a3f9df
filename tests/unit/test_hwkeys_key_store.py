"""Where status says a connection's key lives: a file, a named PKCS#11 token, or the TPM."""

from __future__ import annotations

from pathlib import Path

from credential_sidecar.upstream.hardware.factory import key_store


def test_key_files(tmp_path: Path) -> None:
    pem = tmp_path / "k.key"
    pem.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert key_store(pem) == "file"
    assert key_store(None) == "file"  # the key is in the PKCS#12 bundle
    assert key_store(tmp_path / "missing.key") == "file"


def test_token_label_and_never_the_pin_source(tmp_path: Path) -> None:
    uri = f"pkcs11:token=My%20Token;object=k;type=private?pin-source=file:{tmp_path}/pin"
    assert key_store(uri) == "pkcs11 token 'My Token'"
    assert key_store("pkcs11:serial=00ab;object=k") == "pkcs11 token (serial 00ab)"


def test_tpm(tmp_path: Path) -> None:
    assert key_store("handle:0x81000002") == "tpm (handle 0x81000002)"
    tss = tmp_path / "k.tss2.pem"
    tss.write_text("-----BEGIN TSS2 PRIVATE KEY-----\nAAAA\n-----END TSS2 PRIVATE KEY-----\n")
    assert key_store(str(tss)) == "tpm (key file)"


def test_status_name_shows_the_key_store() -> None:
    from credential_sidecar.cli.status import render_record

    text = render_record({"name": "hw", "type": "roles-anywhere", "state": "ready",
                          "key_store": "pkcs11 token 'sidecar'"})
    assert "key store:" in text and "pkcs11 token 'sidecar'" in text

"""The daemon's entry point: config values to key, certificate and chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from credential_sidecar.upstream.hardware.base import HardwareKeyError, check
from credential_sidecar.upstream.hardware.factory import (
    chain_for,
    is_hardware_key,
    load_certificate,
    open_key,
)
from tests.helpers.hwkeys import make_leaf, make_root
from tests.helpers.softhsm import SoftHsm
from tests.helpers.swtpm import Swtpm


def test_pkcs11_key_cert_and_chain_from_the_token(softhsm: SoftHsm) -> None:
    key = open_key(softhsm.uri("p384"))
    try:
        leaf = load_certificate(None, key)
        assert leaf == softhsm.certs["p384"]
        check(key, leaf)
        assert chain_for(leaf, key, None, softhsm.root.cert) == [softhsm.intermediate.cert]
    finally:
        key.close()


def test_tpm_key_with_certificate_file(swtpm: Swtpm, tmp_path: Path) -> None:
    assert is_hardware_key(swtpm.keys["rsa-pem"]) and is_hardware_key("handle:0x81000002")
    key = open_key(swtpm.keys["ecp-handle"], tpm_tcti=swtpm.tcti)
    try:
        root = make_root("Factory Root")
        cert_file = tmp_path / "cert.pem"
        cert_file.write_bytes(make_leaf(root, "tpm", key.public_key())
                              .public_bytes(serialization.Encoding.PEM))
        check(key, load_certificate(str(cert_file), key))
        with pytest.raises(HardwareKeyError, match="set certificate to a file"):
            load_certificate("pkcs11:token=x;type=cert", key)
    finally:
        key.close()


def test_plain_key_file_is_not_hardware(tmp_path: Path) -> None:
    plain = tmp_path / "key.pem"
    plain.write_text("-----BEGIN PRIVATE KEY-----\n")
    assert not is_hardware_key(str(plain))
    with pytest.raises(HardwareKeyError, match="not a pkcs11: URI"):
        open_key(str(plain))

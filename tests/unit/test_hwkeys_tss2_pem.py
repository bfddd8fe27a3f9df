"""The TPMKey ASN.1 reader and writer, on hand-made inputs (the swtpm tests use real files)."""

from __future__ import annotations

import base64

import pytest

from credential_sidecar.upstream.hardware.tss2_pem import (
    TpmKeyFile,
    Tss2PemError,
    decode_der,
    decode_pem,
    encode_der,
    encode_pem,
)

KEY = TpmKeyFile(parent=0x81000001, public=b"\x00\x04pub!", private=b"\x00\x05priv!" * 40,
                 empty_auth=True, description="sidecar")


def _pem(der: bytes) -> bytes:
    return b"-----BEGIN TSS2 PRIVATE KEY-----\n" + base64.encodebytes(der) + \
        b"-----END TSS2 PRIVATE KEY-----\n"


def test_round_trip() -> None:
    assert decode_pem(encode_pem(KEY)) == KEY
    assert decode_der(encode_der(TpmKeyFile(0x40000001, b"a", b"b", empty_auth=False))) == \
        TpmKeyFile(0x40000001, b"a", b"b", empty_auth=False)


def test_true_as_one_is_accepted() -> None:
    """tpm2-openssl writes BOOLEAN TRUE as 0x01 instead of DER's 0xFF."""
    der = encode_der(TpmKeyFile(0x40000001, b"a", b"b"))
    assert b"\xa0\x03\x01\x01\xff" in der
    assert decode_der(der.replace(b"\xa0\x03\x01\x01\xff", b"\xa0\x03\x01\x01\x01")).empty_auth


def test_text_around_the_block() -> None:
    assert decode_pem(b"comment\n" + encode_pem(KEY) + b"trailer").parent == 0x81000001


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.replace(bytes.fromhex("6781050a0103"), bytes.fromhex("6781050a0105")),
     "sealed data"),
    (lambda d: d[:-3], "truncated"),
    (lambda d: d.replace(b"\xa4", b"\xa1", 1), "policy"),
])
def test_refused(mutate: object, message: str) -> None:
    der = encode_der(KEY)
    with pytest.raises(Tss2PemError, match=message):
        decode_der(mutate(der))  # type: ignore[operator]


def test_not_a_tss2_pem() -> None:
    with pytest.raises(Tss2PemError, match="not a 'TSS2 PRIVATE KEY' PEM"):
        decode_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(Tss2PemError, match="base64"):
        decode_pem(_pem(b"x").replace(b"eA==", b"e!=="))

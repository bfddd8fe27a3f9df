"""The ``TSS2 PRIVATE KEY`` file (TPMKey ASN.1) written by tpm2-tss-engine, tpm2-openssl and
tpm2_encodeobject: a TPM-wrapped key blob plus the handle of the parent that can unwrap it.

    TPMKey ::= SEQUENCE {
        type        OBJECT IDENTIFIER,            -- 2.23.133.10.1.3: loadable key
        emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
        policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
        secret      [2] EXPLICIT OCTET STRING OPTIONAL,
        authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
        description [4] EXPLICIT UTF8String OPTIONAL,
        rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
        parent      INTEGER,
        pubkey      OCTET STRING,                 -- TPM2B_PUBLIC
        privkey     OCTET STRING }                -- TPM2B_PRIVATE

A small DER reader of our own: the format is tiny, and depending on tpm2-pytss's parser would
tie file parsing to a binding that needs a C build; the reader also explains what it refuses.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from credential_sidecar.upstream.hardware.base import HardwareKeyError

LOADABLE_OID = "2.23.133.10.1.3"
_OTHER_OIDS = {"2.23.133.10.1.4": "importable key", "2.23.133.10.1.5": "sealed data"}
PEM_LABEL = "TSS2 PRIVATE KEY"
TPM2_RH_OWNER = 0x40000001


class Tss2PemError(HardwareKeyError):
    """The file is not a TPMKey we can load; the message says why."""


@dataclass(frozen=True)
class TpmKeyFile:
    parent: int
    public: bytes  # marshalled TPM2B_PUBLIC
    private: bytes  # marshalled TPM2B_PRIVATE
    empty_auth: bool = True
    rsa_parent: bool = False
    description: str | None = None


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, value, next position) of the TLV at ``pos``; definite lengths only (DER)."""
    if pos + 2 > len(data):
        raise Tss2PemError("TSS2 key: truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise Tss2PemError("TSS2 key: bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise Tss2PemError("TSS2 key: truncated DER")
    return tag, data[pos:pos + length], pos + length


def _oid(value: bytes) -> str:
    if not value:
        raise Tss2PemError("TSS2 key: empty OID")
    parts = [value[0] // 40, value[0] % 40]
    acc = 0
    for byte in value[1:]:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(acc)
            acc = 0
    return ".".join(map(str, parts))


def _bool(value: bytes, what: str) -> bool:
    tag, inner, _ = _tlv(value, 0)
    if tag != 0x01 or len(inner) != 1:
        raise Tss2PemError(f"TSS2 key: {what} is not a BOOLEAN")
    return inner != b"\x00"  # some writers use 0x01 rather than DER's 0xFF for TRUE


def decode_der(der: bytes) -> TpmKeyFile:
    tag, body, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise Tss2PemError("TSS2 key: not a single DER SEQUENCE")
    tag, value, pos = _tlv(body, 0)
    if tag != 0x06:
        raise Tss2PemError("TSS2 key: first field is not an OID")
    oid = _oid(value)
    if oid != LOADABLE_OID:
        kind = _OTHER_OIDS.get(oid, f"OID {oid}")
        raise Tss2PemError(f"TSS2 key is a {kind}, not a loadable key ({LOADABLE_OID})")
    empty_auth, rsa_parent, description = False, False, None
    while True:
        tag, value, nxt = _tlv(body, pos)
        if tag & 0xE0 != 0xA0:  # not a context-specific constructed tag: optionals are over
            break
        number = tag & 0x1F
        if number == 0:
            empty_auth = _bool(value, "emptyAuth")
        elif number == 5:
            rsa_parent = _bool(value, "rsaParent")
        elif number == 4:
            description = _tlv(value, 0)[1].decode("utf-8", "replace")
        else:
            field = {1: "policy", 2: "secret (imported/sealed key)", 3: "authPolicy"}.get(number)
            raise Tss2PemError(
                f"TSS2 key uses [{number}] {field or 'an unknown field'}, which is not supported: "
                "create the key without a policy (tpm2-openssl / tpm2_create without -L)"
            )
        pos = nxt
    if tag != 0x02:
        raise Tss2PemError("TSS2 key: parent is not an INTEGER")
    parent = int.from_bytes(value, "big", signed=False)
    tag_pub, public, pos = _tlv(body, nxt)
    tag_priv, private, pos = _tlv(body, pos)
    if tag_pub != 0x04 or tag_priv != 0x04 or pos != len(body):
        raise Tss2PemError("TSS2 key: pubkey and privkey must be the last two OCTET STRINGs")
    return TpmKeyFile(parent, public, private, empty_auth, rsa_parent, description)


def decode_pem(data: bytes) -> TpmKeyFile:
    """Parse the first ``TSS2 PRIVATE KEY`` block in ``data``."""
    begin, end = f"-----BEGIN {PEM_LABEL}-----".encode(), f"-----END {PEM_LABEL}-----".encode()
    start = data.find(begin)
    stop = data.find(end, start + 1)
    if start < 0 or stop < 0:
        raise Tss2PemError(f"not a '{PEM_LABEL}' PEM file")
    try:
        der = base64.b64decode(b"".join(data[start + len(begin):stop].split()), validate=True)
    except binascii.Error:
        raise Tss2PemError("TSS2 key: the PEM body is not valid base64") from None
    return decode_der(der)


def _enc(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    size = (n.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + n.to_bytes(size, "big") + value


def encode_der(key: TpmKeyFile) -> bytes:
    """DER as tpm2-openssl writes it (emptyAuth only when TRUE); for tools and tests."""
    oid = bytes.fromhex("6781050a0103")  # 2.23.133.10.1.3
    fields = _enc(0x06, oid)
    if key.empty_auth:
        fields += _enc(0xA0, _enc(0x01, b"\xff"))
    if key.description is not None:
        fields += _enc(0xA4, _enc(0x0C, key.description.encode()))
    if key.rsa_parent:
        fields += _enc(0xA5, _enc(0x01, b"\xff"))
    parent = key.parent.to_bytes((key.parent.bit_length() + 8) // 8, "big")
    fields += _enc(0x02, parent) + _enc(0x04, key.public) + _enc(0x04, key.private)
    return _enc(0x30, fields)


def encode_pem(key: TpmKeyFile) -> bytes:
    b64 = base64.b64encode(encode_der(key)).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {PEM_LABEL}-----", *lines, f"-----END {PEM_LABEL}-----", ""]) \
        .encode()

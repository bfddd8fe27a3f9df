"""What the daemon needs from a key that lives in hardware, and the checks every backend shares.

SigV4-X509 needs one operation: sign bytes with PKCS#1 v1.5 SHA-256 (RSA) or ECDSA SHA-256 (EC,
DER-encoded). A backend that gives that, plus the public key, can stand in for a key file.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credential_sidecar.files import read_file

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@runtime_checkable
class HardwareKey(Protocol):
    """A private key that never leaves its device; every call may block (run it in a thread)."""

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """PKCS#1 v1.5 SHA-256 for RSA, DER ECDSA-SHA256 for EC: what SigV4-X509 wants."""
        ...

    def describe(self) -> str:
        """Where the key is, for logs and errors; never a PIN or auth value."""
        ...

    def close(self) -> None: ...


class HardwareKeyError(Exception):
    """Base for every error here; messages name the device and the fix, never a secret."""


class KeyMismatchError(HardwareKeyError):
    """The hardware key does not belong to the configured certificate."""


class Secret:
    """A PIN or auth value that cannot end up in a repr, a log line or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def reveal_text(self) -> str:
        return self._value.decode("utf-8")

    def __repr__(self) -> str:
        return "Secret('[REDACTED]')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def read_secret_file(path: Path, what: str, *, strip_newline: bool = True) -> Secret:
    """Read a PIN/auth file under the daemon's rules for secrets (mode, ACL, regular file).

    For PINs one trailing newline is dropped (``echo PIN > file`` is how people make them);
    TPM auth values are read byte-exact, as tpm2-tools' ``file:`` reads them when a key is
    created. Errors (FileError) name the file and the fix; the content is never in them.
    """
    data, _ = read_file(path, what, private=True, allow_empty=not strip_newline)
    if strip_newline:
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
    return Secret(data)


def verify(public: PublicKey, signature: bytes, data: bytes) -> None:
    """Check a SigV4-X509 signature; raises cryptography's InvalidSignature."""
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def check(key: HardwareKey, certificate: x509.Certificate) -> None:
    """Prove the key belongs to the certificate: sign a fresh challenge, verify with the cert.

    Comparing public keys alone would trust what the device reports; a signature proves the
    device holds the matching private key and signs in the format SigV4-X509 expects.
    """
    cert_public = certificate.public_key()
    if not isinstance(cert_public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyMismatchError(
            f"certificate {certificate.subject.rfc4514_string()} has a "
            f"{type(cert_public).__name__}: use an RSA or EC (P-256, P-384) certificate"
        )
    challenge = b"credential-sidecar key check " + secrets.token_bytes(32)
    signature = key.sign(challenge)
    try:
        verify(cert_public, signature, challenge)
    except InvalidSignature as exc:
        raise KeyMismatchError(
            f"{key.describe()} does not match certificate "
            f"{certificate.subject.rfc4514_string()} (serial {certificate.serial_number}): "
            "a test signature did not verify with the certificate's public key; "
            "point the connection at the key the certificate was issued for"
        ) from exc

"""Throwaway certificate authorities for the demo and for tests.

Never used for real identities: it exists so that a user (and the test suite)
can exercise the whole Roles Anywhere path on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from credential_sidecar.files import atomic_write
from credential_sidecar.upstream.sigv4_x509 import SigningKey

PublicKey = CertificatePublicKeyTypes
KeyType = Literal["rsa", "p256", "p384"]


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: SigningKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def new_key(key_type: KeyType = "p256") -> SigningKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = ec.SECP384R1() if key_type == "p384" else ec.SECP256R1()
    return ec.generate_private_key(curve)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _build(
    subject: str,
    key: SigningKey,
    issuer: Issued | None,
    *,
    ca: bool,
    not_before: datetime | None,
    not_after: datetime | None,
) -> Issued:
    cert = certificate(subject, key.public_key(), issuer, ca=ca, not_before=not_before,
                       not_after=not_after, self_key=key)
    return Issued(certificate=cert, key=key)


def certificate(
    subject: str,
    public_key: PublicKey,
    issuer: Issued | None,
    *,
    ca: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    self_key: SigningKey | None = None,
) -> x509.Certificate:
    """A certificate for a public key whose private half is elsewhere (a token), or self-signed
    with ``self_key`` when there is no issuer."""
    now = datetime.now(UTC)
    signing_key = issuer.key if issuer else self_key
    assert signing_key is not None, "a self-signed certificate needs its own key"
    issuer_name = issuer.certificate.subject if issuer else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(name: str = "credential-sidecar demo CA", key_type: KeyType = "p256") -> Issued:
    return _build(name, new_key(key_type), None, ca=True, not_before=None, not_after=None)


def make_intermediate(issuer: Issued, name: str, key_type: KeyType = "p256") -> Issued:
    return _build(name, new_key(key_type), issuer, ca=True, not_before=None, not_after=None)


def make_leaf(
    issuer: Issued,
    name: str,
    key_type: KeyType = "p256",
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    return _build(
        name, new_key(key_type), issuer, ca=False, not_before=not_before, not_after=not_after
    )


def write_private(path: Path, data: bytes) -> Path:
    """Write a file only its owner can read (as the daemon demands of keys)."""
    atomic_write(path, data, mode=0o600)
    return path

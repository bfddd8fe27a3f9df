"""For the hardware key tests: a throwaway CA issuing certificates for public keys that live
in a token or TPM, and a look at everything an exception would show."""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(subject: str, public: PublicKey, issuer: Issuer | None,
          signer: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signer, hashes.SHA256())


def make_root(cn: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Issuer(issue(cn, key.public_key(), None, key, ca=True), key)


def make_intermediate(parent: Issuer, cn: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    return Issuer(issue(cn, key.public_key(), parent, parent.key, ca=True), key)


def make_leaf(parent: Issuer, cn: str, public: PublicKey) -> x509.Certificate:
    return issue(cn, public, parent, parent.key, ca=False)


def everything_said(exc: BaseException) -> str:
    """Message, repr, chained tracebacks and every frame's locals: where a PIN could leak."""
    te = traceback.TracebackException.from_exception(exc, capture_locals=True)
    return "".join(te.format()) + repr(exc) + str(exc)

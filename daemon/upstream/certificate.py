"""The Roles Anywhere identity: a leaf certificate, its private key and its intermediates.

Loaded from the files a connection names, checked the way an operator needs (which file, what is
wrong, what to run), and re-read when a renewal replaces them on disk. Error messages name files
and never quote their contents: a key or a passphrase must not reach a terminal or a journal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from credential_sidecar.config.pkcs11_uri import parse as parse_pkcs11_uri
from credential_sidecar.files import FileError, check_private_file, read_file, refuse_exposed
from credential_sidecar.upstream.hardware import factory
from credential_sidecar.upstream.hardware.base import (
    HardwareKey,
    HardwareKeyError,
    KeyMismatchError,
)
from credential_sidecar.upstream.hardware.base import check as check_key_matches
from credential_sidecar.upstream.hardware.chain import select_chain
from credential_sidecar.upstream.private_key import (
    SUPPORTED_KEYS,
    describe_key,
    key_matches,
    load_pkcs12,
    load_private_key,
    pem_labels,
)
from credential_sidecar.upstream.sigv4_x509 import AnyKey, SigningKey, algorithm_for

PKCS12_SUFFIXES = (".p12", ".pfx")

_PEM_CERT_LABELS = {"CERTIFICATE", "X509 CERTIFICATE"}


@dataclass(frozen=True)
class Identity:
    certificate: x509.Certificate
    private_key: AnyKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def algorithm(self) -> str:
        return algorithm_for(self.private_key)

    def fingerprint(self) -> str:
        """Changes whenever the leaf or the chain does (DER is self-delimiting: no separators)."""
        digest = hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER))
        for cert in self.chain:
            digest.update(cert.public_bytes(serialization.Encoding.DER))
        return digest.hexdigest()






# --- certificates ----------------------------------------------------------------------------


def _parse_certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate] | None:
    """All certificates in a PEM file, or the one in a DER file; None when it is not DER X.509."""
    labels = pem_labels(data)
    if labels:
        if not _PEM_CERT_LABELS.intersection(labels):
            raise FileError(
                f"{what} {path} holds no PEM certificate (found: {', '.join(labels)}): "
                f"point {what} at a certificate file"
            )
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise FileError(
                f"{what} {path} holds a malformed PEM certificate: "
                "check the file is complete (it may be half-written)"
            ) from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        return None


def _looks_like_pkcs12(data: bytes) -> bool:
    """A PFX is SEQUENCE { INTEGER 3, ... }: enough to tell it from a broken certificate."""
    if len(data) < 5 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        header = 2
    elif first == 0x80:  # BER indefinite length, which some Java tools write
        header = 2
    else:
        header = 2 + (first & 0x7F)
    return data[header : header + 3] == b"\x02\x01\x03"


def _check_leaf(leaf: x509.Certificate, path: Path | str) -> None:
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError:
        raise FileError(
            f"certificate {path} has malformed extensions: re-issue the certificate"
        ) from None
    if constraints is not None and constraints.ca:
        raise FileError(
            f"certificate {path} is a CA certificate (BasicConstraints CA:TRUE), not a leaf: "
            "point certificate at the end-entity certificate and put CAs in intermediates"
        )
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise FileError(
            f"certificate {path} has a public key this daemon cannot read: "
            f"Roles Anywhere needs {SUPPORTED_KEYS}"
        ) from None
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise FileError(
            f"certificate {path} has an unsupported public key ({describe_key(public)}): "
            f"Roles Anywhere signs only with {SUPPORTED_KEYS}; issue an RSA or EC certificate"
        )


def _unique_chain(
    leaf: x509.Certificate, certs: list[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """File order, without the leaf or repeats (a full-chain file given twice sends each once)."""
    seen = {leaf.public_bytes(serialization.Encoding.DER)}
    chain = []
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            chain.append(cert)
    return tuple(chain)


# --- keys ------------------------------------------------------------------------------------










# --- PKCS#12 ---------------------------------------------------------------------------------




# --- the identity ----------------------------------------------------------------------------


def optional_path(path: Path | None) -> Path | None:
    return Path(path) if path is not None else None


def pin_source(private_key: Path | str | None) -> Path | None:
    """The PIN file a pkcs11: URI names, so that fixing it triggers a reload."""
    if isinstance(private_key, str) and private_key.startswith("pkcs11:"):
        return parse_pkcs11_uri(private_key).pin_source
    return None


@dataclass(frozen=True)
class HardwareSettings:
    """How to reach a hardware key: the connection's pkcs11_module / tpm_* settings."""

    pkcs11_module: Path | None = None
    tpm_tcti: str | None = None
    tpm_key_auth_file: Path | None = None
    tpm_parent_auth_file: Path | None = None

    def open(self, private_key: str) -> HardwareKey:
        return factory.open_key(
            private_key, pkcs11_module=self.pkcs11_module, tpm_tcti=self.tpm_tcti,
            tpm_key_auth_file=self.tpm_key_auth_file,
            tpm_parent_auth_file=self.tpm_parent_auth_file,
        )


def is_hardware(private_key: Path | str | None) -> bool:
    """A pkcs11: URI, a TPM handle: or a TSS2 key file (sniffed: it is named like any key)."""
    return private_key is not None and factory.is_hardware_key(str(private_key))


def load_hardware_identity(
    certificate: Path | str, key: HardwareKey, intermediates: Path | None = None
) -> Identity:
    """The identity of an open hardware key: leaf from a file or the token, a test signature
    proving the key is the certificate's, and only the intermediates that chain the leaf."""
    try:
        if isinstance(certificate, str):
            leaf, extra = factory.load_certificate(certificate, key), []
        else:
            data, _ = read_file(certificate, "certificate")
            parsed = _parse_certificates(data, certificate, "certificate")
            if not parsed:
                raise FileError(f"certificate {certificate} is not a PEM or DER certificate: "
                                "a hardware key needs its certificate in a file or on the token")
            leaf, *extra = parsed
        _check_leaf(leaf, certificate)
        check_key_matches(key, leaf)
        if intermediates is not None:
            data, _ = read_file(intermediates, "intermediates")
            extra += _parse_certificates(data, intermediates, "intermediates") or []
        if isinstance(key, factory.HoldsCertificates):
            extra += key.token_certificates()
        chain = select_chain(leaf, extra)
    except KeyMismatchError as exc:
        raise FileError(f"{exc} (certificate {certificate})") from None
    except HardwareKeyError as exc:
        raise FileError(str(exc)) from None
    return Identity(certificate=leaf, private_key=key, chain=tuple(chain))


def load_identity(
    *,
    certificate: Path | str,
    private_key: Path | str | None = None,
    passphrase_file: Path | None = None,
    intermediates: Path | None = None,
    hardware: HardwareSettings | None = None,
) -> Identity:
    """Read and check every file of one identity; blocking and CPU-heavy (run it in a thread).

    A hardware key is opened here and belongs to the Identity (IdentitySource keeps it open
    across certificate reloads instead, see there).
    """
    if is_hardware(private_key):
        return _hardware_identity(certificate, str(private_key), intermediates, hardware)
    if isinstance(certificate, str) or isinstance(private_key, str):
        raise FileError("a pkcs11: certificate needs a pkcs11: private_key")
    passphrase_file = optional_path(passphrase_file)
    # Refused even when the key turns out unencrypted: a readable passphrase is a leak either way.
    if passphrase_file is not None:
        check_private_file(passphrase_file, "private key passphrase file")
    leaf, key, extra = _leaf_and_key(Path(certificate), optional_path(private_key),
                                     passphrase_file)
    extra += _intermediates(optional_path(intermediates))
    return Identity(certificate=leaf, private_key=key, chain=_unique_chain(leaf, extra))


def _hardware_identity(
    certificate: Path | str, uri: str, intermediates: Path | None,
    hardware: HardwareSettings | None,
) -> Identity:
    try:
        hw_key = (hardware or HardwareSettings()).open(uri)
    except HardwareKeyError as exc:
        raise FileError(str(exc)) from None
    try:
        return load_hardware_identity(certificate, hw_key, optional_path(intermediates))
    except BaseException:
        hw_key.close()
        raise


def _leaf_and_key(
    certificate: Path, private_key: Path | None, passphrase_file: Path | None
) -> tuple[x509.Certificate, SigningKey, list[x509.Certificate]]:
    """The leaf, its key and any other certificates its file carries (a chain, a bundle's CAs)."""
    if certificate.suffix.lower() in PKCS12_SUFFIXES:
        data, _ = read_file(certificate, "PKCS#12 bundle", private=True)
        leaf, key, extra = load_pkcs12(certificate, data, private_key, passphrase_file)
        _check_leaf(leaf, certificate)
        return leaf, key, list(extra)
    data, st = read_file(certificate, "certificate")
    parsed = _parse_certificates(data, certificate, "certificate")
    if parsed is None:
        if not _looks_like_pkcs12(data):
            raise FileError(
                f"certificate {certificate} is neither a PEM or DER X.509 certificate nor a "
                "PKCS#12 bundle: check the path and that the file is complete"
            )
        # Read before we knew it held a key: refuse it now, before the key is used.
        refuse_exposed(certificate, "PKCS#12 bundle", st)
        leaf, key, extra = load_pkcs12(certificate, data, private_key, passphrase_file)
        _check_leaf(leaf, certificate)
        return leaf, key, list(extra)
    leaf, *chain = parsed
    if private_key is None:
        raise FileError(
            f"certificate {certificate} comes without a key: set private_key, "
            "or use a PKCS#12 bundle (.p12 or .pfx)"
        )
    _check_leaf(leaf, certificate)
    key = load_private_key(private_key, passphrase_file)
    if not key_matches(key, leaf):
        raise FileError(f"private key {private_key} does not match certificate {certificate}")
    return leaf, key, chain


def _intermediates(path: Path | None) -> list[x509.Certificate]:
    if path is None:
        return []
    data, _ = read_file(path, "intermediates")
    bundle = _parse_certificates(data, path, "intermediates")
    if bundle is None:
        raise FileError(
            f"intermediates {path} is not a PEM or DER X.509 certificate bundle: "
            "check the path and that the file is complete"
        )
    return bundle





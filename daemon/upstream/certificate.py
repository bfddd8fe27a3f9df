"""The Roles Anywhere identity: a leaf certificate, its private key and its intermediates.

Loaded from the files a connection names, checked the way an operator needs (which file, what is
wrong, what to run), and re-read when a renewal replaces them on disk. Error messages name files
and never quote their contents: a key or a passphrase must not reach a terminal or a journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from credential_sidecar.files import FileError, check_private_file, read_file, refuse_exposed
from credential_sidecar.upstream.private_key import (
    SUPPORTED_KEYS,
    describe_key,
    key_matches,
    load_pkcs12,
    load_private_key,
    pem_labels,
)
from credential_sidecar.upstream.sigv4_x509 import SigningKey, algorithm_for

PKCS12_SUFFIXES = (".p12", ".pfx")

_PEM_CERT_LABELS = {"CERTIFICATE", "X509 CERTIFICATE"}


@dataclass(frozen=True)
class Identity:
    certificate: x509.Certificate
    private_key: SigningKey = field(repr=False)
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


def _check_leaf(leaf: x509.Certificate, path: Path) -> None:
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


def _optional_path(path: Path | None) -> Path | None:
    return Path(path) if path is not None else None


def load_identity(
    *,
    certificate: Path,
    private_key: Path | None = None,
    passphrase_file: Path | None = None,
    intermediates: Path | None = None,
) -> Identity:
    """Read and check every file of one identity; blocking and CPU-heavy (run it in a thread)."""
    certificate = Path(certificate)
    private_key = _optional_path(private_key)
    passphrase_file = _optional_path(passphrase_file)
    intermediates = _optional_path(intermediates)

    # Refused even when the key turns out unencrypted: a readable passphrase is a leak either way.
    if passphrase_file is not None:
        check_private_file(passphrase_file, "private key passphrase file")

    if certificate.suffix.lower() in PKCS12_SUFFIXES:
        data, _ = read_file(certificate, "PKCS#12 bundle", private=True)
        leaf, key, extra = load_pkcs12(certificate, data, private_key, passphrase_file)
        _check_leaf(leaf, certificate)
    else:
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
        else:
            leaf, *extra = parsed
            if private_key is None:
                raise FileError(
                    f"certificate {certificate} comes without a key: set private_key, "
                    "or use a PKCS#12 bundle (.p12 or .pfx)"
                )
            _check_leaf(leaf, certificate)
            key = load_private_key(private_key, passphrase_file)
            if not key_matches(key, leaf):
                raise FileError(
                    f"private key {private_key} does not match certificate {certificate}"
                )

    if intermediates is not None:
        data, _ = read_file(intermediates, "intermediates")
        bundle = _parse_certificates(data, intermediates, "intermediates")
        if bundle is None:
            raise FileError(
                f"intermediates {intermediates} is not a PEM or DER X.509 certificate bundle: "
                "check the path and that the file is complete"
            )
        extra += bundle
    return Identity(certificate=leaf, private_key=key, chain=_unique_chain(leaf, extra))


# Inode, device, mtime, ctime, size and mode: ctime and mode catch a chmod that fixes a refusal.
_Signature = tuple[tuple[int, int, int, int, int, int] | None, ...]


class IdentitySource:
    """Holds the loaded Identity and re-reads it when any of its files changes (renewed certs)."""

    def __init__(
        self,
        *,
        certificate: Path,
        private_key: Path | None = None,
        passphrase_file: Path | None = None,
        intermediates: Path | None = None,
    ) -> None:
        self._certificate = Path(certificate)
        self._private_key = _optional_path(private_key)
        self._passphrase_file = _optional_path(passphrase_file)
        self._intermediates = _optional_path(intermediates)
        self._files = [
            p
            for p in (
                self._certificate,
                self._private_key,
                self._passphrase_file,
                self._intermediates,
            )
            if p is not None
        ]
        self._identity: Identity | None = None
        self._loaded: _Signature | None = None
        self._failed: _Signature | None = None
        self._lock = asyncio.Lock()

    def _signature(self) -> _Signature:
        """A few stat calls: cheap enough for every get(), unlike parsing keys."""
        out: list[tuple[int, int, int, int, int, int] | None] = []
        for path in self._files:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            out.append(
                (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)
            )
        return tuple(out)

    def _load(self) -> Identity:
        return load_identity(
            certificate=self._certificate,
            private_key=self._private_key,
            passphrase_file=self._passphrase_file,
            intermediates=self._intermediates,
        )

    def current(self) -> Identity | None:
        return self._identity

    async def get(self) -> Identity:
        """The identity as the files are now, or the last good one while they are broken."""
        signature = self._signature()
        if self._identity is not None and signature in (self._loaded, self._failed):
            return self._identity
        async with self._lock:
            signature = self._signature()
            if self._identity is not None and signature in (self._loaded, self._failed):
                return self._identity
            try:
                identity = await asyncio.to_thread(self._load)
            except Exception as exc:  # a renewal must never take away a working identity
                self._failed = signature
                error = (
                    exc
                    if isinstance(exc, FileError)
                    else FileError(
                        f"certificate {self._certificate} could not be loaded "
                        f"({type(exc).__name__}): check its files"
                    )
                )
                if self._identity is None:
                    raise error from None
                structlog.get_logger().warning(
                    "identity reload failed; still using the previous certificate",
                    certificate=str(self._certificate),
                    serial=self._identity.serial,
                    error=str(error),
                )
                return self._identity
            previous, self._identity = self._identity, identity
            self._loaded, self._failed = signature, None
            if previous is None or previous.fingerprint() != identity.fingerprint():
                structlog.get_logger().info(
                    "identity loaded",
                    certificate=str(self._certificate),
                    serial=identity.serial,
                    not_after=identity.not_after.isoformat(),
                    chain=len(identity.chain),
                )
            return identity

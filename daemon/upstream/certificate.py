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
from credential_sidecar.upstream.sigv4_x509 import AnyKey, algorithm_for

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


def _optional_path(path: Path | None) -> Path | None:
    return Path(path) if path is not None else None


def _pin_source(private_key: Path | str | None) -> Path | None:
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
        try:
            hw_key = (hardware or HardwareSettings()).open(str(private_key))
        except HardwareKeyError as exc:
            raise FileError(str(exc)) from None
        try:
            return load_hardware_identity(certificate, hw_key, _optional_path(intermediates))
        except BaseException:
            hw_key.close()
            raise
    if isinstance(certificate, str) or isinstance(private_key, str):
        raise FileError("a pkcs11: certificate needs a pkcs11: private_key")
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
        certificate: Path | str,
        private_key: Path | str | None = None,
        passphrase_file: Path | None = None,
        intermediates: Path | None = None,
        hardware: HardwareSettings | None = None,
    ) -> None:
        self._certificate = certificate if isinstance(certificate, str) else Path(certificate)
        self._private_key = private_key if isinstance(private_key, str) else _optional_path(
            private_key)
        self._passphrase_file = _optional_path(passphrase_file)
        self._intermediates = _optional_path(intermediates)
        self._hardware = hardware or HardwareSettings()
        # A hardware key stays open across certificate reloads (a token login, a TPM load);
        # it is re-opened only when its own files (TSS2 key, PIN, auth) change.
        self._key_files = [
            p
            for p in (
                _pin_source(self._private_key),
                self._private_key if isinstance(self._private_key, Path) else None,
                self._hardware.tpm_key_auth_file,
                self._hardware.tpm_parent_auth_file,
            )
            if p is not None
        ]
        self._hw_key: HardwareKey | None = None
        self._hw_signature: _Signature | None = None
        self._retired: list[HardwareKey] = []
        self._files = [
            p
            for p in (
                self._certificate if isinstance(self._certificate, Path) else None,
                self._private_key if isinstance(self._private_key, Path) else None,
                self._passphrase_file,
                self._intermediates,
                *[f for f in self._key_files if f != self._private_key],
            )
            if p is not None
        ]
        self._identity: Identity | None = None
        self._loaded: _Signature | None = None
        self._failed: _Signature | None = None
        self._lock = asyncio.Lock()

    def _signature(self, files: list[Path] | None = None) -> _Signature:
        """A few stat calls: cheap enough for every get(), unlike parsing keys."""
        out: list[tuple[int, int, int, int, int, int] | None] = []
        for path in self._files if files is None else files:
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
        # Sniffed on every load: a TSS2 key file may appear (or replace a key file) later.
        if is_hardware(self._private_key):
            return self._load_hardware()
        return load_identity(
            certificate=self._certificate,
            private_key=self._private_key,
            passphrase_file=self._passphrase_file,
            intermediates=self._intermediates,
        )

    def _load_hardware(self) -> Identity:
        signature = self._signature(self._key_files)
        if self._hw_key is None or signature != self._hw_signature:
            try:
                key = self._hardware.open(str(self._private_key))
            except HardwareKeyError as exc:
                raise FileError(str(exc)) from None
            if self._hw_key is not None:  # a fetch may still hold it: closed in close()
                self._retired.append(self._hw_key)
            self._hw_key, self._hw_signature = key, signature
        return load_hardware_identity(self._certificate, self._hw_key, self._intermediates)

    async def close(self) -> None:
        """Log out of the token / flush the TPM key (blocking calls, so in a thread)."""
        keys = [*self._retired, *([self._hw_key] if self._hw_key else [])]
        self._retired, self._hw_key = [], None
        for key in keys:
            await asyncio.to_thread(key.close)

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

"""From config values to a HardwareKey, its certificate and its chain: the daemon's entry point.

``private_key`` keeps meaning "a file" unless it is a ``pkcs11:`` URI, a ``handle:0x81...``, or
a file holding a ``TSS2 PRIVATE KEY``; the bindings are imported only when such a key is used,
so hosts without tokens need neither python-pkcs11 nor tpm2-pytss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509

from credential_sidecar.config.pkcs11_uri import parse as parse_pkcs11_uri
from credential_sidecar.upstream.hardware.base import HardwareKey, HardwareKeyError
from credential_sidecar.upstream.hardware.chain import select_chain

TSS2_MARKER = b"-----BEGIN TSS2 PRIVATE KEY-----"


@runtime_checkable
class HoldsCertificates(Protocol):
    """A key whose device also stores certificates (PKCS#11 tokens)."""

    def certificate(self, uri: str | None = None) -> x509.Certificate: ...

    def token_certificates(self) -> list[x509.Certificate]: ...


def is_hardware_key(private_key: str) -> bool:
    """Whether the value names a hardware key (reads at most the file's first 4 KiB)."""
    if private_key.startswith(("pkcs11:", "handle:")):
        return True
    try:
        with open(private_key, "rb") as f:
            return TSS2_MARKER in f.read(4096)
    except OSError:
        return False


def key_store(private_key: str | Path | None) -> str:
    """Where a connection's key lives, for status: "file", "pkcs11 token '<label>'" or "tpm
    (handle 0x81...)" / "tpm (key file)". Reads no PIN (a pkcs11: URI holds none)."""
    if private_key is None:
        return "file"  # in the PKCS#12 bundle
    text = str(private_key)
    if text.startswith("pkcs11:"):
        uri = parse_pkcs11_uri(text)
        if uri.token is not None:
            return f"pkcs11 token {uri.token!r}"
        return f"pkcs11 token (serial {uri.serial})" if uri.serial else "pkcs11 token"
    if text.startswith("handle:"):
        return f"tpm (handle {text.removeprefix('handle:')})"
    return "tpm (key file)" if is_hardware_key(text) else "file"


def open_key(
    private_key: str,
    *,
    pkcs11_module: Path | None = None,
    pkcs11_pin_file: Path | None = None,
    tpm_tcti: str | None = None,
    tpm_key_auth_file: Path | None = None,
    tpm_parent_auth_file: Path | None = None,
) -> HardwareKey:
    """Open the key; blocking (token login, TPM load): call it in an executor."""
    if private_key.startswith("pkcs11:"):
        from credential_sidecar.upstream.hardware.pkcs11_key import Pkcs11Key

        return Pkcs11Key(private_key, module=pkcs11_module, pin_file=pkcs11_pin_file)
    if is_hardware_key(private_key):
        from credential_sidecar.upstream.hardware.tpm_key import DEFAULT_TCTI, TpmKey

        return TpmKey(private_key, tcti=tpm_tcti or DEFAULT_TCTI,
                      key_auth_file=tpm_key_auth_file, parent_auth_file=tpm_parent_auth_file)
    raise HardwareKeyError(f"{private_key!r} is not a pkcs11: URI, a handle: or a TSS2 key file")


def _read_certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def load_certificate(certificate: str | None, key: HardwareKey) -> x509.Certificate:
    """A file, a ``pkcs11:...;type=cert`` URI, or (unset, PKCS#11 key) the cert with its CKA_ID."""
    if certificate is None or certificate.startswith("pkcs11:"):
        if not isinstance(key, HoldsCertificates):
            raise HardwareKeyError(f"{key.describe()}: set certificate to a file; only a "
                                   "PKCS#11 token can hold the certificate next to the key")
        return key.certificate(certificate)
    return _read_certs(Path(certificate))[0]


def chain_for(leaf: x509.Certificate, key: HardwareKey, chain_file: Path | None,
              anchor: x509.Certificate | None = None) -> list[x509.Certificate]:
    """Intermediates from the chain file and (for PKCS#11) the token, only those that link."""
    candidates: list[x509.Certificate] = _read_certs(chain_file) if chain_file else []
    if isinstance(key, HoldsCertificates):
        candidates += key.token_certificates()
    return select_chain(leaf, candidates, anchor)

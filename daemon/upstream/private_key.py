"""Private keys from files: PEM or DER, PKCS#1, SEC1, PKCS#8 (encrypted too) and PKCS#12 bundles.

Only the kinds Roles Anywhere signs with are accepted (RSA of 2048 bits or more, EC P-256 and
P-384); a file others can read is refused before its key is used; messages name the file, never
its contents or the passphrase.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from credential_sidecar.files import FileError, read_file
from credential_sidecar.upstream.sigv4_x509 import SigningKey

MIN_RSA_BITS = 2048


SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


SUPPORTED_KEYS = "RSA (2048 bits or more) or EC P-256 / P-384"


_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


def pem_labels(data: bytes) -> list[str]:
    return [m.group(1).decode("ascii") for m in _PEM_LABEL.finditer(data)]


def read_passphrase(path: Path) -> bytes:
    """The file's bytes minus ONE line ending: editors add one, a passphrase may end in spaces."""
    data, _ = read_file(path, "private key passphrase file", private=True, allow_empty=True)
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def describe_key(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    name = type(key).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name


def check_key(key: object, path: Path, what: str) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, SUPPORTED_CURVES):
        return key
    raise FileError(
        f"{what} {path} holds an unsupported key ({describe_key(key)}): "
        f"Roles Anywhere signs only with {SUPPORTED_KEYS}; issue a new key and certificate"
    )


def load_private_key(path: Path, passphrase_file: Path | None) -> SigningKey:
    what = "private key"
    data, _ = read_file(path, what, private=True)
    labels = pem_labels(data)
    if labels and not any(label.endswith("PRIVATE KEY") for label in labels):
        raise FileError(
            f"{what} {path} holds no PEM private key (found: {', '.join(labels)}): "
            "point private_key at the key file"
        )
    load = serialization.load_pem_private_key if labels else serialization.load_der_private_key
    try:
        key = load(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        if passphrase_file is None:
            raise FileError(
                f"{what} {path} is encrypted: set private_key_passphrase_file to a file "
                "holding its passphrase"
            ) from None
        passphrase = read_passphrase(passphrase_file)
        if not passphrase:
            raise FileError(
                f"private key passphrase file {passphrase_file} is empty: "
                f"write the passphrase of {path} into it"
            ) from None
        try:
            key = load(data, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise FileError(
                f"{what} {path} cannot be decrypted with the passphrase in {passphrase_file}: "
                "check that file holds this key's passphrase"
            ) from None
    except (ValueError, UnsupportedAlgorithm):
        kind = "PEM" if labels else "DER"
        raise FileError(
            f"{what} {path} is not a readable {kind} private key (PKCS#1, SEC1 or PKCS#8): "
            "check the file is complete and is the key for this certificate"
        ) from None
    return check_key(key, path, what)


def key_matches(key: SigningKey, cert: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    except (ValueError, UnsupportedAlgorithm):
        return False


def load_pkcs12(
    path: Path, data: bytes, private_key: Path | None, passphrase_file: Path | None
) -> tuple[x509.Certificate, SigningKey, list[x509.Certificate]]:
    """Leaf (the certificate matching the bundle's key), key, and the other certificates."""
    what = "PKCS#12 bundle"
    if private_key is not None:
        raise FileError(
            f"certificate {path} is a PKCS#12 bundle, which carries its own private key: "
            f"remove private_key ({private_key}) from the connection (and name the bundle "
            ".p12 or .pfx)"
        )
    # None also opens bundles exported with an empty password; a configured passphrase may meet
    # an unencrypted bundle, so None is the fallback there too.
    passwords = [None] if passphrase_file is None else [read_passphrase(passphrase_file), None]
    bundle = None
    for password in passwords:
        try:
            bundle = pkcs12.load_pkcs12(data, password)
            break
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    if bundle is None:
        if passphrase_file is None:
            raise FileError(
                f"{what} {path} cannot be opened without a passphrase: it is encrypted (set "
                "private_key_passphrase_file to a file holding its passphrase) or corrupt"
            )
        raise FileError(
            f"{what} {path} cannot be opened with the passphrase in {passphrase_file}: "
            "check that file holds the bundle's passphrase, and that the bundle is complete"
        )
    if bundle.key is None:
        raise FileError(f"{what} {path} holds no private key: export the bundle with its key")
    key = check_key(bundle.key, path, what)
    certs = [bundle.cert.certificate] if bundle.cert is not None else []
    certs += [c.certificate for c in bundle.additional_certs]
    leaf = next((c for c in certs if key_matches(key, c)), None)
    if leaf is None:
        raise FileError(
            f"{what} {path} holds no certificate matching its private key: "
            "export the bundle with the key's certificate"
        )
    return leaf, key, [c for c in certs if c is not leaf]


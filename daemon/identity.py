"""The Roles Anywhere identity: a leaf certificate, its private key and its intermediates.

Loaded from the files a connection names, checked the way an operator needs (which file, what is
wrong, what to run), and re-read when a renewal replaces them on disk. Error messages name files
and never quote their contents: a key or a passphrase must not reach a terminal or a journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from daemon.signer import SigningKey, algorithm_for

PKCS12_SUFFIXES = (".p12", ".pfx")
MIN_RSA_BITS = 2048
SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
# Certificates, keys and bundles take a few kilobytes: a bigger file is a wrong path.
MAX_FILE_BYTES = 1 << 20
SUPPORTED_KEYS = "RSA (2048 bits or more) or EC P-256 / P-384"

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PEM_CERT_LABELS = {"CERTIFICATE", "X509 CERTIFICATE"}


class IdentityError(Exception):
    """A certificate, key or passphrase file is unusable; the message names it and the fix."""


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


# --- files -----------------------------------------------------------------------------------


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _refuse_irregular(path: Path, what: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(
            f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file: "
            "point the configuration at the file itself"
        )


# POSIX access ACLs as Linux stores them (acl(5)): a version, then (tag, perm, id) entries.
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK = 0x02, 0x04, 0x08, 0x10


def _acl_grants(target: int | Path, owner: int) -> list[str] | None:
    """Whom a file's ACL lets read or write it besides its owner and the daemon's own user;
    None when the file has no ACL.

    With an ACL the group bits of the mode are the ACL's mask, not the group's rights: systemd's
    credential files ($CREDENTIALS_DIRECTORY) are root's, mode 0400, plus one ACL entry for the
    service's user, and so read as 0440 although no group can read them.
    """
    try:
        blob = os.getxattr(target, _ACL_XATTR)
    except OSError:
        return None
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != 2:
        return ["an ACL entry the daemon cannot parse"]
    entries = [struct.unpack_from("<HHI", blob, offset) for offset in range(4, len(blob), 8)]
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0o7)
    grants = []
    for tag, perm, ident in entries:
        if not perm & mask & 0o6:  # neither read nor write
            continue
        if tag == _ACL_USER and ident not in (owner, os.geteuid()):
            grants.append(f"user {ident}")
        elif tag == _ACL_GROUP_OBJ:
            grants.append("the file's group")
        elif tag == _ACL_GROUP:
            grants.append(f"group {ident}")
    return grants


def _refuse_exposed(
    path: Path, what: str, st: os.stat_result, fd: int | None = None
) -> None:
    """Mode bits (and ACL): the daemon may run as root, for whom access() says yes to anything."""
    _refuse_irregular(path, what, st)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o070 and not mode & 0o007:
        grants = _acl_grants(fd if fd is not None else path, st.st_uid)
        if grants == []:
            return
        if grants:
            raise IdentityError(
                f"{what} {path} has an ACL letting {', '.join(grants)} read or write it; "
                f"run: setfacl -b {path} && chmod 600 {path}"
            )
    if mode & 0o077:
        if mode & 0o044:
            exposure = "readable"
        elif mode & 0o022:
            exposure = "writable"
        else:
            exposure = "accessible"
        raise IdentityError(
            f"{what} {path} has mode {mode:04o}: it must not be {exposure} by group or others; "
            f"run: chmod 600 {path}"
        )


def _missing(path: Path, what: str) -> IdentityError:
    if "CREDENTIALS_DIRECTORY" in str(path):
        return IdentityError(
            f"{what} {path} cannot be found: $CREDENTIALS_DIRECTORY is not set; it is set by "
            "systemd for a unit with LoadCredential= (run the daemon as that service)"
        )
    return IdentityError(f"{what} {path} does not exist: create it or fix the path in the config")


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that group or others can read or write, as ssh does with keys."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _missing(path, what) from None
    except OSError as exc:
        raise IdentityError(f"{what} {path} cannot be inspected: {exc.strerror}") from None
    _refuse_exposed(path, what, st)


def _read(
    path: Path, what: str, *, private: bool = False, allow_empty: bool = False
) -> tuple[bytes, os.stat_result]:
    """Open, then check the opened file, then read: the file checked is the file read.

    O_NONBLOCK keeps a named pipe from hanging the open; it is refused right after.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _missing(path, what) from None
    except PermissionError:
        raise IdentityError(
            f"{what} {path} is not readable by the daemon (uid {os.getuid()}): "
            "give the daemon's user read access to it"
        ) from None
    except OSError as exc:
        raise IdentityError(f"{what} {path} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if private:
            _refuse_exposed(path, what, st, handle.fileno())
        else:
            _refuse_irregular(path, what, st)
        if st.st_size > MAX_FILE_BYTES:
            raise IdentityError(
                f"{what} {path} is {st.st_size} bytes, too large to be a {what}: check the path"
            )
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise IdentityError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not allow_empty and not data.strip():
        raise IdentityError(f"{what} {path} is empty: write the {what} into it")
    return data, st


def _pem_labels(data: bytes) -> list[str]:
    return [m.group(1).decode("ascii") for m in _PEM_LABEL.finditer(data)]


def _read_passphrase(path: Path) -> bytes:
    """The file's bytes minus ONE line ending: editors add one, a passphrase may end in spaces."""
    data, _ = _read(path, "private key passphrase file", private=True, allow_empty=True)
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


# --- certificates ----------------------------------------------------------------------------


def _parse_certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate] | None:
    """All certificates in a PEM file, or the one in a DER file; None when it is not DER X.509."""
    labels = _pem_labels(data)
    if labels:
        if not _PEM_CERT_LABELS.intersection(labels):
            raise IdentityError(
                f"{what} {path} holds no PEM certificate (found: {', '.join(labels)}): "
                f"point {what} at a certificate file"
            )
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise IdentityError(
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
        raise IdentityError(
            f"certificate {path} has malformed extensions: re-issue the certificate"
        ) from None
    if constraints is not None and constraints.ca:
        raise IdentityError(
            f"certificate {path} is a CA certificate (BasicConstraints CA:TRUE), not a leaf: "
            "point certificate at the end-entity certificate and put CAs in intermediates"
        )
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise IdentityError(
            f"certificate {path} has a public key this daemon cannot read: "
            f"Roles Anywhere needs {SUPPORTED_KEYS}"
        ) from None
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise IdentityError(
            f"certificate {path} has an unsupported public key ({_describe(public)}): "
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


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    name = type(key).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name


def _check_key(key: object, path: Path, what: str) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, SUPPORTED_CURVES):
        return key
    raise IdentityError(
        f"{what} {path} holds an unsupported key ({_describe(key)}): "
        f"Roles Anywhere signs only with {SUPPORTED_KEYS}; issue a new key and certificate"
    )


def _load_private_key(path: Path, passphrase_file: Path | None) -> SigningKey:
    what = "private key"
    data, _ = _read(path, what, private=True)
    labels = _pem_labels(data)
    if labels and not any(label.endswith("PRIVATE KEY") for label in labels):
        raise IdentityError(
            f"{what} {path} holds no PEM private key (found: {', '.join(labels)}): "
            "point private_key at the key file"
        )
    load = serialization.load_pem_private_key if labels else serialization.load_der_private_key
    try:
        key = load(data, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        if passphrase_file is None:
            raise IdentityError(
                f"{what} {path} is encrypted: set private_key_passphrase_file to a file "
                "holding its passphrase"
            ) from None
        passphrase = _read_passphrase(passphrase_file)
        if not passphrase:
            raise IdentityError(
                f"private key passphrase file {passphrase_file} is empty: "
                f"write the passphrase of {path} into it"
            ) from None
        try:
            key = load(data, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise IdentityError(
                f"{what} {path} cannot be decrypted with the passphrase in {passphrase_file}: "
                "check that file holds this key's passphrase"
            ) from None
    except (ValueError, UnsupportedAlgorithm):
        kind = "PEM" if labels else "DER"
        raise IdentityError(
            f"{what} {path} is not a readable {kind} private key (PKCS#1, SEC1 or PKCS#8): "
            "check the file is complete and is the key for this certificate"
        ) from None
    return _check_key(key, path, what)


def _matches(key: SigningKey, cert: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    except (ValueError, UnsupportedAlgorithm):
        return False


# --- PKCS#12 ---------------------------------------------------------------------------------


def _load_pkcs12(
    path: Path, data: bytes, private_key: Path | None, passphrase_file: Path | None
) -> tuple[x509.Certificate, SigningKey, list[x509.Certificate]]:
    """Leaf (the certificate matching the bundle's key), key, and the other certificates."""
    what = "PKCS#12 bundle"
    if private_key is not None:
        raise IdentityError(
            f"certificate {path} is a PKCS#12 bundle, which carries its own private key: "
            f"remove private_key ({private_key}) from the connection (and name the bundle "
            ".p12 or .pfx)"
        )
    # None also opens bundles exported with an empty password; a configured passphrase may meet
    # an unencrypted bundle, so None is the fallback there too.
    passwords = [None] if passphrase_file is None else [_read_passphrase(passphrase_file), None]
    bundle = None
    for password in passwords:
        try:
            bundle = pkcs12.load_pkcs12(data, password)
            break
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    if bundle is None:
        if passphrase_file is None:
            raise IdentityError(
                f"{what} {path} cannot be opened without a passphrase: it is encrypted (set "
                "private_key_passphrase_file to a file holding its passphrase) or corrupt"
            )
        raise IdentityError(
            f"{what} {path} cannot be opened with the passphrase in {passphrase_file}: "
            "check that file holds the bundle's passphrase, and that the bundle is complete"
        )
    if bundle.key is None:
        raise IdentityError(f"{what} {path} holds no private key: export the bundle with its key")
    key = _check_key(bundle.key, path, what)
    certs = [bundle.cert.certificate] if bundle.cert is not None else []
    certs += [c.certificate for c in bundle.additional_certs]
    leaf = next((c for c in certs if _matches(key, c)), None)
    if leaf is None:
        raise IdentityError(
            f"{what} {path} holds no certificate matching its private key: "
            "export the bundle with the key's certificate"
        )
    _check_leaf(leaf, path)
    return leaf, key, [c for c in certs if c is not leaf]


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
        data, _ = _read(certificate, "PKCS#12 bundle", private=True)
        leaf, key, extra = _load_pkcs12(certificate, data, private_key, passphrase_file)
    else:
        data, st = _read(certificate, "certificate")
        parsed = _parse_certificates(data, certificate, "certificate")
        if parsed is None:
            if not _looks_like_pkcs12(data):
                raise IdentityError(
                    f"certificate {certificate} is neither a PEM or DER X.509 certificate nor a "
                    "PKCS#12 bundle: check the path and that the file is complete"
                )
            # Read before we knew it held a key: refuse it now, before the key is used.
            _refuse_exposed(certificate, "PKCS#12 bundle", st)
            leaf, key, extra = _load_pkcs12(certificate, data, private_key, passphrase_file)
        else:
            leaf, *extra = parsed
            if private_key is None:
                raise IdentityError(
                    f"certificate {certificate} comes without a key: set private_key, "
                    "or use a PKCS#12 bundle (.p12 or .pfx)"
                )
            _check_leaf(leaf, certificate)
            key = _load_private_key(private_key, passphrase_file)
            if not _matches(key, leaf):
                raise IdentityError(
                    f"private key {private_key} does not match certificate {certificate}"
                )

    if intermediates is not None:
        data, _ = _read(intermediates, "intermediates")
        bundle = _parse_certificates(data, intermediates, "intermediates")
        if bundle is None:
            raise IdentityError(
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
                    if isinstance(exc, IdentityError)
                    else IdentityError(
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

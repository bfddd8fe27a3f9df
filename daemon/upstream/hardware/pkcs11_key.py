"""A private key on a PKCS#11 token (smart card, YubiKey PIV, HSM, SoftHSM) as a HardwareKey.

RSA signs with CKM_SHA256_RSA_PKCS (the token hashes), EC with CKM_ECDSA over a SHA-256 digest
computed here (tokens rarely offer CKM_ECDSA_SHA256), turning the raw r||s into DER. Keys marked
CKA_ALWAYS_AUTHENTICATE (PIV's signature slot) get a context-specific login before each sign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.types import SignMixin

from credential_sidecar.config.pkcs11_uri import Pkcs11Uri, parse
from credential_sidecar.upstream.hardware import pkcs11_token as tokens
from credential_sidecar.upstream.hardware.base import PublicKey, Secret, read_secret_file
from credential_sidecar.upstream.hardware.pkcs11_token import PinError, Pkcs11Error

# DER of the namedCurve OIDs in CKA_EC_PARAMS.
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
}


class KeyNotFoundError(Pkcs11Error):
    """No (or more than one) private key matches; the message lists the keys that exist."""


class CertificateNotFoundError(Pkcs11Error):
    """No certificate on the token matches the key or the URI."""


def _attr(obj: pkcs11.Object, attr: Attribute) -> Any:
    try:
        return obj[attr]
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return None


def _describe_object(obj: pkcs11.Object) -> str:
    kinds = {ObjectClass.PRIVATE_KEY: "private key", ObjectClass.CERTIFICATE: "certificate",
             ObjectClass.PUBLIC_KEY: "public key"}
    kind = kinds.get(_attr(obj, Attribute.CLASS), "object")
    ident = _attr(obj, Attribute.ID) or b""
    return f"{kind} object={_attr(obj, Attribute.LABEL) or ''!r} id={ident.hex() or '-'}"


def _search(uri: Pkcs11Uri, cls: ObjectClass) -> dict[Attribute, Any]:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: cls}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    return attrs


def _listing(session: pkcs11.Session) -> str:
    found = [
        _describe_object(o)
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.CERTIFICATE)
        for o in session.get_objects({Attribute.CLASS: cls})
    ]
    return "; ".join(found) or "no keys or certificates"


def public_key_from_object(obj: pkcs11.Object) -> PublicKey | None:
    """RSA private key objects carry the public numbers; EC ones need the public object."""
    if _attr(obj, Attribute.KEY_TYPE) == KeyType.RSA:
        n, e = _attr(obj, Attribute.MODULUS), _attr(obj, Attribute.PUBLIC_EXPONENT)
        if n and e:
            return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")) \
                .public_key()
        return None
    params, point = _attr(obj, Attribute.EC_PARAMS), _attr(obj, Attribute.EC_POINT)
    if not params or not point or bytes(params) not in _CURVES:
        return None
    curve = _CURVES[bytes(params)]
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, _ec_point(bytes(point), curve))


def _ec_point(value: bytes, curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING by the spec, but some tokens return the bare point."""
    size = 1 + 2 * ((curve.key_size + 7) // 8)
    if len(value) == size + 2 and value[:2] == bytes((0x04, size)):
        return value[2:]
    if len(value) == size + 3 and value[:3] == bytes((0x04, 0x81, size)):
        return value[3:]
    return value


class Pkcs11Key:
    """A private key on a token; ``sign`` blocks, so run it in an executor."""

    def __init__(self, uri: str | Pkcs11Uri, *, module: Path | None = None,
                 pin_file: Path | None = None) -> None:
        self.uri = parse(uri) if isinstance(uri, str) else uri
        if self.uri.type not in (None, "private"):
            raise Pkcs11Error(f"{self.uri} names a {self.uri.type}, not a private key")
        self.uri = self.uri.with_type("private")
        pin_path = self.uri.pin_source or pin_file
        pin: Secret | None = None
        if pin_path is not None:
            pin = read_secret_file(pin_path, "PIN file")
            try:
                pin.reveal_text()
            except UnicodeDecodeError:
                raise PinError(f"PIN file {pin_path} is not UTF-8 text") from None
        self._module = tokens.load_module(tokens.resolve_module(module, self.uri))
        self._token = tokens.acquire(self._module, self.uri, pin)
        self._pin = pin
        self._closed = False
        self._handle: tuple[int, SignMixin] | None = None
        self._public: PublicKey | None = None
        self._key_id: bytes = b""
        self._always_auth = False
        try:
            self._token.run(self.uri, self._load)
        except BaseException:
            tokens.release(self._token)
            raise

    def describe(self) -> str:
        what = f"object '{self.uri.object}'" if self.uri.object else f"id {self.uri.id!r}"
        return f"pkcs11 {self._token.name} {what}"

    def _find(self, session: pkcs11.Session) -> SignMixin:
        if self._handle is not None and self._handle[0] == self._token.generation:
            return self._handle[1]
        if self.uri.object is None and self.uri.id is None:
            found: list[pkcs11.Object] = []
        else:
            found = list(session.get_objects(_search(self.uri, ObjectClass.PRIVATE_KEY)))
        if len(found) != 1:
            what = "no private key" if not found else f"{len(found)} private keys"
            raise KeyNotFoundError(
                f"{what} on {self._token.name} matches {self.uri}; the token has: "
                f"{_listing(session)}. Set object= (label) and/or id= in the URI"
            )
        key = found[0]
        if not isinstance(key, SignMixin):
            raise KeyNotFoundError(f"{self.uri} is not a signing key")
        self._handle = (self._token.generation, key)
        return key

    def _load(self, session: pkcs11.Session) -> None:
        key = self._find(session)
        self._key_id = bytes(_attr(key, Attribute.ID) or b"")
        self._always_auth = bool(_attr(key, Attribute.ALWAYS_AUTHENTICATE))
        if self._always_auth and self._pin is None:
            raise PinError(f"{self.describe()} needs a PIN before every signature "
                           "(CKA_ALWAYS_AUTHENTICATE): add pin-source=file:/path to the URI")
        public = public_key_from_object(key)
        if public is None and self._key_id:
            pubs = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                             Attribute.ID: self._key_id}))
            public = public_key_from_object(pubs[0]) if len(pubs) == 1 else None
        if public is None:
            cert = self._certificate(session, None)
            cert_public = cert.public_key()
            if not isinstance(cert_public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise Pkcs11Error(f"{self.describe()}: unsupported key type")
            public = cert_public
        if isinstance(public, ec.EllipticCurvePublicKey) and \
                public.curve.name not in ("secp256r1", "secp384r1"):
            raise Pkcs11Error(f"{self.describe()}: curve {public.curve.name}: use P-256 or P-384")
        self._public = public

    def public_key(self) -> PublicKey:
        assert self._public is not None
        return self._public

    def _sign_op(self, data: bytes) -> Callable[[pkcs11.Session], bytes]:
        def op(session: pkcs11.Session) -> bytes:
            key = self._find(session)
            pin = self._pin.reveal_text() if self._always_auth and self._pin else None
            if isinstance(self._public, rsa.RSAPublicKey):
                return bytes(key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS, pin=pin))
            raw = key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA, pin=pin)
            half = len(raw) // 2
            return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                        int.from_bytes(raw[half:], "big"))
        return op

    def sign(self, data: bytes) -> bytes:
        """PKCS#1 v1.5 SHA-256 (RSA) or DER ECDSA-SHA256 (EC); blocking."""
        if self._closed:
            raise Pkcs11Error(f"{self.describe()} is closed")
        return self._token.run(self.uri, self._sign_op(data))

    def _certificate(self, session: pkcs11.Session, uri: Pkcs11Uri | None) -> x509.Certificate:
        if uri is not None:
            attrs = _search(uri, ObjectClass.CERTIFICATE)
        elif self._key_id:
            attrs = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: self._key_id}
        else:
            attrs = _search(self.uri, ObjectClass.CERTIFICATE)
        found = list(session.get_objects(attrs))
        if len(found) != 1:
            wanted = uri.with_type("cert") if uri else f"the key's CKA_ID {self._key_id.hex()}"
            raise CertificateNotFoundError(
                f"{'no' if not found else len(found)} certificate(s) on {self._token.name} "
                f"match {wanted}; the token has: {_listing(session)}. Import the certificate "
                "(pkcs11-tool --write-object cert.der --type cert --id ...) or configure a file"
            )
        return x509.load_der_x509_certificate(bytes(found[0][Attribute.VALUE]))

    def certificate(self, uri: str | Pkcs11Uri | None = None) -> x509.Certificate:
        """The certificate named by ``uri`` (type=cert), else the one sharing the key's CKA_ID."""
        parsed = parse(uri) if isinstance(uri, str) else uri
        return self._token.run(self.uri, lambda s: self._certificate(s, parsed))

    def token_certificates(self) -> list[x509.Certificate]:
        """Every certificate on the token: candidates for chain.select_chain."""
        def op(session: pkcs11.Session) -> list[x509.Certificate]:
            objs = session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})
            return [x509.load_der_x509_certificate(bytes(o[Attribute.VALUE])) for o in objs]
        return self._token.run(self.uri, op)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._handle = None
            tokens.release(self._token)

    def __repr__(self) -> str:
        return f"<Pkcs11Key {self.uri}>"

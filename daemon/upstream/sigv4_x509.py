"""SigV4-X509: SigV4's canonical request, signed with a certificate's private key.

The canonical request and string to sign are shared with the emulator, which
recomputes them to verify what the daemon sends.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credential_sidecar.upstream.hardware.base import HardwareKey

RSA_ALGORITHM = "AWS4-X509-RSA-SHA256"
EC_ALGORITHM = "AWS4-X509-ECDSA-SHA256"
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
# A key in a file (cryptography) or one that never leaves a token or TPM (blocking sign()).
AnyKey = SigningKey | HardwareKey


def algorithm_for(key: object) -> str:
    """The algorithm name for a private or public key (RSA or EC), or a hardware key."""
    if isinstance(key, HardwareKey):
        key = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return RSA_ALGORITHM
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return EC_ALGORITHM
    raise ValueError(f"unsupported key type {type(key).__name__}: use RSA or EC (P-256, P-384)")


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def amz_date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port != default:
        return f"{host}:{parts.port}"
    return host


_QUERY_SAFE = "-_.~"


def canonical_query(query: str) -> str:
    """SigV4's canonical query string from a URL's query, which is already percent-encoded.

    Split on ``&`` and the first ``=``; decode each name and value once (``unquote``, not
    ``unquote_plus``: in SigV4 a ``+`` is a literal plus and a space is sent as ``%20``);
    encode once, unreserved characters ``A-Za-z0-9-_.~`` as they are; sort by encoded name,
    then value; an item without ``=`` is ``name=``; empty items are skipped. (Quoting the raw
    query instead encoded it twice: ``arn%3Aaws`` became ``arn%253Aaws``.) Matches botocore's
    ``SigV4Auth._canonical_query_string_params``.
    """
    pairs: list[tuple[str, str]] = []
    for item in query.split("&") if query else ():
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs.append(
            (
                quote(unquote(key, errors="surrogateescape"), safe=_QUERY_SAFE),
                quote(unquote(value, errors="surrogateescape"), safe=_QUERY_SAFE),
            )
        )
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def encode_query(params: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    """A URL query from decoded parameters, encoded exactly as SigV4 canonicalises it.

    Send this rather than ``urlencode`` (which writes a space as ``+``): the query on the wire
    then equals its canonical form.
    """
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    return "&".join(f"{quote(k, safe=_QUERY_SAFE)}={quote(v, safe=_QUERY_SAFE)}" for k, v in items)


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """The ``name:value`` block and the signed-headers list, names lowercased and sorted."""
    folded: dict[str, str] = {}
    for name, value in headers.items():
        folded[name.strip().lower()] = " ".join(str(value).split())
    names = sorted(folded)
    block = "".join(f"{n}:{folded[n]}\n" for n in names)
    return block, ";".join(names)


def canonical_request(
    method: str, url: str, signed_headers: Mapping[str, str], body: bytes
) -> tuple[str, str]:
    """Return (canonical request, signed header names)."""
    parts = urlsplit(url)
    path = quote(parts.path or "/", safe="/-_.~")
    block, names = canonical_headers(signed_headers)
    payload_hash = hashlib.sha256(body).hexdigest()
    text = "\n".join(
        [method.upper(), path, canonical_query(parts.query), block, names, payload_hash]
    )
    return text, names


def credential_scope(when: datetime, region: str, service: str) -> str:
    return f"{when.astimezone(UTC):%Y%m%d}/{region}/{service}/aws4_request"


def string_to_sign(algorithm: str, when: datetime, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return "\n".join([algorithm, amz_date(when), scope, digest])


@dataclass(frozen=True)
class SignedRequest:
    headers: dict[str, str]
    canonical_request: str
    string_to_sign: str


def sign_bytes(key: AnyKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data)  # HardwareKey: same formats, computed on the device (blocking)


def sign_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
    service: str,
    when: datetime,
    certificate: x509.Certificate,
    private_key: AnyKey,
    chain: Sequence[x509.Certificate] = (),
) -> SignedRequest:
    """Sign one request; returns every header to send (the caller's plus the signing ones)."""
    algorithm = algorithm_for(private_key)
    out = dict(headers)
    out["Host"] = host_header(url)
    out["X-Amz-Date"] = amz_date(when)
    out["X-Amz-X509"] = der_b64(certificate)
    if chain:
        out["X-Amz-X509-Chain"] = ",".join(der_b64(c) for c in chain)
    canonical, names = canonical_request(method, url, out, body)
    scope = credential_scope(when, region, service)
    to_sign = string_to_sign(algorithm, when, scope, canonical)
    signature = sign_bytes(private_key, to_sign.encode("utf-8")).hex()
    out["Authorization"] = (
        f"{algorithm} Credential={certificate.serial_number}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    return SignedRequest(headers=out, canonical_request=canonical, string_to_sign=to_sign)

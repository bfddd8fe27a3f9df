"""What the emulator checks in a CreateSession request, as AWS does, and the errors it answers.

Authorization header, certificate binding, date and scope, the signature over the request as
received, the body, and the chain up to a trust anchor's CA: each check raises an ``ApiError``
in AWS's shape, so clients see the same codes and messages they would see from the service.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from multidict import CIMultiDictProxy

from credential_sidecar.arn import Arn
from credential_sidecar.config.values import MAX_ROLE_DURATION as MAX_DURATION
from credential_sidecar.config.values import MIN_DURATION, SESSION_NAME_RE
from credential_sidecar.devtools.emulator.errors import denied, invalid
from credential_sidecar.upstream import sigv4_x509

MAX_INTERMEDIATES = 5


REQUIRED_SIGNED_HEADERS = ("content-type", "host", "x-amz-date", "x-amz-x509")


CHAIN_HEADER = "x-amz-x509-chain"


_AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")


_AUTH_RE = re.compile(
    r"^(?P<alg>\S+) Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<names>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-fA-F]+)$"
)
















def resource_arn(text: str, service: str, kind: str) -> Arn:
    arn = Arn.parse(text)
    if arn.service != service or not arn.resource.startswith(f"{kind}/"):
        raise ValueError(f"not a {service} {kind} ARN: {text!r}")
    if service == "rolesanywhere" and not (arn.region and arn.account):
        raise ValueError(f"{kind} ARN needs a region and an account: {text!r}")
    return arn


@dataclass(frozen=True)
class Authorization:
    """The parsed ``Authorization`` header of a SigV4-X509 request."""

    algorithm: str
    serial: int
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: bytes


def parse_authorization(value: str | None) -> Authorization:
    """Parse ``ALG Credential=SERIAL/DATE/REGION/SERVICE/aws4_request, SignedHeaders=..,
    Signature=..``; anything else is refused as AWS refuses it (403)."""
    if not value:
        raise denied("Missing Authorization header")
    match = _AUTH_RE.match(value.strip())
    if not match:
        raise denied("Malformed Authorization header")
    algorithm = match["alg"]
    if algorithm not in (sigv4_x509.RSA_ALGORITHM, sigv4_x509.EC_ALGORITHM):
        raise denied(f"Unsupported signing algorithm {algorithm!r}")
    scope = match["cred"].split("/")
    if (
        len(scope) != 5
        or not scope[0].isdigit()
        or not re.fullmatch(r"\d{8}", scope[1])
        or scope[4] != "aws4_request"
    ):
        raise denied(
            "Malformed Authorization header: Credential must be "
            "<serial (decimal)>/<yyyymmdd>/<region>/<service>/aws4_request"
        )
    names = tuple(match["names"].lower().split(";"))
    try:
        signature = bytes.fromhex(match["sig"])
    except ValueError as exc:
        raise denied("Malformed Authorization header: Signature is not hex") from exc
    return Authorization(
        algorithm=algorithm,
        serial=int(scope[0]),
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=names,
        signature=signature,
    )


def _load_der_b64(value: str, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise denied(f"Malformed {what}: not base64 DER of an X.509 certificate") from exc


def parse_certificates(
    headers: Mapping[str, str],
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The leaf from ``X-Amz-X509`` and the intermediates from ``X-Amz-X509-Chain``."""
    leaf_value = headers.get("X-Amz-X509")
    if not leaf_value:
        raise denied("Missing X-Amz-X509 header")
    leaf = _load_der_b64(leaf_value, "X-Amz-X509 header")
    chain_value = headers.get("X-Amz-X509-Chain")
    chain: list[x509.Certificate] = []
    if chain_value is not None:
        items = chain_value.split(",")
        if len(items) > MAX_INTERMEDIATES:
            raise denied(f"X-Amz-X509-Chain carries more than {MAX_INTERMEDIATES} certificates")
        chain = [_load_der_b64(item, "X-Amz-X509-Chain header") for item in items]
    return leaf, chain


@dataclass(frozen=True)
class SessionRequest:
    """The validated CreateSession body."""

    trust_anchor_arn: str
    profile_arn: str
    role_arn: str
    duration_seconds: int
    role_session_name: str | None


def parse_body(body: bytes) -> SessionRequest:
    """Validate the JSON body as AWS does: required ARNs, duration 900..43200, session name."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid("Request body is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise invalid("Request body must be a JSON object")
    values: dict[str, str] = {}
    for key in ("trustAnchorArn", "profileArn", "roleArn"):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise invalid(f"1 validation error detected: {key} is required and must be a string")
        values[key] = value
    duration = doc.get("durationSeconds", DEFAULT_DURATION)
    if not isinstance(duration, int) or isinstance(duration, bool):
        raise invalid("durationSeconds must be an integer")
    if not MIN_DURATION <= duration <= MAX_DURATION:
        raise invalid(
            f"durationSeconds {duration} is out of range: "
            f"it must be between {MIN_DURATION} and {MAX_DURATION}"
        )
    session_name = doc.get("roleSessionName")
    if session_name is not None and (
        not isinstance(session_name, str) or not SESSION_NAME_RE.match(session_name)
    ):
        raise invalid(r"roleSessionName must match [\w+=,.@-]{2,64}")
    return SessionRequest(
        trust_anchor_arn=values["trustAnchorArn"],
        profile_arn=values["profileArn"],
        role_arn=values["roleArn"],
        duration_seconds=duration,
        role_session_name=session_name,
    )


def check_key_binding(auth: Authorization, leaf: x509.Certificate) -> None:
    """The Credential serial and the algorithm must name the certificate that was sent."""
    if auth.serial != leaf.serial_number:
        raise denied(
            f"Credential serial number {auth.serial} does not match the signing "
            f"certificate's serial number {leaf.serial_number}"
        )
    try:
        expected = sigv4_x509.algorithm_for(leaf.public_key())
    except ValueError as exc:
        raise denied("Unsupported signing certificate key type: use RSA or EC") from exc
    if auth.algorithm != expected:
        raise denied(
            f"Signing algorithm {auth.algorithm} does not match the signing certificate's "
            f"key (expected {expected})"
        )


def _amz(moment: datetime) -> str:
    return sigv4_x509.amz_date(moment)


def check_date_and_scope(
    headers: Mapping[str, str],
    auth: Authorization,
    now: datetime,
    max_skew: int,
    regions: frozenset[str],
) -> datetime:
    """``X-Amz-Date`` present, well formed, close to now and matching the credential scope."""
    value = headers.get("X-Amz-Date")
    if not value:
        raise denied("Missing X-Amz-Date header")
    if not _AMZ_DATE_RE.match(value):
        raise denied(f"X-Amz-Date {value!r} is not in the form YYYYMMDDTHHMMSSZ")
    try:
        when = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise denied(f"X-Amz-Date {value!r} is not a valid date") from exc
    skew = timedelta(seconds=max_skew)
    minutes = f"{max_skew / 60:g} min."
    if when < now - skew:
        raise denied(
            f"Signature expired: {value} is now earlier than {_amz(now - skew)} "
            f"({_amz(now)} - {minutes})"
        )
    if when > now + skew:
        raise denied(
            f"Signature not yet current: {value} is still later than {_amz(now + skew)} "
            f"({_amz(now)} + {minutes})"
        )
    if auth.date != value[:8]:
        raise denied(
            f"Date in Credential scope does not match YYYYMMDD from X-Amz-Date: "
            f"{auth.date} != {value[:8]}"
        )
    if auth.service != SERVICE:
        raise denied(f"Credential should be scoped to correct service: '{SERVICE}'")
    if auth.region not in regions:
        raise denied(f"Credential should be scoped to a valid region, not '{auth.region}'")
    return when


def signed_header_values(
    auth: Authorization, headers: CIMultiDictProxy[str]
) -> dict[str, str]:
    """The signed headers' values as received; the required set must be signed."""
    required = list(REQUIRED_SIGNED_HEADERS)
    if CHAIN_HEADER in headers:
        required.append(CHAIN_HEADER)
    missing = [name for name in required if name not in auth.signed_headers]
    if missing:
        raise denied(
            f"SignedHeaders must include {';'.join(required)} (missing {';'.join(missing)})"
        )
    values: dict[str, str] = {}
    for name in auth.signed_headers:
        received = headers.getall(name, [])
        if not received:
            raise denied(f"Signed header {name!r} is not present in the request")
        values[name] = ",".join(received)
    return values


def verify_signature(
    *,
    auth: Authorization,
    leaf: x509.Certificate,
    method: str,
    raw_path: str,
    header_values: Mapping[str, str],
    body: bytes,
    when: datetime,
) -> None:
    """Recompute the string to sign from the request as received; check it with the leaf key.

    ``raw_path`` is the request target as sent (path and query); the host in the URL handed
    to ``canonical_request`` is irrelevant because the ``host`` value comes from the headers.
    """
    canonical, _ = sigv4_x509.canonical_request(
        method, f"http://emulator.invalid{raw_path}", header_values, body
    )
    scope = sigv4_x509.credential_scope(when, auth.region, auth.service)
    data = sigv4_x509.string_to_sign(auth.algorithm, when, scope, canonical).encode("utf-8")
    public = leaf.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(auth.signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(auth.signature, data, ec.ECDSA(hashes.SHA256()))
        else:  # check_key_binding refuses other key types first
            raise denied("Invalid signature")
    except (InvalidSignature, ValueError) as exc:
        raise denied("Invalid signature") from exc


SERVICE = "rolesanywhere"


DEFAULT_DURATION = 3600


"""A local IAM Roles Anywhere ``CreateSession`` emulator.

Why it exists: users (and our own tests) need to exercise the whole SigV4-X509 path
offline. So the emulator verifies what AWS verifies -- the Authorization header, the
certificate binding, the date, the signature over the request as received, the body and
the certificate chain up to the trust anchor's CA -- and answers with AWS's error shapes
(``X-Amzn-ErrorType`` header, JSON ``{"message": ...}``). The credentials it issues are
random and fake: they work nowhere but prove which set a client received.

Command line (``credential-sidecar emulator ...`` or ``python -m daemon.emulator ...``)::

    --listen HOST:PORT        where to listen (default 127.0.0.1:8443, loopback; port 0 = any
                              free port; IPv6 as [::1]:8443)
    --ca FILE                 PEM file with one or more CA certificates the trust anchor trusts
                              (repeatable; required)
    --trust-anchor-arn ARN    the trust anchor's ARN; its region is the emulator's region (default
                              arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/emulator)
    --profile-arn ARN         the profile's ARN (default
                              arn:aws:rolesanywhere:us-east-1:111122223333:profile/emulator)
    --role-arn ARN            a role the profile allows (repeatable;
                              default arn:aws:iam::111122223333:role/emulator)
    --max-duration SECONDS    the profile's cap on durationSeconds (900..43200, default 43200)
    --port-file PATH          write the bound port there once listening (for port 0)

On start it prints one line to stdout, ``emulator listening on http://HOST:PORT``, and
serves until SIGINT or SIGTERM (exit 0; 2 for a bad option such as an unreadable CA file).

HTTP endpoints:

* ``POST /sessions`` -- CreateSession, verified as described in ``Emulator``.
* ``POST /_emulator/faults`` -- JSON object with any ``Faults`` fields (partial update;
  an unknown field or a wrong type is a 400); answers the faults now in force.
* ``GET /_emulator/faults`` -- the faults in force. ``DELETE /_emulator/faults`` -- clear all.
* ``GET /_emulator/stats`` -- ``{"calls", "succeeded", "failed", "issued": [credentials...],
  "faults"}``.

The control endpoints have no authentication: keep the emulator on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import signal
import string
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from multidict import CIMultiDictProxy

from daemon import signer
from daemon.arn import Arn
from daemon.clock import Clock, SystemClock, clock_from_env

log = structlog.get_logger("daemon.emulator")

SERVICE = "rolesanywhere"
MIN_DURATION = 900
MAX_DURATION = 43200
DEFAULT_DURATION = 3600
MAX_INTERMEDIATES = 5
REQUIRED_SIGNED_HEADERS = ("content-type", "host", "x-amz-date", "x-amz-x509")
CHAIN_HEADER = "x-amz-x509-chain"

DEFAULT_TRUST_ANCHOR_ARN = "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/emulator"
DEFAULT_PROFILE_ARN = "arn:aws:rolesanywhere:us-east-1:111122223333:profile/emulator"
DEFAULT_ROLE_ARN = "arn:aws:iam::111122223333:role/emulator"
DEFAULT_LISTEN = "127.0.0.1:8443"

_AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_AUTH_RE = re.compile(
    r"^(?P<alg>\S+) Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<names>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-fA-F]+)$"
)
_SESSION_NAME_RE = re.compile(r"^[\w+=,.@-]{2,64}$")
_KEY_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


# --------------------------------------------------------------------------- public types


@dataclass
class Profile:
    """What a Roles Anywhere profile decides: which roles, and how long a session may last."""

    role_arns: tuple[str, ...]
    max_duration_seconds: int = MAX_DURATION


@dataclass
class Faults:
    """Fault switches, mutable at runtime (directly or over ``/_emulator/faults``).

    Counts mean "the next N calls"; -1 means "until cleared". Why: clients must be
    proven against the failures the real service produces, in a controlled order.
    """

    fail_status: int = 0  # status for fail_count calls (0 = 500)
    fail_count: int = 0
    throttle_count: int = 0  # 429 ThrottlingException (+ Retry-After when retry_after is set)
    retry_after: float | None = None
    delay_seconds: float = 0.0  # sleep (via the clock) before answering every call
    malformed_count: int = 0  # 201 with a truncated, non-JSON body
    empty_count: int = 0  # 201 with an empty credentialSet
    deny_count: int = 0  # 403 AccessDeniedException

    def take(self, name: str) -> bool:
        """Consume one unit of a count fault; True when the fault fires for this call."""
        count = getattr(self, name)
        if count == 0:
            return False
        if count > 0:
            setattr(self, name, count - 1)
        return True

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update, validating every field first (all or nothing)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        for name, value in changes.items():
            _check_fault_value(name, value)
        for name, value in changes.items():
            setattr(self, name, value)


def _check_fault_value(name: str, value: Any) -> None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if name == "retry_after":
        if value is not None and not (is_number and math.isfinite(value) and value >= 0):
            raise ValueError("retry_after must be a number >= 0 or null")
    elif name == "delay_seconds":
        if not (is_number and math.isfinite(value) and value >= 0):
            raise ValueError("delay_seconds must be a number >= 0")
    elif name == "fail_status":
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError("fail_status must be an integer")
        if value != 0 and not 400 <= value <= 599:
            raise ValueError("fail_status must be 0 or an HTTP error status (400..599)")
    elif not (isinstance(value, int) and not isinstance(value, bool) and value >= -1):
        raise ValueError(f"{name} must be an integer >= -1 (-1 = until cleared)")


class ApiError(Exception):
    """An AWS-shaped error answer: status, ``X-Amzn-ErrorType`` and a message."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        headers = {"X-Amzn-ErrorType": self.error_type, **self.headers}
        return web.json_response({"message": self.message}, status=self.status, headers=headers)


def denied(message: str) -> ApiError:
    return ApiError(403, "AccessDeniedException", message)


def invalid(message: str) -> ApiError:
    return ApiError(400, "ValidationException", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message)


def untrusted(detail: str) -> ApiError:
    return denied(f"Untrusted signing certificate: {detail}")


_TYPE_FOR_STATUS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
}


def error_type_for(status: int) -> str:
    if status >= 500:
        return "InternalServerException"
    return _TYPE_FOR_STATUS.get(status, "ValidationException")


# --------------------------------------------------------------------------- ARNs


def _resource_arn(text: str, service: str, kind: str) -> Arn:
    arn = Arn.parse(text)
    if arn.service != service or not arn.resource.startswith(f"{kind}/"):
        raise ValueError(f"not a {service} {kind} ARN: {text!r}")
    if service == "rolesanywhere" and not (arn.region and arn.account):
        raise ValueError(f"{kind} ARN needs a region and an account: {text!r}")
    return arn


# --------------------------------------------------------------------------- request parsing


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
    if algorithm not in (signer.RSA_ALGORITHM, signer.EC_ALGORITHM):
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
        not isinstance(session_name, str) or not _SESSION_NAME_RE.match(session_name)
    ):
        raise invalid(r"roleSessionName must match [\w+=,.@-]{2,64}")
    return SessionRequest(
        trust_anchor_arn=values["trustAnchorArn"],
        profile_arn=values["profileArn"],
        role_arn=values["roleArn"],
        duration_seconds=duration,
        role_session_name=session_name,
    )


# --------------------------------------------------------------------------- verification


def check_key_binding(auth: Authorization, leaf: x509.Certificate) -> None:
    """The Credential serial and the algorithm must name the certificate that was sent."""
    if auth.serial != leaf.serial_number:
        raise denied(
            f"Credential serial number {auth.serial} does not match the signing "
            f"certificate's serial number {leaf.serial_number}"
        )
    try:
        expected = signer.algorithm_for(leaf.public_key())
    except ValueError as exc:
        raise denied("Unsupported signing certificate key type: use RSA or EC") from exc
    if auth.algorithm != expected:
        raise denied(
            f"Signing algorithm {auth.algorithm} does not match the signing certificate's "
            f"key (expected {expected})"
        )


def _amz(moment: datetime) -> str:
    return signer.amz_date(moment)


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
    canonical, _ = signer.canonical_request(
        method, f"http://emulator.invalid{raw_path}", header_values, body
    )
    scope = signer.credential_scope(when, auth.region, auth.service)
    data = signer.string_to_sign(auth.algorithm, when, scope, canonical).encode("utf-8")
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


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number}"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"is not yet valid (valid from {_stamp(cert.not_valid_before_utc)})"
    if now > cert.not_valid_after_utc:
        return f"has expired (not valid after {_stamp(cert.not_valid_after_utc)})"
    return None


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    with contextlib.suppress(x509.ExtensionNotFound):
        return cert.extensions.get_extension_for_class(kind).value
    return None


def _find_issuer(
    cert: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _check_ca(cert: x509.Certificate, below: int, now: datetime, role: str) -> None:
    """A CA on the path: valid now, a CA, allowed to sign, path length respected."""
    problem = _validity_problem(cert, now)
    if problem:
        raise untrusted(f"{role} '{_describe(cert)}' {problem}")
    constraints = _extension(cert, x509.BasicConstraints)
    if role == "intermediate" and (constraints is None or not constraints.ca):
        raise untrusted(f"intermediate '{_describe(cert)}' is not a CA certificate")
    if constraints is not None and constraints.path_length is not None:
        if below > constraints.path_length:
            raise untrusted(f"{role} '{_describe(cert)}' path length constraint exceeded")
    usage = _extension(cert, x509.KeyUsage)
    if role == "intermediate" and usage is not None and not usage.key_cert_sign:
        raise untrusted(f"intermediate '{_describe(cert)}' may not sign certificates")


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """Walk from the leaf through the sent intermediates to one of the trust anchor's CAs.

    A manual walk (rather than a TLS-oriented verifier) because Roles Anywhere's rules are
    simple and the failure messages should say which certificate is at fault.
    """
    problem = _validity_problem(leaf, now)
    if problem:
        raise denied(f"The signing certificate '{_describe(leaf)}' {problem}")
    constraints = _extension(leaf, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise untrusted("the signing certificate is a CA certificate (CA:TRUE)")
    usage = _extension(leaf, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise untrusted("the signing certificate's key usage lacks digitalSignature")
    current = leaf
    pool = list(intermediates)
    below = 0  # intermediates between the leaf and the issuer being looked for
    while True:
        root = _find_issuer(current, roots)
        if root is not None:
            _check_ca(root, below, now, "trust anchor CA")
            return
        issuer = _find_issuer(current, pool)
        if issuer is None:
            raise untrusted(
                f"no path from '{_describe(current)}' to a CA of the trust anchor "
                "(missing intermediate, or issued by another CA)"
            )
        _check_ca(issuer, below, now, "intermediate")
        pool.remove(issuer)  # each intermediate once: no loops
        current = issuer
        below += 1


# --------------------------------------------------------------------------- responses


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _stable_id(prefix: str, seed: str, length: int) -> str:
    """A deterministic AWS-style id (role ids are stable per role in AWS too)."""
    digest = base64.b32encode(hashlib.sha256(seed.encode()).digest()).decode()
    return prefix + digest.replace("=", "")[:length]


def new_credentials(access_key_prefix: str, expiration: datetime) -> dict[str, str]:
    """Fresh fake credentials: 20-character key id, 40-character secret, long token."""
    key_id_random = _random(_KEY_ALPHABET, max(0, 20 - len(access_key_prefix)))
    return {
        "accessKeyId": access_key_prefix + key_id_random,
        "secretAccessKey": _random(_SECRET_ALPHABET, 40),
        "sessionToken": base64.b64encode(secrets.token_bytes(384)).decode("ascii"),
        "expiration": _stamp(expiration),
    }


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return f"CN={names[0].value!s}"
    return cert.subject.rfc4514_string()


def build_session(
    *,
    request: SessionRequest,
    leaf: x509.Certificate,
    anchor: Arn,
    credentials: dict[str, str],
) -> dict[str, Any]:
    """The 201 body, shaped as AWS returns it."""
    role = Arn.parse(request.role_arn)
    role_name = role.resource.rsplit("/", 1)[-1]
    session = request.role_session_name or format(leaf.serial_number, "x")
    role_id = _stable_id("AROA", request.role_arn, 17)
    subject_id = uuid.uuid5(
        uuid.NAMESPACE_URL, f"{anchor.region}:{anchor.account}:{leaf.subject.rfc4514_string()}"
    )
    return {
        "credentialSet": [
            {
                "assumedRoleUser": {
                    "arn": f"arn:{role.partition}:sts::{role.account}:assumed-role/"
                    f"{role_name}/{session}",
                    "assumedRoleId": f"{role_id}:{session}",
                },
                "credentials": credentials,
                "packedPolicySize": 0,
                "roleArn": request.role_arn,
                "sourceIdentity": _common_name(leaf),
            }
        ],
        "subjectArn": f"arn:{anchor.partition}:rolesanywhere:{anchor.region}:{anchor.account}:"
        f"subject/{subject_id}",
    }


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class _TrustAnchor:
    arn: Arn
    certificates: tuple[x509.Certificate, ...]


class Emulator:
    """CreateSession as AWS checks it, with fault switches, on an aiohttp server.

    Checks, in order: faults (delay, throttle, fail_status, deny); the Authorization
    header; the certificates; serial and algorithm against the leaf; X-Amz-Date and the
    credential scope; the signed-header set and the signature; the body (400s); the
    trust anchor (404); the chain to that trust anchor's CAs (403); the profile (404), the
    role (403) and the profile's duration cap (400); then malformed/empty faults.
    The chain is checked before the profile and role so that an unauthenticated caller
    learns nothing about which profiles and roles exist.
    """

    def __init__(
        self,
        *,
        trust_anchors: dict[str, list[x509.Certificate]],
        profiles: dict[str, Profile],
        clock: Clock | None = None,
        max_skew_seconds: int = 300,
        access_key_prefix: str = "ASIA",
    ) -> None:
        if not trust_anchors:
            raise ValueError("the emulator needs at least one trust anchor")
        self._anchors: dict[str, _TrustAnchor] = {}
        for arn_text, certs in trust_anchors.items():
            if not certs:
                raise ValueError(f"trust anchor {arn_text} has no CA certificate")
            arn = _resource_arn(arn_text, "rolesanywhere", "trust-anchor")
            self._anchors[arn_text] = _TrustAnchor(arn=arn, certificates=tuple(certs))
        for arn_text, profile in profiles.items():
            _resource_arn(arn_text, "rolesanywhere", "profile")
            for role in profile.role_arns:
                try:
                    _resource_arn(role, "iam", "role")
                except ValueError as exc:
                    raise ValueError(f"profile {arn_text}: bad role ARN: {exc}") from exc
            if not MIN_DURATION <= profile.max_duration_seconds <= MAX_DURATION:
                raise ValueError(
                    f"profile {arn_text}: max_duration_seconds must be "
                    f"{MIN_DURATION}..{MAX_DURATION}"
                )
        self._profiles = dict(profiles)
        self._regions = frozenset(a.arn.region for a in self._anchors.values())
        self.clock: Clock = clock or SystemClock()
        self.max_skew_seconds = max_skew_seconds
        self.access_key_prefix = access_key_prefix
        self.faults = Faults()
        self.calls = 0
        self.succeeded = 0
        self.failed = 0
        self.issued: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_post("/sessions", self._handle_sessions)
        self.app.router.add_get("/_emulator/faults", self._handle_get_faults)
        self.app.router.add_post("/_emulator/faults", self._handle_set_faults)
        self.app.router.add_delete("/_emulator/faults", self._handle_reset_faults)
        self.app.router.add_get("/_emulator/stats", self._handle_stats)

    # -- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; returns the base URL (the real port when ``port`` is 0)."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- CreateSession

    async def _handle_sessions(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        try:
            body = await request.read()
            await self._faults_before()
            document = self._create_session(request, body)
            response = self._answer(document)
        except ApiError as err:
            self.failed += 1
            log.info("emulator.session", status=err.status, error=err.error_type,
                     message=err.message)
            return err.response()
        return response

    async def _faults_before(self) -> None:
        faults = self.faults
        if faults.delay_seconds > 0:
            await self.clock.sleep(faults.delay_seconds)
        if faults.take("throttle_count"):
            headers = {}
            if faults.retry_after is not None:
                headers["Retry-After"] = f"{faults.retry_after:g}"
            raise ApiError(429, "ThrottlingException", "Rate exceeded", headers)
        if faults.take("fail_count"):
            status = faults.fail_status or 500
            kind = error_type_for(status)
            message = (
                "An internal error occurred (emulated fault)"
                if status >= 500
                else f"{kind} (emulated fault)"
            )
            raise ApiError(status, kind, message)
        if faults.take("deny_count"):
            raise denied("Access denied (emulated fault)")

    def _create_session(self, request: web.Request, body: bytes) -> dict[str, Any]:
        """Verify the request as AWS does; returns the success document."""
        now = datetime.fromtimestamp(self.clock.time(), tz=UTC)
        headers = request.headers
        auth = parse_authorization(headers.get("Authorization"))
        leaf, chain = parse_certificates(headers)
        check_key_binding(auth, leaf)
        when = check_date_and_scope(headers, auth, now, self.max_skew_seconds, self._regions)
        verify_signature(
            auth=auth,
            leaf=leaf,
            method=request.method,
            raw_path=request.raw_path,
            header_values=signed_header_values(auth, headers),
            body=body,
            when=when,
        )
        wanted = parse_body(body)
        anchor = self._anchors.get(wanted.trust_anchor_arn)
        if anchor is None or anchor.arn.region != auth.region:
            raise not_found(f"Trust anchor {wanted.trust_anchor_arn} not found")
        verify_chain(leaf, chain, anchor.certificates, now)
        profile = self._profiles.get(wanted.profile_arn)
        if profile is None or Arn.parse(wanted.profile_arn).region != auth.region:
            raise not_found(f"Profile {wanted.profile_arn} not found")
        if wanted.role_arn not in profile.role_arns:
            raise denied(f"Role {wanted.role_arn} is not allowed by profile {wanted.profile_arn}")
        if wanted.duration_seconds > profile.max_duration_seconds:
            raise invalid(
                f"durationSeconds {wanted.duration_seconds} exceeds the profile's maximum "
                f"of {profile.max_duration_seconds}"
            )
        expiration = now + timedelta(seconds=wanted.duration_seconds)
        credentials = new_credentials(self.access_key_prefix, expiration)
        return build_session(
            request=wanted, leaf=leaf, anchor=anchor.arn, credentials=credentials
        )

    def _answer(self, document: dict[str, Any]) -> web.Response:
        """Apply the after-verification faults, or record and send the credentials."""
        if self.faults.take("malformed_count"):
            self.failed += 1
            text = json.dumps(document)
            log.info("emulator.session", status=201, fault="malformed")
            return web.Response(
                status=201, text=text[: len(text) // 2], content_type="application/json"
            )
        if self.faults.take("empty_count"):
            self.failed += 1
            document["credentialSet"] = []
            log.info("emulator.session", status=201, fault="empty")
            return web.json_response(document, status=201)
        entry = document["credentialSet"][0]
        self.issued.append(dict(entry["credentials"]))
        self.succeeded += 1
        log.info(
            "emulator.session",
            status=201,
            role=entry["roleArn"],
            access_key_id=entry["credentials"]["accessKeyId"],
            expiration=entry["credentials"]["expiration"],
        )
        return web.json_response(document, status=201)

    # -- control endpoints

    async def _handle_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def _handle_set_faults(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
        except (UnicodeDecodeError, ValueError):
            return ApiError(400, "ValidationException", "body must be a JSON object").response()
        if not isinstance(changes, dict):
            return ApiError(400, "ValidationException", "body must be a JSON object").response()
        try:
            self.faults.update(changes)
        except ValueError as exc:
            return ApiError(400, "ValidationException", str(exc)).response()
        log.info("emulator.faults", **asdict(self.faults))
        return web.json_response(asdict(self.faults))

    async def _handle_reset_faults(self, request: web.Request) -> web.Response:
        self.faults.update(asdict(Faults()))  # in place: holders of .faults see the reset
        return web.json_response(asdict(self.faults))

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": self.calls,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "issued": self.issued,
                "faults": asdict(self.faults),
            }
        )


# --------------------------------------------------------------------------- command line


def _duration(text: str) -> int:
    value = int(text)
    if not MIN_DURATION <= value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be between {MIN_DURATION} and {MAX_DURATION}")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options (the CLI mounts this as ``credential-sidecar emulator``)."""
    parser.description = (
        "Run a local IAM Roles Anywhere CreateSession emulator that verifies SigV4-X509 "
        "signatures and certificate chains like AWS and issues fake credentials. "
        "Faults are driven over POST/DELETE /_emulator/faults; GET /_emulator/stats "
        "lists what was issued."
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, type=_listen, metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    parser.add_argument(
        "--ca", action="append", required=True, type=Path, metavar="FILE", dest="ca",
        help="PEM file of CA certificate(s) the trust anchor trusts (repeatable)",
    )
    parser.add_argument(
        "--trust-anchor-arn", default=DEFAULT_TRUST_ANCHOR_ARN, metavar="ARN",
        help=f"trust anchor ARN; its region is the emulator's region "
        f"(default {DEFAULT_TRUST_ANCHOR_ARN})",
    )
    parser.add_argument(
        "--profile-arn", default=DEFAULT_PROFILE_ARN, metavar="ARN",
        help=f"profile ARN (default {DEFAULT_PROFILE_ARN})",
    )
    parser.add_argument(
        "--role-arn", action="append", default=None, metavar="ARN", dest="role_arns",
        help=f"role ARN the profile allows (repeatable; default {DEFAULT_ROLE_ARN})",
    )
    parser.add_argument(
        "--max-duration", type=_duration, default=MAX_DURATION, metavar="SECONDS",
        help=f"the profile's maximum durationSeconds (default {MAX_DURATION})",
    )
    parser.add_argument(
        "--port-file", type=Path, default=None, metavar="PATH",
        help="write the bound port to PATH once listening (useful with port 0)",
    )


def emulator_from_args(args: argparse.Namespace, clock: Clock | None = None) -> Emulator:
    """Build the emulator the options describe; ValueError/OSError for bad options."""
    cas: list[x509.Certificate] = []
    for path in args.ca:
        found = x509.load_pem_x509_certificates(Path(path).read_bytes())
        cas.extend(found)
    profile = Profile(
        role_arns=tuple(args.role_arns or [DEFAULT_ROLE_ARN]),
        max_duration_seconds=args.max_duration,
    )
    return Emulator(
        trust_anchors={args.trust_anchor_arn: cas},
        profiles={args.profile_arn: profile},
        clock=clock,
    )


def _write_port_file(path: Path, port: int) -> None:
    """Write atomically so a poller never reads a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 for bad options."""
    try:
        emulator = emulator_from_args(args, clock=clock_from_env())
        host, port = parse_listen(args.listen)
    except (OSError, ValueError) as exc:
        print(f"credential-sidecar emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        url = await emulator.start(host, port)
    except OSError as exc:
        print(f"credential-sidecar emulator: cannot listen on {args.listen}: {exc}",
              file=sys.stderr, flush=True)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        if args.port_file is not None:
            _write_port_file(Path(args.port_file), int(url.rsplit(":", 1)[1]))
        print(
            f"trust anchor {args.trust_anchor_arn}, profile {args.profile_arn}, roles "
            f"{', '.join(args.role_arns or [DEFAULT_ROLE_ARN])}",
            file=sys.stderr, flush=True,
        )
        print(f"emulator listening on {url}", flush=True)
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await emulator.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.emulator``: logs go to stderr so stdout holds only the ready line."""
    parser = argparse.ArgumentParser(prog="credential-sidecar emulator")
    configure_parser(parser)
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())

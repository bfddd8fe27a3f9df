"""The certificate chain check: the leaf, through the intermediates sent, up to a trust anchor's CA.

Dates, CA flags, path lengths and signatures, each failure named the way AWS names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from credential_sidecar.devtools.emulator.errors import denied, untrusted


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number}"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"is not yet valid (valid from {stamp(cert.not_valid_before_utc)})"
    if now > cert.not_valid_after_utc:
        return f"has expired (not valid after {stamp(cert.not_valid_after_utc)})"
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


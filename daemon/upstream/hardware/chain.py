"""Pick the intermediates that chain a leaf to its trust anchor out of a pile of certificates.

A token often holds certificates that have nothing to do with our key (other users', old
CAs, a cross-signed copy). Sending them in X-Amz-X509-Chain at best wastes bytes and at worst
makes Roles Anywhere reject the request, so only certificates that provably issued the next
link (issuer/subject match and a verifying signature) are kept, leaf-side first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from credential_sidecar.upstream.hardware.base import HardwareKeyError

MAX_DEPTH = 8  # Roles Anywhere accepts at most a few intermediates; this only bounds the search


class ChainError(HardwareKeyError):
    """No chain from the leaf reaches the configured trust anchor."""


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Names match and ``issuer``'s key verifies ``child``'s signature."""
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer and issued_by(cert, cert)


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number}"


def select_chain(
    leaf: x509.Certificate,
    candidates: Iterable[x509.Certificate],
    anchor: x509.Certificate | None = None,
) -> list[x509.Certificate]:
    """Intermediates from ``leaf`` toward ``anchor``, in order; never the leaf or the anchor.

    Without an anchor, the longest verified path is returned (stopping at a self-signed root,
    which is left out: Roles Anywhere has it as the trust anchor). With an anchor, the path must
    end at a certificate the anchor issued, else ChainError names where it stopped.
    """
    pool: list[x509.Certificate] = []
    seen = {_der(leaf)} | ({_der(anchor)} if anchor is not None else set())
    for cert in candidates:
        der = _der(cert)
        if der not in seen and not _self_signed(cert):
            seen.add(der)
            pool.append(cert)

    if anchor is None:
        return _longest(leaf, pool, [])
    found = _to_anchor(leaf, pool, anchor, [])
    if found is not None:
        return found
    raise ChainError(
        f"no chain from certificate {_describe(leaf)} (issuer {leaf.issuer.rfc4514_string()}) "
        f"to trust anchor {_describe(anchor)} among {len(pool)} candidate certificate(s); "
        "add the missing intermediate (chain file or token) or check the anchor"
    )


def _to_anchor(
    current: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchor: x509.Certificate,
    path: list[x509.Certificate],
) -> list[x509.Certificate] | None:
    """Depth-first: the first path whose last link the anchor issued, or None."""
    if issued_by(current, anchor):
        return path
    if len(path) >= MAX_DEPTH:
        return None
    for cand in pool:
        if cand not in path and issued_by(current, cand):
            found = _to_anchor(cand, pool, anchor, [*path, cand])
            if found is not None:
                return found
    return None


def _longest(
    current: x509.Certificate, pool: Sequence[x509.Certificate], path: list[x509.Certificate]
) -> list[x509.Certificate]:
    """With no anchor to aim at, the longest verified path wins (it reaches furthest up)."""
    best = path
    if len(path) >= MAX_DEPTH:
        return best
    for cand in pool:
        if cand not in path and issued_by(current, cand):
            found = _longest(cand, pool, [*path, cand])
            if len(found) > len(best):
                best = found
    return best

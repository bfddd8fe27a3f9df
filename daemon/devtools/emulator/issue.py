"""What a successful CreateSession answers: fresh random credentials in AWS's response shape."""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
import uuid
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from credential_sidecar.arn import Arn
from credential_sidecar.devtools.emulator.chain import stamp
from credential_sidecar.devtools.emulator.verify import SessionRequest

_KEY_ALPHABET = string.ascii_uppercase + string.digits


_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


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
        "expiration": stamp(expiration),
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


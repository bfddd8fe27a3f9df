"""The Roles Anywhere emulator verifies what AWS verifies, over real HTTP.

Requests are signed by ``daemon.signer`` (proven against an external vector), so a
201 here means the emulator's verification agrees with a correct signer, and each
refusal test changes exactly one thing a real attacker or a buggy client could.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from credential_sidecar.clock import utc
from credential_sidecar.devtools import pki
from credential_sidecar.devtools.emulator.cli import (
    DEFAULT_PROFILE_ARN,
    DEFAULT_ROLE_ARN,
    DEFAULT_TRUST_ANCHOR_ARN,
    configure_parser,
    run,
)
from credential_sidecar.devtools.emulator.faults import Faults
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.testing import FakeClock
from credential_sidecar.upstream import sigv4_x509

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "111122223333"
TA = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/ta-main"
TA_OTHER = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/ta-other"
PROFILE = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:profile/p-main"
SHORT_PROFILE = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:profile/p-short"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/team/reports"
OTHER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/admin"

Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


@dataclass(frozen=True)
class Certs:
    root_rsa: pki.Issued
    root_ec: pki.Issued
    other_anchor_ca: pki.Issued  # trusted by TA_OTHER only
    stranger_ca: pki.Issued  # trusted by nobody
    intermediate: pki.Issued
    leaf_rsa: pki.Issued
    leaf_p256: pki.Issued
    leaf_p384: pki.Issued
    leaf_via_intermediate: pki.Issued
    leaf_other_anchor: pki.Issued
    leaf_stranger: pki.Issued
    leaf_expired: pki.Issued
    leaf_not_yet_valid: pki.Issued
    leaf_under_leaf: pki.Issued  # "issued" by leaf_p256, which is not a CA


@pytest.fixture(scope="module")
def certs() -> Certs:
    now = datetime.now(UTC)
    root_rsa = pki.make_ca("Root RSA", "rsa")
    root_ec = pki.make_ca("Root EC", "p256")
    other = pki.make_ca("Other anchor CA", "p256")
    stranger = pki.make_ca("Stranger CA", "p256")
    intermediate = pki.make_intermediate(root_ec, "Issuing CA", "p384")
    leaf_p256 = pki.make_leaf(root_ec, "host-p256", "p256")
    return Certs(
        root_rsa=root_rsa,
        root_ec=root_ec,
        other_anchor_ca=other,
        stranger_ca=stranger,
        intermediate=intermediate,
        leaf_rsa=pki.make_leaf(root_rsa, "host-rsa", "rsa"),
        leaf_p256=leaf_p256,
        leaf_p384=pki.make_leaf(root_ec, "host-p384", "p384"),
        leaf_via_intermediate=pki.make_leaf(intermediate, "host-chained", "p256"),
        leaf_other_anchor=pki.make_leaf(other, "host-other", "p256"),
        leaf_stranger=pki.make_leaf(stranger, "host-stranger", "p256"),
        leaf_expired=pki.make_leaf(
            root_ec, "host-expired", "p256",
            not_before=now - timedelta(days=30), not_after=now - timedelta(days=1),
        ),
        leaf_not_yet_valid=pki.make_leaf(
            root_ec, "host-future", "p256",
            not_before=now + timedelta(days=1), not_after=now + timedelta(days=30),
        ),
        leaf_under_leaf=pki.make_leaf(leaf_p256, "host-under-leaf", "p256"),
    )


class RecordingClock(FakeClock):
    """A FakeClock that tells the test when someone started sleeping on it."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await super().sleep(seconds)


@pytest.fixture
def clock() -> RecordingClock:
    # Near real time, because the throwaway certificates are valid around real now.
    return RecordingClock(start=float(int(time.time())))


@pytest.fixture
async def emu(certs: Certs, clock: RecordingClock) -> AsyncIterator[Emulator]:
    emulator = Emulator(
        trust_anchors={
            TA: [certs.root_rsa.certificate, certs.root_ec.certificate],
            TA_OTHER: [certs.other_anchor_ca.certificate],
        },
        profiles={
            PROFILE: Profile(role_arns=(ROLE,)),
            SHORT_PROFILE: Profile(role_arns=(ROLE,), max_duration_seconds=1800),
        },
        clock=clock,
    )
    await emulator.start("127.0.0.1", 0)
    yield emulator
    await emulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def session_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "trustAnchorArn": TA,
        "profileArn": PROFILE,
        "roleArn": ROLE,
        "durationSeconds": 3600,
        "roleSessionName": "host-1",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def send_signed(
    http: aiohttp.ClientSession,
    base_url: str,
    leaf: pki.Issued,
    *,
    when: datetime,
    body: dict[str, Any] | None = None,
    chain: Sequence[pki.Issued] = (),
    region: str = REGION,
    path: str = "/sessions",
    tamper: Tamper | None = None,
) -> Reply:
    """Sign a CreateSession exactly as a client would, optionally tamper, and send it."""
    url = f"{base_url}{path}"
    payload = json.dumps(session_body() if body is None else body).encode()
    signed = sigv4_x509.sign_request(
        method="POST",
        url=url,
        headers={"Content-Type": "application/json"},
        body=payload,
        region=region,
        service="rolesanywhere",
        when=when,
        certificate=leaf.certificate,
        private_key=leaf.key,
        chain=[c.certificate for c in chain],
    )
    headers = dict(signed.headers)
    if tamper is not None:
        headers, payload = tamper(headers, payload)
    async with http.post(url, data=payload, headers=headers) as resp:
        return Reply(resp.status, resp.headers, await resp.text())


async def create_session(
    http: aiohttp.ClientSession,
    emu: Emulator,
    leaf: pki.Issued,
    *,
    when: datetime | None = None,
    **kwargs: Any,
) -> Reply:
    """``send_signed`` to ``emu``, dated by the emulator's own clock unless told otherwise."""
    return await send_signed(
        http, emu.url, leaf, when=when or utc(emu.clock.time()), **kwargs
    )


def assert_error(reply: Reply, status: int, error_type: str, fragment: str) -> None:
    assert reply.status == status, reply.text
    assert reply.headers["X-Amzn-ErrorType"] == error_type
    assert reply.headers["Content-Type"].startswith("application/json")
    message = reply.json()["message"]
    assert fragment.lower() in message.lower(), message


def expected_expiration(emu: Emulator, seconds: int) -> str:
    return utc(emu.clock.time() + seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize(
    ("leaf_name", "duration"),
    [("leaf_rsa", 900), ("leaf_p256", 3600), ("leaf_p384", 43200)],
)
async def test_valid_request_gets_201_with_requested_lifetime(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs, leaf_name: str, duration: int
) -> None:
    leaf: pki.Issued = getattr(certs, leaf_name)
    reply = await create_session(http, emu, leaf, body=session_body(durationSeconds=duration))
    assert reply.status == 201, reply.text
    doc = reply.json()
    [entry] = doc["credentialSet"]
    creds = entry["credentials"]
    assert creds["expiration"] == expected_expiration(emu, duration)
    assert len(creds["accessKeyId"]) == 20 and creds["accessKeyId"].startswith("ASIA")
    assert creds["accessKeyId"][4:].isalnum() and creds["accessKeyId"].isupper()
    assert len(creds["secretAccessKey"]) == 40
    assert len(creds["sessionToken"]) > 300
    assert entry["roleArn"] == ROLE
    assert entry["packedPolicySize"] == 0
    assert entry["sourceIdentity"] == f"CN={leaf_name.replace('leaf_', 'host-')}"
    assert entry["assumedRoleUser"]["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/reports/host-1"
    assert entry["assumedRoleUser"]["assumedRoleId"].startswith("AROA")
    assert entry["assumedRoleUser"]["assumedRoleId"].endswith(":host-1")
    assert doc["subjectArn"].startswith(f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:subject/")
    assert emu.issued == [creds]
    assert (emu.calls, emu.succeeded, emu.failed) == (1, 1, 0)


async def test_defaults_duration_3600_and_session_named_after_serial(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    body = session_body(durationSeconds=None, roleSessionName=None)
    reply = await create_session(http, emu, certs.leaf_p256, body=body)
    assert reply.status == 201, reply.text
    [entry] = reply.json()["credentialSet"]
    assert entry["credentials"]["expiration"] == expected_expiration(emu, 3600)
    serial_hex = format(certs.leaf_p256.certificate.serial_number, "x")
    assert entry["assumedRoleUser"]["arn"].endswith(f"/reports/{serial_hex}")


async def test_each_session_gets_fresh_keys(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    first = await create_session(http, emu, certs.leaf_p256)
    second = await create_session(http, emu, certs.leaf_p256)
    keys = [r.json()["credentialSet"][0]["credentials"]["accessKeyId"] for r in (first, second)]
    assert keys[0] != keys[1]
    assert [c["accessKeyId"] for c in emu.issued] == keys


async def test_chain_through_intermediate_with_only_root_configured(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(
        http, emu, certs.leaf_via_intermediate, chain=[certs.intermediate]
    )
    assert reply.status == 201, reply.text


async def test_signature_covers_path_and_query_as_received(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_p256, path="/sessions?b=2&a=x%20y")
    assert reply.status == 201, reply.text

    # Signed for one query, sent with another: the signature no longer matches.
    signed_for = "/sessions?a=1"
    url = f"{emu.url}/sessions?a=2"
    payload = json.dumps(session_body()).encode()
    signed = sigv4_x509.sign_request(
        method="POST", url=f"{emu.url}{signed_for}",
        headers={"Content-Type": "application/json"}, body=payload, region=REGION,
        service="rolesanywhere", when=utc(emu.clock.time()),
        certificate=certs.leaf_p256.certificate, private_key=certs.leaf_p256.key,
    )
    async with http.post(url, data=payload, headers=signed.headers) as resp:
        refused = Reply(resp.status, resp.headers, await resp.text())
    assert_error(refused, 403, "AccessDeniedException", "Invalid signature")


async def test_date_within_skew_is_accepted(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(
        http, emu, certs.leaf_p256, when=utc(emu.clock.time() - 240)
    )
    assert reply.status == 201, reply.text


async def test_profile_cap_allows_up_to_its_maximum(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    body = session_body(profileArn=SHORT_PROFILE, durationSeconds=1800)
    reply = await create_session(http, emu, certs.leaf_p256, body=body)
    assert reply.status == 201, reply.text


# --------------------------------------------------------------------------- refusals


def _replace_header(name: str, value: str) -> Tamper:
    def tamper(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        return {**headers, name: value}, body

    return tamper


def _edit_authorization(old: str, new: str) -> Tamper:
    def tamper(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        assert old in headers["Authorization"]
        return {**headers, "Authorization": headers["Authorization"].replace(old, new)}, body

    return tamper


async def test_tampered_body_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    def tamper(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        assert b"3600" in body
        return headers, body.replace(b"3600", b"7200")  # still valid JSON and allowed

    reply = await create_session(http, emu, certs.leaf_rsa, tamper=tamper)
    assert_error(reply, 403, "AccessDeniedException", "Invalid signature")
    assert emu.issued == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("Content-Type", "application/x-amz-json-1.1"), ("Host", "127.0.0.1:1")],
)
async def test_tampered_signed_header_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs, name: str, value: str
) -> None:
    reply = await create_session(
        http, emu, certs.leaf_p256, tamper=_replace_header(name, value)
    )
    assert_error(reply, 403, "AccessDeniedException", "Invalid signature")


async def test_certificate_from_another_ca_is_untrusted(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_stranger)
    assert_error(reply, 403, "AccessDeniedException", "Untrusted signing certificate")


async def test_certificate_trusted_by_another_trust_anchor_is_untrusted(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_other_anchor)
    assert_error(reply, 403, "AccessDeniedException", "Untrusted signing certificate")
    ok = await create_session(
        http, emu, certs.leaf_other_anchor, body=session_body(trustAnchorArn=TA_OTHER)
    )
    assert ok.status == 201, ok.text


async def test_expired_certificate_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_expired)
    assert_error(reply, 403, "AccessDeniedException", "has expired")


async def test_not_yet_valid_certificate_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_not_yet_valid)
    assert_error(reply, 403, "AccessDeniedException", "not yet valid")


async def test_certificate_expires_by_the_emulator_clock(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs, clock: RecordingClock
) -> None:
    clock.jump_wall(2 * 365 * 86400)  # the leaf (1 year) has expired by then
    reply = await create_session(http, emu, certs.leaf_p256)
    assert_error(reply, 403, "AccessDeniedException", "has expired")


@pytest.mark.parametrize(
    ("offset", "fragment"),
    [(-600, "Signature expired"), (600, "Signature not yet current")],
)
async def test_date_skewed_by_ten_minutes_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs, offset: int, fragment: str
) -> None:
    when = utc(emu.clock.time() + offset)
    reply = await create_session(http, emu, certs.leaf_p256, when=when)
    assert_error(reply, 403, "AccessDeniedException", fragment)


async def test_algorithm_not_matching_the_key_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    tamper = _edit_authorization(sigv4_x509.RSA_ALGORITHM, sigv4_x509.EC_ALGORITHM)
    reply = await create_session(http, emu, certs.leaf_rsa, tamper=tamper)
    assert_error(reply, 403, "AccessDeniedException", "does not match the signing certificate")


async def test_serial_mismatch_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    serial = certs.leaf_p256.certificate.serial_number
    tamper = _edit_authorization(f"Credential={serial}/", f"Credential={serial + 1}/")
    reply = await create_session(http, emu, certs.leaf_p256, tamper=tamper)
    assert_error(reply, 403, "AccessDeniedException", "serial number")


async def test_missing_intermediate_is_untrusted(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_via_intermediate)
    assert_error(reply, 403, "AccessDeniedException", "Untrusted signing certificate")


async def test_intermediate_that_is_not_a_ca_is_untrusted(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_under_leaf, chain=[certs.leaf_p256])
    assert_error(reply, 403, "AccessDeniedException", "is not a CA certificate")


async def test_unknown_trust_anchor_is_not_found(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    body = session_body(trustAnchorArn=TA + "-nope")
    reply = await create_session(http, emu, certs.leaf_p256, body=body)
    assert_error(reply, 404, "ResourceNotFoundException", "Trust anchor")


async def test_unknown_profile_is_not_found(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    body = session_body(profileArn=PROFILE + "-nope")
    reply = await create_session(http, emu, certs.leaf_p256, body=body)
    assert_error(reply, 404, "ResourceNotFoundException", "Profile")


async def test_role_not_in_profile_is_denied(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_p256, body=session_body(roleArn=OTHER_ROLE))
    assert_error(reply, 403, "AccessDeniedException", "not allowed by profile")


@pytest.mark.parametrize(
    ("profile", "duration", "fragment"),
    [
        (PROFILE, 899, "between 900 and 43200"),
        (PROFILE, 43201, "between 900 and 43200"),
        (SHORT_PROFILE, 1801, "profile's maximum of 1800"),
    ],
)
async def test_duration_out_of_range_is_invalid(
    http: aiohttp.ClientSession,
    emu: Emulator,
    certs: Certs,
    profile: str,
    duration: int,
    fragment: str,
) -> None:
    body = session_body(profileArn=profile, durationSeconds=duration)
    reply = await create_session(http, emu, certs.leaf_p256, body=body)
    assert_error(reply, 400, "ValidationException", fragment)


async def test_missing_body_field_is_invalid(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_p256, body=session_body(roleArn=None))
    assert_error(reply, 400, "ValidationException", "roleArn is required")


async def test_credential_scoped_to_another_region_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(http, emu, certs.leaf_p256, region="eu-west-1")
    assert_error(reply, 403, "AccessDeniedException", "valid region")


async def test_missing_authorization_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    def tamper(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        return {k: v for k, v in headers.items() if k != "Authorization"}, body

    reply = await create_session(http, emu, certs.leaf_p256, tamper=tamper)
    assert_error(reply, 403, "AccessDeniedException", "Missing Authorization header")
    malformed = await create_session(
        http, emu, certs.leaf_p256, tamper=_replace_header("Authorization", "Bearer xyz")
    )
    assert_error(malformed, 403, "AccessDeniedException", "Malformed Authorization header")


async def test_malformed_certificate_header_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    reply = await create_session(
        http, emu, certs.leaf_p256, tamper=_replace_header("X-Amz-X509", "bm90IGEgY2VydA==")
    )
    assert_error(reply, 403, "AccessDeniedException", "X-Amz-X509")


async def test_unsigned_chain_header_is_refused(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    chain_value = sigv4_x509.der_b64(certs.intermediate.certificate)
    reply = await create_session(
        http,
        emu,
        certs.leaf_via_intermediate,
        tamper=_replace_header("X-Amz-X509-Chain", chain_value),
    )
    assert_error(reply, 403, "AccessDeniedException", "SignedHeaders must include")


# --------------------------------------------------------------------------- faults


async def test_fail_count_answers_500_then_recovers(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    emu.faults.fail_status = 500
    emu.faults.fail_count = 2
    for _ in range(2):
        reply = await create_session(http, emu, certs.leaf_p256)
        assert_error(reply, 500, "InternalServerException", "internal")
    reply = await create_session(http, emu, certs.leaf_p256)
    assert reply.status == 201, reply.text
    assert (emu.calls, emu.succeeded, emu.failed) == (3, 1, 2)
    assert emu.faults.fail_count == 0


async def test_fail_count_minus_one_fails_until_cleared(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    emu.faults.fail_status = 503
    emu.faults.fail_count = -1
    for _ in range(3):
        reply = await create_session(http, emu, certs.leaf_p256)
        assert_error(reply, 503, "InternalServerException", "internal")
    emu.faults.fail_count = 0
    assert (await create_session(http, emu, certs.leaf_p256)).status == 201


async def test_throttle_answers_429_with_retry_after(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    emu.faults.throttle_count = 1
    emu.faults.retry_after = 2
    reply = await create_session(http, emu, certs.leaf_p256)
    assert_error(reply, 429, "ThrottlingException", "Rate exceeded")
    assert reply.headers["Retry-After"] == "2"
    assert (await create_session(http, emu, certs.leaf_p256)).status == 201


async def test_deny_fault_answers_403(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    emu.faults.deny_count = 1
    reply = await create_session(http, emu, certs.leaf_p256)
    assert_error(reply, 403, "AccessDeniedException", "denied")


async def test_malformed_fault_answers_201_with_truncated_body(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    emu.faults.malformed_count = 1
    reply = await create_session(http, emu, certs.leaf_p256)
    assert reply.status == 201
    with pytest.raises(json.JSONDecodeError):
        reply.json()
    assert emu.issued == []
    assert (await create_session(http, emu, certs.leaf_p256)).status == 201


async def test_empty_fault_answers_201_with_empty_credential_set(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    emu.faults.empty_count = 1
    reply = await create_session(http, emu, certs.leaf_p256)
    assert reply.status == 201
    assert reply.json()["credentialSet"] == []
    assert emu.issued == []


async def test_after_verification_faults_still_verify(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    """A bad request is refused for what it is, even with malformed/empty armed."""
    emu.faults.malformed_count = 1
    reply = await create_session(http, emu, certs.leaf_stranger)
    assert_error(reply, 403, "AccessDeniedException", "Untrusted")
    assert emu.faults.malformed_count == 1


async def test_delay_sleeps_on_the_clock(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs, clock: RecordingClock
) -> None:
    emu.faults.delay_seconds = 30
    task = asyncio.create_task(create_session(http, emu, certs.leaf_p256))
    await asyncio.wait_for(clock.sleeping.wait(), timeout=10)
    await asyncio.sleep(0.05)
    assert not task.done()
    await clock.advance(30)
    reply = await asyncio.wait_for(task, timeout=10)
    # The clock moved 30 s while the request waited; the signature's date is still fresh.
    assert reply.status == 201, reply.text


async def test_control_endpoints_over_http(
    http: aiohttp.ClientSession, emu: Emulator, certs: Certs
) -> None:
    faults_url = f"{emu.url}/_emulator/faults"
    async with http.post(faults_url, json={"throttle_count": 1, "retry_after": 1.5}) as resp:
        assert resp.status == 200
        assert (await resp.json())["throttle_count"] == 1
    assert emu.faults.throttle_count == 1 and emu.faults.retry_after == 1.5
    throttled = await create_session(http, emu, certs.leaf_p256)
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "1.5"

    for bad in ({"no_such_fault": 1}, {"fail_count": "two"}, {"deny_count": True}, [1]):
        async with http.post(faults_url, json=bad) as resp:
            assert resp.status == 400, bad
            assert resp.headers["X-Amzn-ErrorType"] == "ValidationException"
            assert (await resp.json())["message"]
    async with http.post(faults_url, json={"deny_count": -1, "fail_status": 503}) as resp:
        assert resp.status == 200
    async with http.delete(faults_url) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "fail_status": 0, "fail_count": 0, "throttle_count": 0, "retry_after": None,
            "delay_seconds": 0.0, "malformed_count": 0, "empty_count": 0, "deny_count": 0,
        }
    assert emu.faults == Faults()

    ok = await create_session(http, emu, certs.leaf_p256)
    assert ok.status == 201
    async with http.get(f"{emu.url}/_emulator/stats") as resp:
        stats = await resp.json()
    assert stats["calls"] == 2 and stats["succeeded"] == 1 and stats["failed"] == 1
    assert stats["issued"] == [ok.json()["credentialSet"][0]["credentials"]]
    assert set(stats["issued"][0]) == {"accessKeyId", "secretAccessKey", "sessionToken",
                                       "expiration"}


def test_constructor_refuses_bad_configuration(certs: Certs) -> None:
    ca = [certs.root_ec.certificate]
    with pytest.raises(ValueError, match="trust-anchor"):
        Emulator(trust_anchors={"arn:aws:iam::1:role/x": ca}, profiles={})
    with pytest.raises(ValueError, match="no CA"):
        Emulator(trust_anchors={TA: []}, profiles={})
    with pytest.raises(ValueError, match="bad role ARN"):
        Emulator(trust_anchors={TA: ca}, profiles={PROFILE: Profile(role_arns=("nope",))})


# --------------------------------------------------------------------------- command line


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="emulator")
    configure_parser(parser)
    return parser.parse_args(argv)


def test_configure_parser_parses_documented_flags(tmp_path: Path) -> None:
    args = _parse([
        "--listen", "127.0.0.1:0",
        "--ca", "a.pem", "--ca", "b.pem",
        "--trust-anchor-arn", TA,
        "--profile-arn", PROFILE,
        "--role-arn", ROLE, "--role-arn", OTHER_ROLE,
        "--max-duration", "1800",
        "--port-file", str(tmp_path / "port"),
    ])
    assert str(args.listen) == "127.0.0.1:0"
    assert args.ca == [Path("a.pem"), Path("b.pem")]
    assert args.trust_anchor_arn == TA and args.profile_arn == PROFILE
    assert args.role_arns == [ROLE, OTHER_ROLE]
    assert args.max_duration == 1800
    assert args.port_file == tmp_path / "port"


def test_configure_parser_defaults_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["--ca", "ca.pem"])
    assert str(args.listen) == "127.0.0.1:8443"
    assert args.trust_anchor_arn == DEFAULT_TRUST_ANCHOR_ARN
    assert args.profile_arn == DEFAULT_PROFILE_ARN
    assert args.role_arns is None  # run() then allows DEFAULT_ROLE_ARN
    assert args.max_duration == 43200 and args.port_file is None
    for bad in (["--listen", "nohost"], ["--ca", "x", "--max-duration", "60"], []):
        with pytest.raises(SystemExit):
            _parse(bad)
    with pytest.raises(SystemExit):
        _parse(["--help"])
    usage = capsys.readouterr().out
    for flag in ("--listen", "--ca", "--trust-anchor-arn", "--profile-arn", "--role-arn",
                 "--max-duration", "--port-file"):
        assert flag in usage


async def test_run_returns_2_for_an_unreadable_ca(tmp_path: Path) -> None:
    args = _parse(["--listen", "127.0.0.1:0", "--ca", str(tmp_path / "missing.pem")])
    assert await run(args) == 2


async def test_cli_serves_signed_requests_and_stops_on_sigterm(
    tmp_path: Path, certs: Certs, http: aiohttp.ClientSession
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(certs.root_rsa.cert_pem() + certs.root_ec.cert_pem())
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "credential_sidecar.devtools.emulator",
        "--listen", "127.0.0.1:0", "--ca", str(ca_file), "--port-file", str(port_file),
        "--max-duration", "7200",
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        assert line.startswith("emulator listening on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        assert port_file.read_text().strip() == url.rsplit(":", 1)[1]

        # Drive it as a user would: a real client signature against the real clock.
        body = {"trustAnchorArn": DEFAULT_TRUST_ANCHOR_ARN, "profileArn": DEFAULT_PROFILE_ARN,
                "roleArn": DEFAULT_ROLE_ARN, "durationSeconds": 7200}
        now = datetime.now(UTC)
        reply = await send_signed(http, url, certs.leaf_p256, when=now, body=body)
        assert reply.status == 201, reply.text
        too_long = await send_signed(
            http, url, certs.leaf_p256, when=now, body={**body, "durationSeconds": 7201}
        )
        assert too_long.status == 400
        async with http.get(f"{url}/_emulator/stats") as resp:
            stats = await resp.json()
        assert stats["issued"] == [reply.json()["credentialSet"][0]["credentials"]]

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
        assert await proc.stdout.read() == b""  # logs went to stderr, stdout stays clean
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

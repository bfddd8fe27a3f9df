"""The CreateSession client against the in-process emulator: success, errors, network failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from credential_sidecar.clock import SystemClock
from credential_sidecar.config.load import parse_config
from credential_sidecar.devtools import pki
from credential_sidecar.devtools.emulator.server import Emulator, Profile
from credential_sidecar.upstream.base import UpstreamError
from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource, default_endpoint

ACCOUNT = "111122223333"
TA = f"arn:aws:rolesanywhere:eu-west-1:{ACCOUNT}:trust-anchor/t"
PROFILE = f"arn:aws:rolesanywhere:eu-west-1:{ACCOUNT}:profile/p"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/r"


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[Emulator, pki.Issued]]:
    ca = pki.make_ca("unit CA")
    emu = Emulator(trust_anchors={TA: [ca.certificate]}, profiles={PROFILE: Profile((ROLE,))})
    await emu.start()
    try:
        yield emu, ca
    finally:
        await emu.stop()


def source(tmp: Path, ca: pki.Issued, endpoint: str | None, **extra: object) -> RolesAnywhereSource:
    leaf = pki.make_leaf(ca, "host")
    (tmp / "c.pem").write_bytes(leaf.cert_pem())
    pki.write_private(tmp / "k.pem", leaf.key_pem())
    conn: dict[str, object] = {
        "name": "c", "type": "roles-anywhere", "certificate": str(tmp / "c.pem"),
        "private_key": str(tmp / "k.pem"), "trust_anchor_arn": TA, "profile_arn": PROFILE,
        "role_arn": ROLE, "session_name": "unit", **extra,
    }
    if endpoint:
        conn["endpoint"] = endpoint
    config = parse_config({"connections": [conn]})
    return RolesAnywhereSource(config.connections[0], SystemClock(), timeout=2.0)  # type: ignore[arg-type]


async def refusal(src: RolesAnywhereSource) -> UpstreamError:
    """The error one fetch ends with (it must end with one)."""
    try:
        with pytest.raises(UpstreamError) as caught:
            await src.fetch()
    finally:
        await src.close()
    return caught.value


def test_endpoint_follows_the_region() -> None:
    assert default_endpoint("eu-west-1") == "https://rolesanywhere.eu-west-1.amazonaws.com"
    assert default_endpoint("cn-north-1") == "https://rolesanywhere.cn-north-1.amazonaws.com.cn"


async def test_success_returns_the_issued_set(emulator: tuple[Emulator, pki.Issued],
                                               tmp_path: Path) -> None:
    emu, ca = emulator
    src = source(tmp_path, ca, emu.url, duration_seconds=1800)
    try:
        creds = await src.fetch()
    finally:
        await src.close()
    issued = emu.issued[-1]
    assert creds.access_key_id == issued["accessKeyId"]
    assert creds.secret_access_key == issued["secretAccessKey"]
    assert 1790 <= creds.lifetime <= 1801
    assert creds.account_id == ACCOUNT


@pytest.mark.parametrize(
    ("faults", "code", "status", "message"),
    [
        ({"deny_count": 1}, "AccessDeniedException", 403, ""),
        ({"throttle_count": 1, "retry_after": 7}, "ThrottlingException", 429, ""),
        ({"fail_status": 500, "fail_count": 1}, "InternalServerException", 500, ""),
        ({"malformed_count": 1}, "MalformedResponse", None, "without a usable credential set"),
        ({"empty_count": 1}, "MalformedResponse", None, "without a usable credential set"),
    ],
)
async def test_service_errors_are_kept_verbatim(
    emulator: tuple[Emulator, pki.Issued], tmp_path: Path,
    faults: dict[str, object], code: str, status: int | None, message: str,
) -> None:
    emu, ca = emulator
    emu.faults.update(faults)
    error = await refusal(source(tmp_path, ca, emu.url))
    assert error.code == code
    assert error.status == status
    assert message in error.message
    if code == "ThrottlingException":
        assert error.retry_after == 7 and error.throttled


async def test_untrusted_certificate_is_a_persistent_refusal(
    emulator: tuple[Emulator, pki.Issued], tmp_path: Path
) -> None:
    emu, _ = emulator
    error = await refusal(source(tmp_path, pki.make_ca("stranger"), emu.url))
    assert error.code == "AccessDeniedException"
    assert "untrusted signing certificate" in error.message.lower()
    assert error.persistent


@pytest.mark.parametrize(
    ("endpoint", "code"),
    [
        ("https://does-not-exist.invalid:8443", "ConnectionError"),  # DNS failure
        ("http://127.0.0.1:1", "ConnectionError"),  # nothing listening
    ],
)
async def test_network_failures_are_retryable_errors(tmp_path: Path, endpoint: str,
                                                     code: str) -> None:
    error = await refusal(source(tmp_path, pki.make_ca("x"), endpoint))
    assert error.code == code and not error.persistent


async def test_tls_to_a_plain_http_server_fails_cleanly(
    emulator: tuple[Emulator, pki.Issued], tmp_path: Path
) -> None:
    emu, ca = emulator
    error = await refusal(source(tmp_path, ca, emu.url.replace("http://", "https://")))
    assert error.code == "ConnectionError"


async def test_a_slow_upstream_hits_the_total_timeout(
    emulator: tuple[Emulator, pki.Issued], tmp_path: Path
) -> None:
    emu, ca = emulator
    emu.faults.update({"delay_seconds": 5})
    error = await refusal(source(tmp_path, ca, emu.url))
    assert error.code == "Timeout"

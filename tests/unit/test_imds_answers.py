"""IMDS answers are rendered once per credential set, and never outlive it."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.doors.imds import (
    CREDS_PREFIX,
    TOKEN_HEADER,
    TTL_HEADER,
    ImdsApp,
    ImdsIdentity,
)
from credential_sidecar.testing import FakeClock


def _creds(clock: FakeClock, key_id: str) -> Credentials:
    now = clock.time()
    return Credentials(key_id, key_id.lower() * 2, key_id * 4, utc(now + 3600), utc(now))


async def test_a_renewed_set_is_served_at_once() -> None:
    clock = FakeClock()
    first_set = _creds(clock, "ASIAFIRSTFIRSTFIRST1")
    second_set = _creds(clock, "ASIASECONDSECOND0002")
    held = {"set": first_set}
    guard = HostGuard("127.0.0.1")
    imds = ImdsApp(ImdsIdentity("app", "us-east-1", None), lambda: held["set"], clock, guard)
    async with TestClient(TestServer(imds.app)) as client:
        guard.port = client.port
        response = await client.put("/latest/api/token", headers={TTL_HEADER: "60"})
        token = {TOKEN_HEADER: await response.text()}

        async def fetch() -> dict[str, str]:
            response = await client.get(f"{CREDS_PREFIX}/app", headers=token)
            assert response.status == 200
            return json.loads(await response.text())  # type: ignore[no-any-return]

        first, again = await fetch(), await fetch()
        held["set"] = second_set
        renewed = await fetch()
    assert first == again == first_set.imds_document()
    assert renewed == second_set.imds_document()

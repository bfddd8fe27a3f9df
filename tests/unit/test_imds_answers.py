"""IMDS answers are rendered once per credential set, and never outlive it."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.doors.imds import (
    CREDS_PREFIX,
    EXTENDED_PREFIX,
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


async def _read(imds: ImdsApp, guard: HostGuard, paths: list[str]) -> list[tuple[int, str]]:
    async with TestClient(TestServer(imds.app)) as client:
        guard.port = client.port
        response = await client.put("/latest/api/token", headers={TTL_HEADER: "60"})
        token = {TOKEN_HEADER: await response.text()}
        out = []
        for path in paths:
            response = await client.get(path, headers=token)
            out.append((response.status, await response.text()))
        return out


async def test_extended_credentials_add_the_account_and_keep_404s() -> None:
    clock = FakeClock()
    held = _creds(clock, "ASIAFIRSTFIRSTFIRST1")
    guard = HostGuard("127.0.0.1")
    imds = ImdsApp(ImdsIdentity("app", "us-east-1", "111122223333"), lambda: held, clock, guard)
    ((s1, role), (s2, doc), (s3, _), (s4, _)) = await _read(imds, guard, [
        f"{EXTENDED_PREFIX}/", f"{EXTENDED_PREFIX}/app", f"{EXTENDED_PREFIX}/other",
        f"{EXTENDED_PREFIX}/app/x"])
    assert (s1, role) == (200, "app")
    assert s2 == 200 and json.loads(doc) == {**held.imds_document(), "AccountId": "111122223333"}
    assert (s3, s4) == (404, 404)


async def test_the_account_comes_from_the_served_set_when_the_role_names_none() -> None:
    """Access keys with GetSessionToken: no role ARN; the account is learned from
    GetCallerIdentity into the set (Credentials.account_id)."""
    clock = FakeClock()
    now = clock.time()
    held: dict[str, Credentials | None] = {"set": Credentials(
        "ASIAFIRSTFIRSTFIRST1", "s" * 40, "t" * 80, utc(now + 3600), utc(now), "444455556666")}
    guard = HostGuard("127.0.0.1")
    imds = ImdsApp(ImdsIdentity("app", "eu-west-1", None), lambda: held["set"], clock, guard)
    identity = "/latest/dynamic/instance-identity/document"
    ((s1, document), (s2, extended)) = await _read(
        imds, guard, [identity, f"{EXTENDED_PREFIX}/app"])
    assert s1 == 200
    assert json.loads(document) == {"region": "eu-west-1", "accountId": "444455556666"}
    assert s2 == 200 and json.loads(extended)["AccountId"] == "444455556666"
    held["set"] = None  # nothing served: the document still answers, without an account
    ((s3, empty),) = await _read(imds, guard, [identity])
    assert s3 == 200 and json.loads(empty)["accountId"] == ""

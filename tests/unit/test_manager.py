"""The renewal schedule over simulated days, on a fake clock (no sleeping)."""

from __future__ import annotations

import random

import pytest

from credential_sidecar.credentials import Credentials
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.renewal.schedule import Policy
from credential_sidecar.testing import FakeClock, FakeSource
from credential_sidecar.upstream.base import UpstreamError

OUTAGE = UpstreamError("InternalServerException", "upstream down", 503)


async def _start(lifetime: int, seed: int = 7) -> tuple[FakeClock, FakeSource, CredentialManager]:
    clock = FakeClock()
    source = FakeSource(clock, lifetime)
    manager = CredentialManager({"conn": source}, clock, rng=random.Random(seed))
    await manager.start()
    await clock.advance(0)
    return clock, source, manager


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_day_of_3600s_sessions_always_serves_more_than_900s(seed: int) -> None:
    clock, source, manager = await _start(3600, seed)
    try:
        least = float("inf")
        for _ in range(24 * 3600 // 10):
            await clock.advance(10)
            creds = manager.get("conn")
            assert creds is not None
            least = min(least, creds.remaining(clock.time()))
        assert least > 900
        # Renewal with 50-60 % of the life left: every 1440-1800 s, 48-60 a day plus the first.
        assert 48 <= source.calls <= 61
    finally:
        await manager.stop()


async def test_900s_sessions_never_serve_under_60s_and_never_a_gap() -> None:
    clock, _source, manager = await _start(900)
    try:
        for _ in range(24 * 3600 // 5):
            await clock.advance(5)
            creds = manager.get("conn")
            assert creds is not None
            assert creds.remaining(clock.time()) >= 60
    finally:
        await manager.stop()


async def test_twenty_minute_outage_at_the_worst_moment_costs_clients_nothing() -> None:
    clock, source, manager = await _start(3600)
    try:
        # Just before the schedule first wants to renew, cut the upstream for 20 minutes.
        await clock.advance(manager.seconds_until_due(manager.states["conn"]) - 0.5)
        first = manager.get("conn")
        assert first is source.issued[0]
        source.failing = OUTAGE
        calls_before = source.calls
        for _ in range(1200):
            await clock.advance(1)
            creds = manager.get("conn")
            assert creds is first, "the last good set must keep being served"
            assert creds.remaining(clock.time()) >= 60
        # Capped exponential backoff: a handful of calls, not one a second.
        assert 6 <= source.calls - calls_before <= 22
        state = manager.states["conn"]
        assert state.last_error is OUTAGE
        assert manager.problems() == {}
        source.failing = None
        for _ in range(int(Policy().retry_cap) + 1):
            await clock.advance(1)
        renewed = manager.get("conn")
        assert renewed is not None and renewed is not first
        assert renewed.remaining(clock.time()) > 3000
        assert state.failures == 0 and state.last_error is None
    finally:
        await manager.stop()


async def test_a_set_that_lapses_is_withdrawn_never_served_expired() -> None:
    clock, source, manager = await _start(900)
    try:
        source.failing = OUTAGE
        served_until = None
        for _ in range(1000):
            await clock.advance(1)
            creds = manager.get("conn")
            if creds is None:
                break
            assert creds.remaining(clock.time()) >= 60
            served_until = clock.time()
        assert manager.get("conn") is None
        assert served_until is not None
        assert source.issued[0].remaining(served_until) >= 60
        assert "upstream down" in manager.problems()["conn"]
        assert manager.states["conn"].phase(clock.time(), manager.policy) == "failed"
    finally:
        await manager.stop()


async def test_refused_requests_back_off_longer_than_outages() -> None:
    clock = FakeClock()
    source = FakeSource(clock, 3600)
    source.failing = UpstreamError("AccessDeniedException", "Untrusted signing certificate", 403)
    manager = CredentialManager({"conn": source}, clock, rng=random.Random(3))
    await manager.start()
    try:
        await clock.advance(0)
        await clock.advance(3600)
        # 60 s doubling to 900 s (jittered down to half): a few calls in an hour, not hundreds.
        assert 3 <= source.calls <= 9
        assert manager.get("conn") is None
        assert "Untrusted signing certificate" in manager.problems()["conn"]
    finally:
        await manager.stop()


async def test_throttling_honours_retry_after() -> None:
    clock = FakeClock()
    source = FakeSource(clock, 3600)
    source.failing = UpstreamError("ThrottlingException", "Rate exceeded", 429, retry_after=90)
    manager = CredentialManager({"conn": source}, clock, rng=random.Random(5))
    await manager.start()
    try:
        await clock.advance(0)
        assert source.calls == 1
        await clock.advance(89)
        assert source.calls == 1
        source.failing = None
        await clock.advance(2)
        assert source.calls == 2
        assert manager.get("conn") is not None
    finally:
        await manager.stop()


async def test_one_upstream_call_per_connection_at_a_time() -> None:
    clock = FakeClock()
    in_flight = 0
    most = 0

    class SlowSource(FakeSource):
        async def fetch(self) -> Credentials:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await self.clock.sleep(30)
            in_flight -= 1
            return await super().fetch()

    source = SlowSource(clock, 900)
    manager = CredentialManager({"conn": source}, clock, rng=random.Random(1))
    await manager.start()
    try:
        for _ in range(600):
            await clock.advance(10)
        assert most == 1
        assert source.calls >= 10
    finally:
        await manager.stop()


async def test_wall_clock_jump_forward_triggers_an_immediate_check() -> None:
    clock, source, manager = await _start(3600)
    try:
        calls = source.calls
        clock.jump_wall(3000)  # host suspended for 50 minutes: the set is nearly gone
        await clock.advance(Policy().tick_seconds)
        assert source.calls == calls + 1
        creds = manager.get("conn")
        assert creds is not None and creds.remaining(clock.time()) > 3000
    finally:
        await manager.stop()


async def test_used_by_is_recorded_per_door_and_peer_and_bounded() -> None:
    clock, _source, manager = await _start(3600)
    try:
        manager.record_use("conn", "imds:conn")
        await clock.advance(5)
        manager.record_use("conn", "imds:conn")
        manager.record_use("conn", "control", "uid 1001")
        manager.record_use("nope", "imds:nope")  # unknown names are ignored
        state = manager.states["conn"]
        assert state.used_by[("imds:conn", "")][1] == 2
        assert state.used_by[("control", "uid 1001")][0] == clock.time()
        for i in range(200):
            manager.record_use("conn", "control", f"uid {i}")
        assert len(state.used_by) == 64
    finally:
        await manager.stop()

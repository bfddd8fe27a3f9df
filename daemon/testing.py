"""Test doubles shipped with the package, as structlog ships its own.

A clock moved by hand and an upstream that can be switched off, so tests, benchmarks and users'
own tests drive the renewal schedule over simulated days without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import secrets

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.upstream.base import FixedIdentity, UpstreamError


class FakeClock:
    """A clock that only moves when a test calls :meth:`advance`.

    Sleepers wake in deadline order as time passes them, so hours of renewal
    schedule run in milliseconds and always in the same order.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall_start = start
        self._jumped = 0.0
        self._mono = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._wall_start + self._jumped + (self._mono - 1000.0)

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), fut))
        await fut

    def jump_wall(self, seconds: float) -> None:
        """Step wall time only, as NTP or a suspended host does."""
        self._jumped += seconds

    async def advance(self, seconds: float) -> None:
        """Move both clocks forward, waking every sleeper whose deadline passes."""
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, deadline)
            if not fut.done():
                fut.set_result(None)
            await settle()
        self._mono = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop is quiet (bounded, deterministic)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeSource(FixedIdentity):
    """An upstream that issues sets of a fixed lifetime, and can be switched off."""

    def __init__(self, clock: FakeClock, lifetime: int, name: str = "conn") -> None:
        self.name = name
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.failing: UpstreamError | None = None
        self.issued: list[Credentials] = []

    async def fetch(self) -> Credentials:
        self.calls += 1
        if self.failing is not None:
            raise self.failing
        now = self.clock.time()
        creds = Credentials(
            access_key_id="ASIA" + secrets.token_hex(8).upper(),
            secret_access_key=secrets.token_urlsafe(30),
            session_token=secrets.token_urlsafe(60),
            expiration=utc(now + self.lifetime),
            issued_at=utc(now),
        )
        self.issued.append(creds)
        return creds

    async def binding(self) -> str:
        return "fake-binding"

    async def close(self) -> None:
        return None

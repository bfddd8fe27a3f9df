"""Time as a dependency, so schedules can be tested over simulated days.

Wall time (``time``) decides whether credentials are expired; monotonic time
(``monotonic``) and ``sleep`` drive the schedule, so a wall-clock step does not
stretch or shrink a wait.
"""

from __future__ import annotations

import asyncio
import os
import time as _time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class SystemClock:
    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))







TEST_CLOCK_ENV = "CREDENTIAL_SIDECAR_TEST_CLOCK_FILE"


class OffsetClock(SystemClock):
    """Real time plus an offset read from a file: lets tests move a whole process in time.

    Enabled only through ``CREDENTIAL_SIDECAR_TEST_CLOCK_FILE``; the file holds a number of
    seconds to add to both clocks. Sleepers wake early when the offset moves past them.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = 0.0
        self._read_at = -1.0
        self._sleepers: set[asyncio.Future[None]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def offset(self) -> float:
        now = _time.monotonic()
        if now - self._read_at > 0.01:
            self._read_at = now
            try:
                with open(self.path) as handle:
                    self._offset = float(handle.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return self._offset

    def time(self) -> float:
        return _time.time() + self.offset()

    def monotonic(self) -> float:
        return _time.monotonic() + self.offset()

    async def sleep(self, seconds: float) -> None:
        """Until the deadline in offset time: woken by real time passing or the offset moving.

        One watcher polls the file for all sleepers, so a thousand sleeping connections cost
        one wake-up per poll rather than a thousand (which showed up in benchmarks).
        """
        deadline = self.monotonic() + seconds
        loop = asyncio.get_running_loop()
        while (left := deadline - self.monotonic()) > 0:
            waiter: asyncio.Future[None] = loop.create_future()
            timer = loop.call_later(left, _wake, waiter)
            self._sleepers.add(waiter)
            watcher = self._watcher
            if watcher is None or watcher.done() or watcher.get_loop() is not loop:
                self._watcher = loop.create_task(self._watch())
            try:
                await waiter
            finally:
                timer.cancel()
                self._sleepers.discard(waiter)

    async def _watch(self) -> None:
        """Wake every sleeper when the offset moves; ends when nobody sleeps."""
        seen = self.offset()
        while self._sleepers:
            await asyncio.sleep(0.05)
            if (now := self.offset()) != seen:
                seen = now
                for waiter in list(self._sleepers):
                    _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def clock_from_env() -> Clock:
    path = os.environ.get(TEST_CLOCK_ENV)
    return OffsetClock(path) if path else SystemClock()

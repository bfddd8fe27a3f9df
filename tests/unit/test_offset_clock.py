"""OffsetClock, the test hook that moves a whole process in time through a file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from credential_sidecar.clock import OffsetClock


async def test_sleepers_wake_when_the_offset_moves_past_them(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    path.write_text("0")
    clock = OffsetClock(str(path))
    before = clock.time()
    sleepers = [asyncio.create_task(clock.sleep(3600 + i)) for i in range(100)]
    short = asyncio.create_task(clock.sleep(7200))
    await asyncio.sleep(0.1)
    assert not any(s.done() for s in sleepers)
    path.write_text("3700")
    await asyncio.wait_for(asyncio.gather(*sleepers), timeout=5)
    assert clock.time() - before >= 3700
    assert not short.done(), "a sleeper whose deadline is still ahead sleeps on"
    short.cancel()
    await asyncio.gather(short, return_exceptions=True)
    assert not clock._sleepers, "a cancelled sleeper leaves nothing behind"


async def test_real_time_still_ends_a_sleep(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    path.write_text("0")
    clock = OffsetClock(str(path))
    started = clock.monotonic()
    await asyncio.wait_for(clock.sleep(0.05), timeout=5)
    assert clock.monotonic() - started >= 0.05
    await asyncio.wait_for(clock.sleep(0), timeout=5)

"""A clock offset shared with daemon and emulator processes (CREDENTIAL_SIDECAR_TEST_CLOCK_FILE):
tests move time instead of waiting for it."""

from __future__ import annotations

import time
from pathlib import Path

STEP = 15.0  # seconds of offset per step, so sleepers wake and schedules see each step


class TimeMachine:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(self.offset))
        tmp.replace(self.path)

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float, pause: float = 0.03) -> None:
        target = self.offset + seconds
        while self.offset < target:
            self.offset = min(target, self.offset + STEP)
            self._write()
            time.sleep(pause)

"""What the daemon tells its service manager, and when.

- ``READY=1`` once every required connection holds a servable set, or once
  ``[daemon] ready_timeout_seconds`` has passed (units ordered after us then start, and
  ``/readyz`` keeps saying what is missing), whichever comes first.
- ``STATUS=`` a one-line summary for ``systemctl status``, sent when it changes (checked every
  second, so at most one a second), from the start on.
- ``WATCHDOG=1`` at half the watchdog interval, from a task on the event loop: a loop that is
  blocked (or a process that is stuck) stops sending, and systemd restarts the service.
- ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

from credential_sidecar.logs import get_logger
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.systemd.notify import Notifier

log = get_logger()

# Test hook, honoured only when set: SIGUSR2 then blocks the event loop for this many seconds,
# which is how the tests show that a blocked loop stops the watchdog keep-alives.
BLOCK_LOOP_ENV = "CREDENTIAL_SIDECAR_TEST_BLOCK_LOOP_SECONDS"
STATUS_POLL_SECONDS = 1.0


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "<1m"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def summary(manager: CredentialManager, required: list[str]) -> str:
    """``3/3 connections ready; next renewal in 27m``, with what is missing when it is."""
    now = manager.clock.time()
    states = manager.states
    phases = {name: state.phase(now, manager.policy) for name, state in states.items()}
    serving = [name for name, phase in phases.items() if phase in ("ready", "degraded")]
    head = f"{len(serving)}/{len(states)} connections ready"
    degraded = [name for name, phase in phases.items() if phase == "degraded"]
    if degraded:
        head += f" ({len(degraded)} degraded: last renewal failed)"
    parts = [head]
    missing = [name for name in required if name in states and name not in serving]
    if missing:
        reasons = []
        for name in missing[:3]:
            error = states[name].last_error
            reasons.append(f"{name} ({error.code if error else 'no credentials yet'})")
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        parts.append("not ready: " + ", ".join(reasons) + more)
    due = [manager.seconds_until_due(state) for state in states.values() if state.current]
    if due:
        parts.append(f"next renewal in {_duration(min(due))}")
    return "; ".join(parts)


class ServiceLink:
    """The daemon's side of the conversation with systemd (a no-op without systemd)."""

    def __init__(
        self,
        notifier: Notifier,
        manager: CredentialManager,
        required: Callable[[], list[str]],
        *,
        ready_timeout: float,
        status_poll: float = STATUS_POLL_SECONDS,
    ) -> None:
        self.notifier = notifier
        self.manager = manager
        self.required = required
        self.ready_timeout = ready_timeout
        self.status_poll = status_poll
        self.announced = False
        self.note: str | None = None  # e.g. a refused reload, shown until the next good one
        self._last_status: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._announce_ready(), name="sd:ready"))
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(self._status_loop(), name="sd:status"))
        if self.notifier.enabled and self.notifier.watchdog_usec:
            self._tasks.append(asyncio.create_task(self._keepalive(), name="sd:watchdog"))
            log.info("watchdog enabled", interval_ms=self.notifier.watchdog_usec // 1000)

    def status_line(self) -> str:
        line = summary(self.manager, self.required())
        return f"{self.note}; {line}" if self.note else line

    async def _announce_ready(self) -> None:
        required = self.required()
        try:
            await asyncio.wait_for(self.manager.wait_ready(required), self.ready_timeout)
        except TimeoutError:
            problems = self.manager.problems(required)
            log.warning(
                "not every connection is ready; telling systemd the service is up anyway",
                waited_seconds=self.ready_timeout, not_ready=problems,
            )
            self._ready()
            await self.manager.wait_ready(self.required())
            log.info("ready", connections=len(self.manager.states))
        else:
            self._ready()
            log.info("ready", connections=len(self.manager.states))

    def _ready(self) -> None:
        status = self.status_line()
        self.notifier.ready(status)
        self._last_status = status
        self.announced = True

    async def _status_loop(self) -> None:
        """Also while starting: `systemctl status` then shows what the start is waiting for."""
        while True:
            await asyncio.sleep(self.status_poll)
            self.update_status()

    def update_status(self, force: bool = False) -> None:
        status = self.status_line()
        if force or status != self._last_status:
            self.notifier.status(status)
            self._last_status = status

    async def _keepalive(self) -> None:
        assert self.notifier.watchdog_usec
        period = self.notifier.watchdog_usec / 2_000_000
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period)

    def reloading(self) -> None:
        self.notifier.reloading("reloading the configuration")

    def reloaded(self, problem: str | None = None) -> None:
        """READY=1 again; ``problem`` (what went wrong, if anything) stays in STATUS."""
        self.note = problem
        status = self.status_line()
        self.notifier.ready(status)
        self._last_status = status

    def stopping(self) -> None:
        self.notifier.stopping("stopping")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.notifier.close()


def install_test_hooks(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR2 blocks the loop, only when BLOCK_LOOP_ENV asks for it (tests of the watchdog)."""
    raw = os.environ.get(BLOCK_LOOP_ENV)
    if not raw:
        return
    seconds = float(raw)
    log.warning("test hook enabled: SIGUSR2 blocks the event loop", seconds=seconds,
                env=BLOCK_LOOP_ENV)

    def block() -> None:
        log.warning("blocking the event loop (test hook)", seconds=seconds)
        time.sleep(seconds)  # on purpose: this is the hung loop the watchdog must notice

    loop.add_signal_handler(signal.SIGUSR2, block)

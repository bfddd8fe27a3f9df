"""Bind an aiohttp application to an address and report where it really listens."""

from __future__ import annotations

import socket

from aiohttp import web

from credential_sidecar.logs import get_logger

log = get_logger()

# How long a stop waits for requests already accepted to be answered. aiohttp's default (60 s)
# outlasts the unit's TimeoutStopSec=20s, so systemd killed daemons mid-answer; a credential
# request takes milliseconds, so a few seconds is plenty and leaves systemd's bound far away.
SHUTDOWN_SECONDS = 4.0


class Listener:
    def __init__(
        self, door: str, app: web.Application, host: str, port: int,
        sock: socket.socket | None = None,
    ) -> None:
        self.door = door
        self.app = app
        self.host = host
        self.port = port
        self.sock = sock  # a listening socket from systemd (socket activation): serve it as is
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful when asked for port 0)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=SHUTDOWN_SECONDS)
        await self._runner.setup()
        site: web.BaseSite
        if self.sock is not None:
            site = web.SockSite(self._runner, self.sock)
        else:
            site = web.TCPSite(self._runner, self.host.strip("[]"), self.port, reuse_address=True)
        await site.start()
        if self.sock is not None:
            self.host = str(self._runner.addresses[0][0])
        self.port = int(self._runner.addresses[0][1])
        log.info("listening", door=self.door, address=self.url, activated=self.sock is not None)
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

"""Bind an aiohttp application to an address and report where it really listens.

Every listener is bounded (docs: README, "Bounded resources"): a connection that has not sent a
whole request within ``IDLE_SECONDS`` of connecting, or of its last answer, is closed (aiohttp's
keep-alive timer starts at connect and is not reset by partial data, so it is also the header
read timeout); request lines and header fields are capped; and a :class:`ConnectionGate` closes
connections beyond the door's and the peer uid's share at accept.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from credential_sidecar.doors.access import ConnectionGate, GatedProtocol
from credential_sidecar.logs import get_logger

log = get_logger()

IDLE_SECONDS = 5.0  # keep-alive and header read timeout
MAX_LINE = 8190  # request line and each header line, bytes (aiohttp's default, made explicit)
MAX_HEADERS = 64


async def _serve(runner: web.AppRunner, gate: ConnectionGate | None, sock: socket.socket | None,
                 host: str, port: int) -> asyncio.AbstractServer:
    server = runner.server
    assert server is not None

    def factory() -> asyncio.Protocol:
        inner = server()
        return inner if gate is None else GatedProtocol(inner, gate)

    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=128)
    return await loop.create_server(factory, host, port, reuse_address=True, backlog=128)


class _Site(web.BaseSite):
    """aiohttp's TCPSite/SockSite, with the gate between the kernel and aiohttp's protocol."""

    __slots__ = ("_gate", "_host", "_port", "_sock")

    def __init__(self, runner: web.AppRunner, gate: ConnectionGate | None,
                 sock: socket.socket | None, host: str, port: int) -> None:
        super().__init__(runner)
        self._gate, self._sock, self._host, self._port = gate, sock, host, port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        assert isinstance(self._runner, web.AppRunner)
        self._server = await _serve(self._runner, self._gate, self._sock, self._host,
                                    self._port)


class Listener:
    def __init__(
        self, door: str, app: web.Application, host: str, port: int,
        sock: socket.socket | None = None, gate: ConnectionGate | None = None,
    ) -> None:
        self.door = door
        self.app = app
        self.host = host
        self.port = port
        self.sock = sock  # a listening socket from systemd (socket activation): serve it as is
        self.gate = gate
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful when asked for port 0)."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_SECONDS,
            max_line_size=MAX_LINE, max_field_size=MAX_LINE, max_headers=MAX_HEADERS,
        )
        await self._runner.setup()
        site = _Site(self._runner, self.gate, self.sock, self.host.strip("[]"), self.port)
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

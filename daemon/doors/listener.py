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

# How long a stop waits for requests already accepted to be answered. aiohttp's default (60 s)
# outlasts the unit's TimeoutStopSec=20s, so systemd killed daemons mid-answer; a credential
# request takes milliseconds, so a few seconds is plenty and leaves systemd's bound far away.
SHUTDOWN_SECONDS = 4.0
# A connection accepted just before a stop has usually not sent its request yet; aiohttp would
# close it as idle, and the client would see a reset. It gets this long to send one (a client
# that connects and never sends delays a stop by this much, no more).
FIRST_REQUEST_GRACE = SHUTDOWN_SECONDS
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
            shutdown_timeout=SHUTDOWN_SECONDS,
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
        """Stop accepting, let connections just accepted send their request, answer every
        request already read (bounded by SHUTDOWN_SECONDS), close idle keep-alive connections.

        With socket activation the listening socket stays with systemd, so connections that
        arrive meanwhile wait in its queue for the next process: a restart drops none."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        await _first_requests(runner)
        await runner.cleanup()


async def _first_requests(runner: web.AppRunner) -> None:
    server = runner.server
    if server is None:
        return
    # Connections accepted in the last turn get their protocol a few loop turns later
    # (asyncio creates the transport in a task): let them register before looking.
    for _ in range(8):
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_REQUEST_GRACE
    # aiohttp counts each connection's requests (no public name for it yet); nothing signals
    # "a first request arrived", so this polls, briefly and only during a stop.
    while loop.time() < deadline and any(  # noqa: ASYNC110
        _unanswered(handler) for handler in server.connections
    ):
        await asyncio.sleep(0.01)


def _unanswered(handler: object) -> bool:
    """A connection that has sent no request yet, or whose request is read but not answered.

    aiohttp has no public name for these (its shutdown cancels a request that is parsed but not
    yet picked up by its handler): the private counters are read defensively."""
    return bool(getattr(handler, "_request_count", 1) == 0
                or getattr(handler, "_messages", None)
                or getattr(handler, "_request_in_progress", False))

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
import weakref

from aiohttp import web

from credential_sidecar.doors.access import ConnectionGate
from credential_sidecar.logs import get_logger

log = get_logger()

# How long a stop waits for requests already accepted to be answered. aiohttp's default (60 s)
# outlasts the unit's TimeoutStopSec=20s, so systemd killed daemons mid-answer; a credential
# request takes milliseconds, so a few seconds is plenty and leaves systemd's bound far away.
SHUTDOWN_SECONDS = 4.0
# A connection accepted just before a stop has usually not sent its request yet; aiohttp would
# close it as idle, and the client would see a reset. It gets this long to send one and be
# answered (a client that connects and never sends delays a stop by this much, no more).
FIRST_REQUEST_GRACE = SHUTDOWN_SECONDS
IDLE_SECONDS = 5.0  # keep-alive and header read timeout
MAX_LINE = 8190  # request line and each header line, bytes (aiohttp's default, made explicit)
MAX_HEADERS = 64


class _Watch:
    """What a stop must know about one listener's connections, from public hooks only: which
    were accepted but are not connected to aiohttp yet, and which still owe their client an
    answer.

    A connection owes one until a response was prepared for it (its first request may not even
    have arrived) and again whenever bytes came in since its last answer (a request in flight).
    """

    def __init__(self) -> None:
        self.stopping = False  # from then on every answer says "Connection: close"
        # Protocols asyncio asked for once the stop began, whose connection_made is still to
        # come (only those: one whose transport failed long ago must not hold every stop).
        self._unmade: set[_Watched] = set()
        self._answered: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._unread: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._changed = asyncio.Event()

    def protocol(self, inner: asyncio.Protocol, gate: ConnectionGate | None) -> asyncio.Protocol:
        watched = _Watched(inner, self, gate)
        if self.stopping:
            self._unmade.add(watched)
        return watched

    def connected(self, watched: _Watched) -> None:
        self._unmade.discard(watched)
        self._changed.set()

    def received(self, transport: asyncio.BaseTransport) -> None:
        self._unread.add(transport)

    def lost(self) -> None:
        self._changed.set()

    async def on_response_prepare(self, request: web.BaseRequest,
                                  response: web.StreamResponse) -> None:
        """An aiohttp signal: this connection is being answered."""
        if self.stopping:  # the client must not send another request on this connection
            response.force_close()  # aiohttp closes it after this answer...
            response.headers["Connection"] = "close"  # ... and says so (headers are made first)
        transport = request.transport
        if transport is not None:
            self._answered.add(transport)
            self._unread.discard(transport)
        self._changed.set()

    def _owing(self, server: web.Server) -> bool:
        if self._unmade:
            return True
        for handler in server.connections:
            transport = handler.transport
            if transport is not None and (transport not in self._answered
                                          or transport in self._unread):
                return True
        return False

    async def settle(self, server: web.Server, grace: float) -> None:
        """Wait, at most ``grace`` seconds, until every connection accepted so far has been
        answered and none has a request in flight; idle keep-alive connections do not count.

        Call it once accepting has stopped: asyncio runs callbacks in the order they were
        scheduled, so after one turn every connection accepted before has either reached
        aiohttp or has its protocol made and waiting in ``_unmade``, and the wait covers it."""
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._owing(server):
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                log.warning("stopping with connections still unanswered", grace=grace)
                return
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass


class _Watched(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the door's gate (closed at accept beyond
    the door's or the peer's share of connections) and under the stop's watch."""

    def __init__(self, inner: asyncio.Protocol, watch: _Watch,
                 gate: ConnectionGate | None) -> None:
        self.inner = inner
        self.watch = watch
        self.gate = gate
        self.transport: asyncio.BaseTransport | None = None  # once admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.watch.connected(self)
        if self.gate is not None and not self.gate.admit(transport):
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # RST at once: the descriptor is freed now, not after linger
            else:
                transport.close()
            return
        self.transport = transport
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            if self.gate is not None:
                self.gate.release(self.transport)
            self.transport = None
            self.inner.connection_lost(exc)
        self.watch.lost()

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.watch.received(self.transport)
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def _serve(runner: web.AppRunner, gate: ConnectionGate | None, watch: _Watch,
                 sock: socket.socket | None, host: str, port: int) -> asyncio.Server:
    server = runner.server
    assert server is not None

    def factory() -> asyncio.Protocol:
        return watch.protocol(server(), gate)

    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=128)
    return await loop.create_server(factory, host, port, reuse_address=True, backlog=128)


class _Site(web.BaseSite):
    """aiohttp's TCPSite/SockSite, with the gate between the kernel and aiohttp's protocol, and
    a way to stop accepting without closing the listening socket yet (see :meth:`pause`)."""

    __slots__ = ("_gate", "_host", "_listening", "_port", "_sock", "_watch")

    def __init__(self, runner: web.AppRunner, gate: ConnectionGate | None, watch: _Watch,
                 sock: socket.socket | None, host: str, port: int) -> None:
        super().__init__(runner)
        self._gate, self._watch, self._sock, self._host, self._port = (
            gate, watch, sock, host, port)
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, as asyncio lends them (setsockopt works on them)."""
        server = self._listening
        return list(server.sockets) if server is not None else []

    async def start(self) -> None:
        await super().start()
        assert isinstance(self._runner, web.AppRunner)
        self._listening = await _serve(self._runner, self._gate, self._watch, self._sock,
                                       self._host, self._port)
        self._server = self._listening

    def pause(self) -> None:
        """Stop accepting: the kernel keeps queueing connections on the listening socket.

        ``asyncio.Server.close()`` alone is not enough: a connection accepted in the loop turn
        before it gets its transport in a task that runs after, and that task then fails on
        the closed server (an assertion, silent without debug mode; CPython issue 109564): the
        socket is dropped with the client's request unread, and Linux answers with a reset.
        Removing the reader first leaves those tasks a live server to attach to."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.remove_reader(sock.fileno())


class Listener:
    def __init__(
        self, door: str, app: web.Application, host: str, port: int,
        sock: socket.socket | None = None, gate: ConnectionGate | None = None, *,
        hop_limit: int | None = None,
    ) -> None:
        self.door = door
        self.app = app
        self.host = host
        self.port = port
        self.sock = sock  # a listening socket from systemd (socket activation): serve it as is
        self.hop_limit = hop_limit  # IP TTL / IPv6 hop limit; accepted sockets inherit it
        self.gate = gate
        self._runner: web.AppRunner | None = None
        self._watch = _Watch()

    async def start(self) -> int:
        """Start serving; returns the bound port (useful when asked for port 0)."""
        self.app.on_response_prepare.append(self._watch.on_response_prepare)
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_SECONDS,
            max_line_size=MAX_LINE, max_field_size=MAX_LINE, max_headers=MAX_HEADERS,
            shutdown_timeout=SHUTDOWN_SECONDS,
        )
        await self._runner.setup()
        site = _Site(self._runner, self.gate, self._watch, self.sock, self.host.strip("[]"),
                     self.port)
        await site.start()
        if self.hop_limit is not None:
            for sock in site.sockets or ([self.sock] if self.sock else []):
                set_hop_limit(sock, self.hop_limit)
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
        """Stop accepting; let connections already accepted send their request and be answered
        (bounded by FIRST_REQUEST_GRACE), each answer saying "Connection: close"; then close
        the listening socket and idle keep-alive connections, and finish what is still in
        flight (bounded by SHUTDOWN_SECONDS).

        With socket activation the listening socket stays with systemd, so connections that
        arrive meanwhile wait in its queue for the next process: a restart drops none."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._watch.stopping = True
        for site in runner.sites:
            if isinstance(site, _Site):
                site.pause()
        if runner.server is not None:
            await self._watch.settle(runner.server, FIRST_REQUEST_GRACE)
        await runner.cleanup()


def set_hop_limit(sock: socket.socket, hops: int) -> None:
    """IP_TTL, and IPV6_UNICAST_HOPS on an IPv6 socket (whose IPv4-mapped peers use IP_TTL).
    On Linux a socket accept() returns inherits both from the listening socket."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
        except OSError:  # an IPv6-only socket may refuse it; its peers never use it
            pass
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)

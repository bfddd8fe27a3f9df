"""Local HTTPS / HTTP servers (aiohttp) on 127.0.0.1 for upstream tests."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.helpers.tls_pki import CA


async def drain(runner: web.AppRunner, within: float = 5.0) -> None:
    """Wait (bounded) until clients have hung up, so no TLS shutdown is pending at cleanup.

    Through a proxy the client's close reaches the server only when the proxy relays it; an
    aiohttp server cleaned up before that leaves the TLS transport half-closed, and the loop's
    end then reports it as an unclosed socket (ResourceWarning).
    """
    server = runner.server
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.01)):  # bounded: aiohttp offers no "connections gone" event
        if server is None or not server.connections or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)


@dataclass
class TLSServer:
    url: str
    port: int
    ca_pem: Path
    hits: list[str] = field(default_factory=list)


def hello_app() -> web.Application:
    """The least app a listener can serve: GET / answers "hello"."""
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    return app


def _ok_app(hits: list[str], *, with_host: bool) -> web.Application:
    """Any path -> ``ok``; each request noted in ``hits`` (with its Host when ``with_host``)."""

    async def ok(request: web.Request) -> web.Response:
        hit = f"{request.method} {request.path_qs}"
        hits.append(f"{hit} host={request.host}" if with_host else hit)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


@asynccontextmanager
async def _serve(
    app: web.Application, hits: list[str], ca_pem: Path, ssl_context: ssl.SSLContext | None
) -> AsyncIterator[TLSServer]:
    """Serve ``app`` on a free 127.0.0.1 port (https with ``ssl_context``, else http)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        port = runner.addresses[0][1]
        scheme = "http" if ssl_context is None else "https"
        yield TLSServer(f"{scheme}://127.0.0.1:{port}", port, ca_pem, hits)
    finally:
        await drain(runner)
        await runner.cleanup()


@asynccontextmanager
async def https_server(
    tmp: Path,
    *,
    names: Sequence[str] = ("127.0.0.1", "localhost", "::1"),
    app: web.Application | None = None,
    ca: CA | None = None,
) -> AsyncIterator[TLSServer]:
    """Serve ``app`` (default: any path -> ``ok``) over TLS with a cert for ``names``.

    The server's CA is written to ``tmp/ca.pem`` (``TLSServer.ca_pem``).
    """
    ca = ca or CA.new()
    ca_pem = ca.write(tmp / "ca.pem")
    server_ctx = ca.issue_server(*names).server_context(tmp)
    hits: list[str] = []
    if app is None:
        app = _ok_app(hits, with_host=True)
    async with _serve(app, hits, ca_pem, server_ctx) as server:
        yield server


@asynccontextmanager
async def http_server(app: web.Application | None = None) -> AsyncIterator[TLSServer]:
    """Plain http on 127.0.0.1 (for proxy tests of http:// targets)."""
    hits: list[str] = []
    if app is None:
        app = _ok_app(hits, with_host=False)
    async with _serve(app, hits, Path("/nonexistent"), None) as server:
        yield server

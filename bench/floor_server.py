"""The Python floors: fixed bodies answered as cheaply as aiohttp, or Python itself, can.

Both answer what nginx answers in the serving benchmark, with the daemon's body sizes: a PUT
gets the token, a path ending in ``/`` the role name, anything else the credentials JSON. No Host
check, no token, no lookup, no metrics, no audit. The serving benchmark divides the daemon's
figures by theirs (and theirs by nginx's), measured in the same run.

- default: a bare aiohttp handler, served as the daemon serves its doors (same runner settings,
  no access log): the fastest this stack can answer;
- ``--raw``: an ``asyncio.Protocol`` writing pre-rendered responses (status line, Content-Type,
  Content-Length, body: no Date, no Server). It finds each request's end by ``\\r\\n\\r\\n`` and
  picks the body from the request line; it parses nothing else and checks nothing: the least a
  Python server can do per request;
- ``--uvloop``: either of them on uvloop's event loop instead of asyncio's (``pip install
  uvloop``, or the ``bench`` extra; it is no dependency of the daemon).

    python bench/floor_server.py --port-file PATH [--raw] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import cast

from aiohttp import web

# As long as what the daemon answers: a 40-character secret and a 512-character session token.
CREDENTIALS = json.dumps({
    "Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC",
    "AccessKeyId": "ASIA" + "A" * 16, "SecretAccessKey": "s" * 40, "Token": "t" * 512,
    "Expiration": "2026-01-01T01:00:00Z",
})
TOKEN = "f" * 76  # as long as an IMDS token
ROLE = "floor"  # the role list's one name


async def handle(request: web.Request) -> web.Response:
    if request.method == "PUT":
        return web.Response(text=TOKEN, content_type="text/plain")
    if request.path.endswith("/"):
        return web.Response(text=ROLE, content_type="text/plain")  # the role list
    return web.Response(text=CREDENTIALS, content_type="text/plain")


async def serve_aiohttp(port_file: Path, stop: asyncio.Event) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True).start()
    await asyncio.to_thread(port_file.write_text, str(runner.addresses[0][1]))
    await stop.wait()
    await runner.cleanup()


def rendered(body: str) -> bytes:
    """A whole HTTP/1.1 200 answer, ready to write."""
    data = body.encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data))


TOKEN_ANSWER, ROLE_ANSWER = rendered(TOKEN), rendered(ROLE)
CREDENTIALS_ANSWER = rendered(CREDENTIALS)


class RawFloor(asyncio.Protocol):
    """Per request: find its end, look at its request line, write a pre-rendered answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            line = buffer[:buffer.find(b"\r\n")]  # METHOD PATH VERSION
            if line.startswith(b"PUT "):
                self.transport.write(TOKEN_ANSWER)
            elif line.rsplit(b" ", 1)[0].endswith(b"/"):
                self.transport.write(ROLE_ANSWER)
            else:
                self.transport.write(CREDENTIALS_ANSWER)
            buffer = buffer[end + 4:]
        self.buffer = buffer


async def serve_raw(port_file: Path, stop: asyncio.Event) -> None:
    server = await asyncio.get_running_loop().create_server(RawFloor, "127.0.0.1", 0,
                                                            reuse_address=True)
    await asyncio.to_thread(port_file.write_text, str(server.sockets[0].getsockname()[1]))
    await stop.wait()
    server.close()


async def serve(port_file: Path, raw: bool) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await (serve_raw if raw else serve_aiohttp)(port_file, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--raw", action="store_true", help="asyncio.Protocol, no aiohttp")
    parser.add_argument("--uvloop", action="store_true", help="on uvloop's event loop")
    args = parser.parse_args()
    served = serve(args.port_file, args.raw)
    if args.uvloop:
        import uvloop  # only here: the daemon does not depend on it

        uvloop.run(served)
    else:
        asyncio.run(served)


if __name__ == "__main__":
    main()

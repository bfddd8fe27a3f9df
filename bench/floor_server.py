"""The floor: a bare aiohttp handler answering fixed bodies, served as the daemon serves its doors.

Same aiohttp, same runner settings (no access log), same body sizes as the daemon's answers, but
no Host check, no token, no lookup and no metrics: the fastest this stack can answer. The serving
benchmarks divide the daemon's figures by this one's, measured in the same run.

    python bench/floor_server.py --port-file PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from aiohttp import web

# As long as what the daemon answers: a 40-character secret and a 512-character session token.
CREDENTIALS = json.dumps({
    "Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC",
    "AccessKeyId": "ASIA" + "A" * 16, "SecretAccessKey": "s" * 40, "Token": "t" * 512,
    "Expiration": "2026-01-01T01:00:00Z",
})
TOKEN = "f" * 76  # as long as an IMDS token


async def handle(request: web.Request) -> web.Response:
    if request.method == "PUT":
        return web.Response(text=TOKEN, content_type="text/plain")
    if request.path.endswith("/"):
        return web.Response(text="floor", content_type="text/plain")  # the role list
    return web.Response(text=CREDENTIALS, content_type="text/plain")


async def serve(port_file: Path) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True).start()
    await asyncio.to_thread(port_file.write_text, str(runner.addresses[0][1]))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    asyncio.run(serve(parser.parse_args().port_file))

"""CPU seconds per renewal for RSA-2048, P-256 and P-384 keys.

In this process: N renewals through the daemon's own code (``CredentialManager.renew``: sign
with SigV4-X509, POST CreateSession with aiohttp, parse, seal the set into the AES-GCM cache
and fsync it, log the renewal), timed with ``time.process_time()`` so that only this process's
CPU counts (cache writes run in threads and are counted too). The emulator runs in its own
process, so its verification work is not counted: it plays AWS.

Same-run baselines: the same POST with the same body over the same aiohttp session but unsigned
(the emulator refuses it at once: the cost of an HTTP round trip in this stack), and the
signing alone (``signer.sign_request``).

    .venv/bin/python bench/renewal_cpu.py [--renewals 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import common as c

from credential_sidecar import logs
from credential_sidecar.clock import SystemClock, utc
from credential_sidecar.config.model import RolesAnywhereConnection
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.state.cache import CredentialCache
from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource
from credential_sidecar.upstream.sigv4_x509 import sign_request

h = c.h
KEYS = {"rsa": "RSA-2048", "p256": "P-256", "p384": "P-384"}


def per_call(count: int, started: float) -> float:
    return (time.process_time() - started) / count


async def measure(material: h.Pki, endpoint: str, count: int, tmp: Path) -> dict[str, float]:
    conn = RolesAnywhereConnection.model_validate(h.connection("cpu", material, endpoint))
    clock = SystemClock()
    async with aiohttp.ClientSession() as http:
        source = RolesAnywhereSource(conn, clock, http=http)
        manager = CredentialManager({"cpu": source}, clock,
                                    store=CredentialCache(tmp / "cache", os.urandom(32)))
        for _ in range(10):  # warm up: connection pool, identity loaded, caches
            await manager.renew("cpu")
        started = time.process_time()
        for _ in range(count):
            await manager.renew("cpu")
        renewal = per_call(count, started)
        if manager.states["cpu"].renewals["error"]:
            raise RuntimeError(f"renewals failed: {manager.states['cpu'].last_error}")

        identity = await source.identity.get()
        body = source.request_body()
        started = time.process_time()
        for _ in range(count):
            sign_request(method="POST", url=source.url,
                         headers={"Content-Type": "application/json"}, body=body,
                         region=conn.region, service="rolesanywhere", when=utc(clock.time()),
                         certificate=identity.certificate, private_key=identity.private_key,
                         chain=identity.chain)
        signing = per_call(count, started)

        started = time.process_time()
        for _ in range(count):
            async with http.post(source.url, data=body,
                                 headers={"Content-Type": "application/json"}) as response:
                await response.text()
                if response.status != 403:
                    raise RuntimeError(f"unsigned request answered {response.status}")
        unsigned = per_call(count, started)
    return {"renewal_ms": renewal * 1000, "signing_ms": signing * 1000,
            "unsigned_round_trip_ms": unsigned * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renewals", type=int, default=300, help="per key type")
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull, \
            tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp_name:
        logs.configure("json", "info", stream=devnull)  # rendered as the daemon does, not kept
        tmp = Path(tmp_name)
        materials = {key: h.make_pki(tmp / key, key, name=key) for key in KEYS}  # type: ignore[arg-type]
        if c.pinned(c.SERVER_CPU):
            os.sched_setaffinity(0, {int(c.SERVER_CPU)})  # as the daemon is pinned elsewhere
        with c.emulator(tmp, [m.ca_file for m in materials.values()]) as emu:
            results: dict[str, Any] = {
                key: asyncio.run(measure(material, emu.url, args.renewals, tmp / key))
                for key, material in materials.items()
            }
    rows = []
    for key, row in results.items():
        row["renewal_over_round_trip"] = row["renewal_ms"] / row["unsigned_round_trip_ms"]
        rows.append([KEYS[key], f"{row['renewal_ms']:.2f}", f"{row['signing_ms']:.3f}",
                     f"{row['unsigned_round_trip_ms']:.2f}",
                     f"{row['renewal_over_round_trip']:.1f}",
                     f"{1000 / row['renewal_ms']:,.0f}"])
    table = c.markdown(["key", "CPU ms per renewal", "signing alone ms",
                        "unsigned round trip ms (baseline)", "renewal / round trip",
                        "renewals per CPU second"], rows)
    note = (f"{args.renewals} renewals per key type, one at a time, through "
            "CredentialManager.renew (sign, POST, parse, seal and fsync the cache file, log); "
            "process CPU time, the emulator's excluded.")
    c.write_result("renewal_cpu", {"settings": vars(args), "results": results}, [table, note])


if __name__ == "__main__":
    main()

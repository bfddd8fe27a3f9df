"""Cold start at scale: 1 000 connections against an upstream that takes 50 ms to answer.

The daemon renews at most ``Policy.max_concurrent_renewals`` connections at once, so the ideal
cold start is ``ceil(connections / concurrency) * latency``; the ratio column says how far the
real daemon is from it. Same-run baselines: the daemon's fixed start-up cost (one connection,
same emulator), and a warm restart of the 1 000 (every set restored from the cache, no upstream
call). Times come from the daemon's own log timestamps: its first ``listening`` event (the
process is up, listeners bound) and its ``ready`` event (every connection holds a set).

    .venv/bin/python bench/cold_start.py [--connections 1000] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import common as c

from credential_sidecar.renewal.schedule import Policy

h = c.h


def start_to_ready(tmp: Path, conns: list[dict[str, Any]], timeout: float) -> dict[str, float]:
    """Start the daemon, wait for its ``ready`` event; seconds from spawn and from listening."""
    tmp.mkdir(exist_ok=True)
    spawned = time.time()
    with h.daemon(tmp, conns, log_level="info", wait_ready=False,
                  prefix=c.pinned(c.SERVER_CPU)) as daemon:
        h.wait_for(lambda: c.log_times(daemon, "ready"), timeout=timeout,
                   what="the daemon's ready event")
        listening = min(c.log_times(daemon, "listening"))
        ready = c.log_times(daemon, "ready")[0]
        renewed = len(c.log_times(daemon, "credentials renewed"))
        restored = sum(1 for e in daemon.events()
                       if e.get("event") == "credentials restored from cache")
        cpu = c.cpu_seconds(daemon.process.proc.pid)
    return {"spawn_to_ready_s": ready - spawned, "listening_to_ready_s": ready - listening,
            "spawn_to_listening_s": listening - spawned, "renewed": renewed,
            "restored": restored, "daemon_cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="emulator delay, seconds")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    concurrency = Policy().max_concurrent_renewals
    ideal = math.ceil(args.connections / concurrency) * args.latency

    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp_name:
        tmp = Path(tmp_name)
        material = h.make_pki(tmp / "pki")
        with c.emulator(tmp, [material.ca_file]) as emu:
            emu.faults(delay_seconds=args.latency)
            one = start_to_ready(tmp / "one", c.connections(1, material, emu.url), args.timeout)
            calls_one = emu.stats()["calls"]
            many = c.connections(args.connections, material, emu.url)
            cold = start_to_ready(tmp / "many", many, args.timeout)
            calls_cold = emu.stats()["calls"] - calls_one
            warm = start_to_ready(tmp / "many", many, args.timeout)  # same state_dir: cached
            calls_warm = emu.stats()["calls"] - calls_cold - calls_one

    cold_work = cold["listening_to_ready_s"]
    rows = [
        [f"{args.connections} connections, cold", f"{cold['spawn_to_ready_s']:.2f}",
         f"{cold_work:.2f}", f"{ideal:.2f}", f"{cold_work / ideal:.2f}", calls_cold,
         f"{cold['daemon_cpu_s']:.1f}"],
        [f"{args.connections} connections, warm restart (cache)",
         f"{warm['spawn_to_ready_s']:.2f}", f"{warm['listening_to_ready_s']:.2f}", "0", "",
         calls_warm, f"{warm['daemon_cpu_s']:.1f}"],
        ["1 connection, cold (fixed start-up cost)", f"{one['spawn_to_ready_s']:.2f}",
         f"{one['listening_to_ready_s']:.2f}", f"{args.latency:.2f}",
         f"{one['listening_to_ready_s'] / args.latency:.2f}", calls_one,
         f"{one['daemon_cpu_s']:.1f}"],
    ]
    table = c.markdown(["start", "spawn -> ready s", "listening -> ready s", "ideal s",
                        "ratio to ideal", "CreateSession calls", "daemon CPU s"], rows)
    note = (f"Emulator latency {args.latency * 1000:g} ms per CreateSession; at most "
            f"{concurrency} renewals at once (Policy.max_concurrent_renewals), so the ideal is "
            f"ceil({args.connections} / {concurrency}) x {args.latency * 1000:g} ms = "
            f"{ideal:.2f} s. 'listening -> ready' leaves out the interpreter's start and the "
            "config load (spawn -> listening).")
    c.write_result("cold_start", {
        "settings": vars(args), "concurrency": concurrency, "ideal_s": ideal,
        "one": one, "cold": cold, "warm": warm,
        "calls": {"one": calls_one, "cold": calls_cold, "warm": calls_warm},
    }, [table, note])


if __name__ == "__main__":
    main()

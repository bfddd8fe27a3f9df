"""Start-up: spawn to ready from the cache, next to the imports the daemon cannot avoid.

A restarted daemon serves from its sealed cache without an upstream call, so what a restart
costs is the process itself: the interpreter, imports, the config's validation, unsealing the
cache, binding the doors. Timed here, in interleaved rounds, each a fresh process on the same
CPU:

- the floor: ``python -c "import asyncio, ssl, aiohttp, aiohttp.web, cryptography..., pydantic,
  structlog, prometheus_client"`` (``common.FLOOR_IMPORTS``), the libraries ``run`` needs for one
  Roles Anywhere connection (HTTP server and client, signing and the cache's AES-GCM, config
  validation, logs, /metrics), from spawn to the child's clock after the imports;
- ``python -c pass``, the interpreter with site, and ``import credential_sidecar.supervisor``,
  everything ``run`` imports, for where the time goes;
- the daemon with one Roles Anywhere connection, restarted on a filled cache: spawn to its
  ``ready`` log event (every connection holds a set, the doors are listening).

Our package's modules are compiled first (``compileall``), as pip does when it installs the wheel;
otherwise PYTHONDONTWRITEBYTECODE would have every start compile them again.

The Go ``aws_signing_helper``'s 15-21 ms start (issue #16) was measured outside this suite: it
cannot be installed here.

    .venv/bin/python bench/startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common as c

h = c.h
GOAL = 2.0
FLOOR_IMPORTS = c.FLOOR_IMPORTS


def wall(code: str) -> float:
    """Seconds from spawn to the end of ``code`` in a fresh interpreter, by the child's clock as
    the daemon's ready event is (the interpreter's exit is left out of both)."""
    spawned = time.time()
    done = subprocess.run([sys.executable, "-c", code + "\nimport time; print(time.time())"],
                          check=True, env=h.clean_env(), capture_output=True, text=True)
    return float(done.stdout.split()[-1]) - spawned


def warm_start(tmp: Path, conns: list[dict[str, object]]) -> dict[str, float]:
    """Start the daemon on a filled cache; spawn to its listening and ready events."""
    tmp.mkdir(exist_ok=True)
    spawned = time.time()
    with h.daemon(tmp, conns, log_level="info", wait_ready=False) as daemon:
        h.wait_for(lambda: c.log_times(daemon, "ready"), timeout=60, what="the ready event")
        ready = c.log_times(daemon, "ready")[0]
        listening = min(c.log_times(daemon, "listening"))
        restored = sum(1 for e in daemon.events()
                       if e.get("event") == "credentials restored from cache")
        renewed = len(c.log_times(daemon, "credentials renewed"))
    return {"ready_s": ready - spawned, "listening_s": listening - spawned,
            "restored": restored, "renewed": renewed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    compileall.compile_dir(c.ROOT / "daemon", quiet=1)
    commands = {
        "python -c pass (interpreter and site)": "pass",
        "import floor (the libraries run needs)": "import " + ", ".join(FLOOR_IMPORTS),
        "import credential_sidecar.supervisor (all run imports)":
            "import credential_sidecar.supervisor",
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    ready: list[float] = []
    listening: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp_name:
        tmp = Path(tmp_name)
        material = h.make_pki(tmp / "pki")
        with c.emulator(tmp, [material.ca_file]) as emu:
            conns = c.connections(1, material, emu.url)
            first = warm_start(tmp / "d", conns)  # fills the cache (one CreateSession)
            calls = emu.stats()["calls"]
            for command in commands.values():
                wall(command)  # warm-up: page cache
            for _ in range(args.rounds):
                for name, command in commands.items():
                    times[name].append(wall(command))
                run = warm_start(tmp / "d", conns)
                assert run["restored"] == 1 and run["renewed"] == 0, run
                ready.append(run["ready_s"])
                listening.append(run["listening_s"])
            restart_calls = emu.stats()["calls"] - calls
    floor = statistics.median(times["import floor (the libraries run needs)"])
    rows = []
    results = {}
    for name, values in [*times.items(), ("spawn -> listening, restart from the cache", listening),
                         ("spawn -> ready, restart from the cache", ready)]:
        median = statistics.median(values)
        results[name] = {"median_ms": median * 1000, "p90_ms": c.percentile(values, 90) * 1000,
                         "ratio_to_floor": median / floor}
        rows.append([name, f"{median * 1000:.0f}", f"{c.percentile(values, 90) * 1000:.0f}",
                     f"{median / floor:.2f}"])
    ratio = statistics.median(ready) / floor
    table = c.markdown(["process (fresh each)", "median ms", "p90 ms", "ratio to import floor"],
                       rows)
    note = (f"{args.rounds} interleaved rounds, spawn to the child's own clock after its imports "
            f"(or its ready event), interpreter exit left out; one Roles Anywhere "
            f"connection restored from the sealed cache ({restart_calls} CreateSession calls "
            f"over all restarts; the first start, which filled the cache, took "
            f"{first['ready_s'] * 1000:.0f} ms). Import floor: `import "
            f"{', '.join(FLOOR_IMPORTS)}`. Goal: spawn -> ready within {GOAL:g}x the import "
            f"floor: {'met' if ratio <= GOAL else 'missed'} ({ratio:.2f}x). The Go "
            "aws_signing_helper's 15-21 ms start (issue #16) was measured outside this suite; "
            "it cannot be installed here.")
    c.write_result("startup", {"settings": vars(args), "floor_imports": FLOOR_IMPORTS,
                               "results": results, "ratio": ratio,
                               "goals": {"within_2x_of_import_floor": ratio <= GOAL},
                               "restart_upstream_calls": restart_calls}, [table, note])


if __name__ == "__main__":
    main()

"""Run every benchmark, one after another, then write bench/results/summary.md.

Each benchmark runs in its own process and writes bench/results/<name>.json; the summary
gathers their tables under the machine they ran on (what the README's Benchmarks section
shows). bench/fleet_simulation.py is a different thing (fleet CreateSession rates) and is not
run here, nor is bench/soak.py unless named (``--only soak``: 20 minutes).

    .venv/bin/python bench/run_all.py [--only serving renewing ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import common as c

BENCHMARKS = {
    "serving": "Serving: IMDS fetch and container GET next to nginx, the Python floors and moto",
    "renewing": "Serving while 1 000 connections renew",
    "cold_start": "Cold start at scale",
    "startup": "Start-up from the cache next to its import floor",
    "renewal_cpu": "CPU per renewal",
    "memory": "Memory",
    "credential_process": "credential-process",
    "soak": "Soak: client-visible failures while a good set existed, under faults (20 min)",
    "hardware_keys": "Hardware keys (SoftHSM2, swtpm) next to key files",
}
LONG = {"soak"}  # run only when named with --only


def summary(names: list[str]) -> str:
    """Each benchmark's tables under when it ran and the machine's load then (the load
    average is read when a benchmark writes its result); the machine once, at the top."""
    docs = {name: json.loads((c.RESULTS / f"{name}.json").read_text()) for name in names}
    machine = max(docs.values(), key=lambda d: str(d["when"]))["machine"]
    lines = [
        f"On {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB, Linux "
        f"{machine['kernel']}, Python {machine['python']}, aiohttp {machine['aiohttp']}. Compare "
        "the ratios, not the milliseconds: other jobs may have shared the machine.",
        "",
    ]
    for name in names:
        load = ", ".join(f"{x:.2f}" for x in docs[name]["machine"]["load_average"])
        lines += [f"#### {BENCHMARKS[name]} (`bench/{name}.py`)", "",
                  f"Measured {docs[name]['when']}; load average when it finished {load}.", ""]
        for table in docs[name]["tables"]:
            lines += [table, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS),
                        default=[name for name in BENCHMARKS if name not in LONG])
    args = parser.parse_args()
    for name in args.only:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(c.BENCH / f"{name}.py")], check=True)
        print(f"== {name}: {time.monotonic() - started:.0f} s", flush=True)
    present = [name for name in BENCHMARKS if (c.RESULTS / f"{name}.json").exists()]
    path = c.RESULTS / "summary.md"
    path.write_text(summary(present))
    print(f"written to {path.relative_to(c.ROOT)}")


if __name__ == "__main__":
    main()

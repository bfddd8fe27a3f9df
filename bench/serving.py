"""Serving: how fast the doors answer under concurrent load, next to a floor and to moto.

Three servers run side by side, each pinned to the same CPU, and take turns under the same wrk
load from another CPU (rounds interleaved, so drift on a noisy machine hits all alike):

- the bare floor (bench/floor_server.py): aiohttp answering fixed bodies, nothing else;
- the daemon with one Roles Anywhere connection (IMDS and container doors);
- moto in server mode, whose instance-metadata emulation answers the same IMDS paths.

Workloads: the full botocore IMDS fetch (PUT /latest/api/token, GET the role list, GET the
role's credentials) and one container-credentials GET with the connection's token. Goals: the
daemon at least 0.7 of the floor, and faster than moto.

    .venv/bin/python bench/serving.py [--seconds 4] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import common as c

h = c.h
GOAL_FLOOR_RATIO = 0.7


def measure(targets: dict[str, tuple[str, dict[str, Any]]], rounds: int, seconds: float,
            connections: int) -> dict[str, list[c.Load]]:
    """Each target ``rounds`` times, interleaved: name -> its loads."""
    runs: dict[str, list[c.Load]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, options) in targets.items():
            runs[name].append(c.wrk(name, url, seconds=seconds, connections=connections,
                                    **options))
    return runs


def summarize(runs: list[c.Load]) -> dict[str, Any]:
    samples = [s for run in runs for s in run.samples]
    pooled = c.Load(runs[0].target, runs[0].mode, sum(r.seconds for r in runs),
                    sum(r.requests for r in runs), len(samples), sum(r.failed for r in runs),
                    {k: sum(r.errors[k] for r in runs) for k in runs[0].errors}, samples)
    return {
        "per_second": statistics.median(r.units_per_second for r in runs),
        "per_second_rounds": [round(r.units_per_second, 1) for r in runs],
        "p50_ms": pooled.latency_ms(50), "p99_ms": pooled.latency_ms(99),
        "failed": pooled.failed, "errors": pooled.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        material = h.make_pki(tmp / "pki")
        emu = stack.enter_context(c.emulator(tmp, [material.ca_file]))
        floor = stack.enter_context(c.floor_server(tmp))
        moto = stack.enter_context(c.moto_server(tmp))
        daemon = stack.enter_context(h.daemon(
            tmp, c.connections(1, material, emu.url), log_level="info",
            prefix=c.pinned(c.SERVER_CPU), extra={"container": {"listen": "127.0.0.1:0"}}))
        imds = daemon.url("imds:c0000").rstrip("/")
        container = daemon.url("container").rstrip("/")
        token = (tmp / "state" / "tokens" / "c0000.token").read_text()
        fetch = measure({"floor": (floor, {}), "daemon": (imds, {}), "moto": (moto, {})},
                        args.rounds, args.seconds, args.connections)
        get = {"mode": "get"}
        single = measure({
            "floor": (floor, {**get, "path": "/v1/credentials/c0000", "auth": token}),
            "daemon": (container, {**get, "path": "/v1/credentials/c0000", "auth": token}),
        }, args.rounds, args.seconds, args.connections)

    results = {
        "imds_fetch": {name: summarize(runs) for name, runs in fetch.items()},
        "container_get": {name: summarize(runs) for name, runs in single.items()},
    }
    rows = []
    for workload, label, unit in (("imds_fetch", "IMDS fetch (PUT + 2 GETs)", "fetches/s"),
                                  ("container_get", "container GET", "GETs/s")):
        group = results[workload]
        floor_rate = group["floor"]["per_second"]
        for name, row in group.items():
            row["ratio_to_floor"] = row["per_second"] / floor_rate
            rows.append([label, name, f"{row['per_second']:,.0f} {unit}",
                         f"{row['ratio_to_floor']:.2f}", f"{row['p50_ms']:.2f}",
                         f"{row['p99_ms']:.2f}", row["failed"]])
    daemon_fetch, moto_fetch = results["imds_fetch"]["daemon"], results["imds_fetch"]["moto"]
    goals = {
        "imds_fetch_at_least_0.7_of_floor": daemon_fetch["ratio_to_floor"] >= GOAL_FLOOR_RATIO,
        "container_get_at_least_0.7_of_floor":
            results["container_get"]["daemon"]["ratio_to_floor"] >= GOAL_FLOOR_RATIO,
        "faster_than_moto": daemon_fetch["per_second"] > moto_fetch["per_second"],
    }
    table = c.markdown(["workload", "server", "throughput", "ratio to floor", "p50 ms", "p99 ms",
                        "failed"], rows)
    note = (f"{args.connections} concurrent clients (wrk, one connection each, own CPU); "
            f"{args.rounds} interleaved runs of {args.seconds:g} s per server, median "
            "throughput, latency percentiles over all runs. Daemon vs moto: "
            f"{daemon_fetch['per_second'] / moto_fetch['per_second']:.1f}x. moto does the whole "
            "fetch (its token PUT answers a fixed fake token, which its GETs do not check) and "
            "answers every request with `Connection: close`, so its clients reconnect each "
            "time. moto has no container-credentials endpoint.")
    c.write_result("serving", {
        "settings": vars(args), "results": results, "goals": goals,
        "daemon_vs_moto": daemon_fetch["per_second"] / moto_fetch["per_second"],
    }, [table, note])


if __name__ == "__main__":
    main()

"""Serving: what the doors cost per answer under concurrent load, next to four floors and moto.

The servers run side by side, each pinned to the same CPU, and take turns under the same wrk
load from another CPU (rounds interleaved, the order rotated each round, so drift on a noisy
machine hits all alike):

- nginx from Debian answering fixed bodies with ``return 200`` (the native floor);
- the bare aiohttp floor (bench/floor_server.py): aiohttp answering fixed bodies, nothing else;
- the raw asyncio floor (bench/floor_server.py --raw): an ``asyncio.Protocol`` writing the same
  bodies pre-rendered, finding each request's end and reading only its request line: the least
  any Python server can do per answer;
- the same raw protocol on uvloop (``--raw --uvloop``), when uvloop is importable (``pip install
  uvloop``, or the ``bench`` extra; the row is left out, and the note says so, when it is not);
- the daemon with one Roles Anywhere connection (IMDS and container doors);
- optionally more daemons from other source trees (``--also NAME=TREE``: a before/after in one
  run, each tree's ``typecheck/`` put first on PYTHONPATH);
- moto in server mode, whose instance-metadata emulation answers the same IMDS paths.

Workloads: the full botocore IMDS fetch (PUT /latest/api/token, GET the role list, GET the
role's credentials) and one container-credentials GET with the connection's token.

Server CPU per fetch (or GET) is the utime + stime the server's processes spent during a run
(/proc/<pid>/stat, read before and after) over the fetches completed in it. On a machine with
two CPUs wrk saturates its own CPU before nginx saturates the server's, so throughput alone
cannot show the native floor; CPU per answer can. Goals (issue #16): the daemon's CPU per fetch
and per GET at or below nginx's, its throughput at least the aiohttp floor's. The raw floors show
how much of nginx's budget Python spends before doing anything at all.

    .venv/bin/python bench/serving.py [--seconds 4] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common as c
import floor_server

h = c.h
NATIVE, FLOOR = "nginx", "aiohttp floor"
RAW, RAW_UVLOOP = "raw asyncio floor", "raw uvloop floor"


@dataclass
class Run:
    load: c.Load
    cpu: float  # server CPU seconds spent during the run


def measure(targets: dict[str, tuple[c.Served, dict[str, Any]]], rounds: int, seconds: float,
            connections: int) -> dict[str, list[Run]]:
    """Each target ``rounds`` times, interleaved, starting one later each round."""
    runs: dict[str, list[Run]] = {name: [] for name in targets}
    names = list(targets)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            server, options = targets[name]
            before = c.tree_cpu_seconds(server.pid)
            load = c.wrk(name, server.url, seconds=seconds, connections=connections, **options)
            runs[name].append(Run(load, c.tree_cpu_seconds(server.pid) - before))
    return runs


def summarize(runs: list[Run]) -> dict[str, Any]:
    loads = [r.load for r in runs]
    samples = [s for load in loads for s in load.samples]
    pooled = c.Load(loads[0].target, loads[0].mode, sum(r.seconds for r in loads),
                    sum(r.requests for r in loads), len(samples), sum(r.failed for r in loads),
                    {k: sum(r.errors[k] for r in loads) for k in loads[0].errors}, samples)
    units = sum(r.units for r in loads)
    return {
        "per_second": statistics.median(r.units_per_second for r in loads),
        "per_second_rounds": [round(r.units_per_second, 1) for r in loads],
        "cpu_ms_per_unit": 1000 * sum(r.cpu for r in runs) / units if units else float("nan"),
        "cpu_ms_per_unit_rounds": [round(1000 * r.cpu / max(1, r.load.units), 4) for r in runs],
        "p50_ms": pooled.latency_ms(50), "p99_ms": pooled.latency_ms(99),
        "failed": pooled.failed, "errors": pooled.errors,
    }


def ratios(group: dict[str, dict[str, Any]]) -> None:
    """Each row's CPU per unit, throughput and p99 as ratios to the two floors' (same run)."""
    for row in group.values():
        for floor, key in ((NATIVE, "nginx"), (FLOOR, "floor")):
            base = group[floor]
            row[f"cpu_vs_{key}"] = row["cpu_ms_per_unit"] / base["cpu_ms_per_unit"]
            row[f"throughput_vs_{key}"] = row["per_second"] / base["per_second"]
            row[f"p99_vs_{key}"] = row["p99_ms"] / base["p99_ms"]


def python_floor(group: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cheapest Python floor's CPU per unit next to nginx's, and the daemon's next to it."""
    name = min((n for n in (RAW, RAW_UVLOOP) if n in group),
               key=lambda n: group[n]["cpu_ms_per_unit"])
    return {"server": name, "cpu_vs_nginx": group[name]["cpu_vs_nginx"],
            "daemon_cpu_vs_it": (group["daemon"]["cpu_ms_per_unit"]
                                 / group[name]["cpu_ms_per_unit"])}


def also(text: str) -> tuple[str, Path]:
    name, _, tree = text.partition("=")
    if not name or not (Path(tree) / "typecheck" / "credential_sidecar").exists():
        raise argparse.ArgumentTypeError("NAME=TREE, TREE a checkout with typecheck/")
    return name, Path(tree).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients")
    parser.add_argument("--also", type=also, action="append", default=[], metavar="NAME=TREE",
                        help="one more daemon, run from another source tree (before/after)")
    parser.add_argument("--no-moto", action="store_true", help="leave moto out")
    args = parser.parse_args()
    uvloop = importlib.util.find_spec("uvloop") is not None

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        material = h.make_pki(tmp / "pki")
        emu = stack.enter_context(c.emulator(tmp, [material.ca_file]))
        servers = {
            NATIVE: stack.enter_context(c.nginx_server(tmp, floor_server.TOKEN, floor_server.ROLE,
                                                       floor_server.CREDENTIALS)),
            FLOOR: stack.enter_context(c.floor_server(tmp)),
            RAW: stack.enter_context(c.floor_server(tmp, "--raw")),
        }
        if uvloop:
            servers[RAW_UVLOOP] = stack.enter_context(c.floor_server(tmp, "--raw", "--uvloop"))
        floors = list(servers)
        daemons: dict[str, tuple[Path, dict[str, str] | None]] = {"daemon": (tmp, None)}
        for name, tree in args.also:
            daemons[name] = (tmp / name, h.clean_env(PYTHONPATH=str(tree / "typecheck")))
        doors: dict[str, tuple[c.Served, c.Served, str]] = {}
        for name, (home, env) in daemons.items():
            home.mkdir(exist_ok=True)
            daemon = stack.enter_context(h.daemon(
                home, c.connections(1, material, emu.url), log_level="info", env=env,
                prefix=c.pinned(c.SERVER_CPU), extra={"container": {"listen": "127.0.0.1:0"}}))
            pid = daemon.process.proc.pid
            token = (home / "state" / "tokens" / "c0000.token").read_text()
            doors[name] = (c.Served(daemon.url("imds:c0000").rstrip("/"), pid),
                           c.Served(daemon.url("container").rstrip("/"), pid), token)
        if not args.no_moto:
            servers["moto"] = stack.enter_context(c.moto_server(tmp))
        fetch = measure({**{n: (s, {}) for n, s in servers.items()},
                         **{n: (imds, {}) for n, (imds, _, _) in doors.items()}},
                        args.rounds, args.seconds, args.connections)
        path = "/v1/credentials/c0000"
        first_token = next(iter(doors.values()))[2]
        single = measure({
            **{n: (servers[n], {"mode": "get", "path": path, "auth": first_token})
               for n in floors},
            **{n: (box, {"mode": "get", "path": path, "auth": token})
               for n, (_, box, token) in doors.items()},
        }, args.rounds, args.seconds, args.connections)

    results = {
        "imds_fetch": {name: summarize(runs) for name, runs in fetch.items()},
        "container_get": {name: summarize(runs) for name, runs in single.items()},
    }
    rows = []
    for workload, label, unit in (("imds_fetch", "IMDS fetch (PUT + 2 GETs)", "fetches/s"),
                                  ("container_get", "container GET", "GETs/s")):
        group = results[workload]
        ratios(group)
        for name, row in group.items():
            rows.append([label, name, f"{row['cpu_ms_per_unit']:.4f}",
                         f"{row['cpu_vs_nginx']:.2f}", f"{row['cpu_vs_floor']:.2f}",
                         f"{row['per_second']:,.0f} {unit}", f"{row['throughput_vs_floor']:.2f}",
                         f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                         f"{row['p99_vs_floor']:.2f}", row["failed"]])
    fetch_row, get_row = results["imds_fetch"]["daemon"], results["container_get"]["daemon"]
    cheapest = {workload: python_floor(group) for workload, group in results.items()}
    goals = {
        "imds_fetch_cpu_at_most_nginx": fetch_row["cpu_vs_nginx"] <= 1.0,
        "container_get_cpu_at_most_nginx": get_row["cpu_vs_nginx"] <= 1.0,
        "imds_fetch_throughput_at_least_floor": fetch_row["throughput_vs_floor"] >= 1.0,
        "container_get_throughput_at_least_floor": get_row["throughput_vs_floor"] >= 1.0,
    }
    if "moto" in results["imds_fetch"]:
        goals["faster_than_moto"] = (fetch_row["per_second"]
                                     > results["imds_fetch"]["moto"]["per_second"])
    table = c.markdown(["workload", "server", "CPU ms per unit", "CPU vs nginx",
                        "CPU vs aiohttp floor", "throughput", "throughput vs aiohttp floor",
                        "p50 ms", "p99 ms", "p99 vs aiohttp floor", "failed"], rows)
    note = (f"{args.connections} concurrent clients (wrk, one connection each, on its own CPU); "
            f"{args.rounds} interleaved runs of {args.seconds:g} s per server; throughput is the "
            "median run, CPU per unit and latency percentiles are over all runs. CPU is the "
            "server's utime + stime (/proc/<pid>/stat, nginx's master and worker together) over "
            "the fetches or GETs completed; a unit is a whole fetch (PUT + 2 GETs) or one GET. "
            "nginx (Debian's, one worker) answers fixed bodies of the daemon's sizes with "
            "`return 200`; the aiohttp floor does the same in aiohttp; the raw floors write the "
            "same bodies pre-rendered from an asyncio.Protocol that reads only each request's "
            "line and end, on asyncio's loop and on uvloop's"
            + ("" if uvloop else " (uvloop is not installed here: its row is left out)")
            + ". wrk is the bottleneck for the floors, so their throughput is a floor of what wrk "
            "can drive, not of the server. The cheapest Python floor ("
            + (cheapest["imds_fetch"]["server"]
               if cheapest["imds_fetch"]["server"] == cheapest["container_get"]["server"] else
               f"{cheapest['imds_fetch']['server']} per fetch, "
               f"{cheapest['container_get']['server']} per GET")
            + ") costs "
            f"{cheapest['imds_fetch']['cpu_vs_nginx']:.2f}x nginx's CPU per fetch and "
            f"{cheapest['container_get']['cpu_vs_nginx']:.2f}x per GET while checking nothing; "
            f"the daemon costs {cheapest['imds_fetch']['daemon_cpu_vs_it']:.1f}x and "
            f"{cheapest['container_get']['daemon_cpu_vs_it']:.1f}x that floor."
            + (" moto does the whole fetch (its token PUT answers a fixed fake token, which its "
               "GETs do not check) and answers every request with `Connection: close`; it has no "
               "container-credentials endpoint." if not args.no_moto else ""))
    c.write_result("serving", {
        "settings": {**vars(args), "also": [[n, str(t)] for n, t in args.also]},
        "results": results, "goals": goals, "uvloop": uvloop, "python_floor": cheapest,
    }, [table, note])


if __name__ == "__main__":
    main()

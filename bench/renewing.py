"""Serving while renewing: the serving load while 1 000 Roles Anywhere connections renew.

How renewals are made to happen during the measurement: the daemon and the emulator both run
on the test clock (``CREDENTIAL_SIDECAR_TEST_CLOCK_FILE``, clock.OffsetClock: real time
plus an offset read from a file). Every connection holds a 3600 s set and renews it with
50-60 % of its life left, that is 1440-1800 s after it was issued. With wrk already loading
the daemon, the benchmark moves the offset 1900 s ahead: every set is then due at once, and
the daemon renews all 1 000 (at most ``max_concurrent_renewals`` at a time) while still
serving the old sets, which have 1700 s left. The renewal counts on ``/metrics`` before and
after prove the renewals happened; the daemon's ``credentials renewed`` log timestamps give
the storm's window, and the latency percentiles are taken over the fetches that ended inside
it. The same-run baseline is the same load on the same daemon with no renewal due.

Goal: p99 under 50 ms while renewing (botocore gives up on IMDS after 1 s).

    .venv/bin/python bench/renewing.py [--connections 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common as c

from credential_sidecar.renewal.schedule import Policy

h = c.h
GOAL_P99_MS = 50.0
STEP = 1900  # seconds of test-clock time that make every 3600 s set due


class Bench:
    def __init__(self, daemon: h.Daemon, clock_file: Path, connections: int, seconds: float,
                 clients: int) -> None:
        self.daemon, self.clock_file = daemon, clock_file
        self.connections, self.seconds, self.clients = connections, seconds, clients
        self.offset = 0

    def renewals(self) -> float:
        metrics = c.get_text(self.daemon.url("health") + "metrics")
        return c.metric_sum(metrics, "credential_sidecar_renewals_total", result="ok")

    def quiet(self, name: str, url: str, options: dict[str, Any]) -> dict[str, Any]:
        before = self.renewals()
        load = c.wrk(name, url, seconds=self.seconds / 2, connections=self.clients, **options)
        renewed = self.renewals() - before
        return {"load": load, "renewals": renewed, "window": (0.0, float("inf"))}

    def storm(self, name: str, url: str, options: dict[str, Any]) -> dict[str, Any]:
        """Load for ``seconds``; one second in, every connection falls due."""
        before = self.renewals()
        out: dict[str, c.Load] = {}
        runner = threading.Thread(target=lambda: out.setdefault("load", c.wrk(
            name, url, seconds=self.seconds, connections=self.clients, **options)))
        started = time.time()
        runner.start()
        time.sleep(1.0)
        self.offset += STEP
        moved = time.time()
        self.clock_file.write_text(str(self.offset))
        runner.join()
        ended = time.time()
        h.wait_for(lambda: self.renewals() - before >= self.connections, timeout=300,
                   what="every connection to renew")
        renewed = [t for t in c.log_times(self.daemon, "credentials renewed") if t >= moved]
        window = (min(renewed), max(renewed))
        return {"load": out["load"], "renewals": self.renewals() - before, "window": window,
                "renewed_during_load": sum(1 for t in renewed if started <= t <= ended)}


def row(label: str, phase: str, result: dict[str, Any], unit: str) -> tuple[list[Any], dict]:
    load: c.Load = result["load"]
    start, end = result["window"]
    if end == float("inf"):
        rate, span = load.units_per_second, load.seconds
    else:
        span = end - start
        rate = load.count(start, end) / span if span > 0 else float("nan")
    summary = {"per_second": rate, "p50_ms": load.latency_ms(50, start, end),
               "p99_ms": load.latency_ms(99, start, end),
               "max_ms": load.latency_ms(100, start, end), "window_s": span,
               "units": load.count(start, end), "failed": load.failed,
               "errors": load.errors, "renewals": result["renewals"],
               "renewed_during_load": result.get("renewed_during_load")}
    cells = [label, phase, f"{rate:,.0f} {unit}", f"{summary['p50_ms']:.2f}",
             f"{summary['p99_ms']:.2f}", f"{summary['max_ms']:.1f}", load.failed,
             f"{int(summary['renewals'])}"]
    return cells, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each loaded storm")
    parser.add_argument("--clients", type=int, default=8, help="concurrent wrk clients")
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.05],
                        help="emulator delays per CreateSession, one storm each (default 0, "
                        "the densest storm, and 0.05, closer to AWS)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-renewing-") as tmp_name:
        tmp = Path(tmp_name)
        clock_file = tmp / "clock-offset"
        clock_file.write_text("0")
        env = c.clock_env(clock_file)
        material = h.make_pki(tmp / "pki")
        with c.emulator(tmp, [material.ca_file], env=env) as emu, \
                h.daemon(tmp, c.connections(args.connections, material, emu.url),
                         log_level="info", wait_ready=False, env=env,
                         prefix=c.pinned(c.SERVER_CPU),
                         extra={"container": {"listen": "127.0.0.1:0"}}) as daemon:
            h.wait_for(daemon.ready, timeout=300, what="every connection to be ready")
            bench = Bench(daemon, clock_file, args.connections, args.seconds, args.clients)
            token = (tmp / "state" / "tokens" / "c0000.token").read_text()
            workloads = [
                ("IMDS fetch (PUT + 2 GETs)", "fetches/s", daemon.url("imds:c0000").rstrip("/"),
                 {}),
                ("container GET", "GETs/s", daemon.url("container").rstrip("/"),
                 {"mode": "get", "path": "/v1/credentials/c0000", "auth": token}),
            ]
            rows, results = [], {}
            for label, unit, url, options in workloads:
                quiet_cells, quiet = row(label, "no renewal due (baseline)",
                                         bench.quiet(label, url, options), unit)
                rows.append(quiet_cells)
                results[label] = {"quiet": quiet}
                for latency in args.latency:
                    emu.faults(delay_seconds=latency)
                    storm_result = bench.storm(label, url, options)
                    span = storm_result["window"][1] - storm_result["window"][0]
                    storm_cells, storm = row(
                        label, f"{args.connections} renewing, upstream {latency * 1000:g} ms "
                        f"({span:.1f} s)", storm_result, unit)
                    storm["p99_over_baseline"] = storm["p99_ms"] / quiet["p99_ms"]
                    rows.append(storm_cells)
                    results[label][f"renewing_{latency * 1000:g}ms"] = storm

    goals = {f"{label} {phase}": r["p99_ms"] < GOAL_P99_MS
             for label, group in results.items()
             for phase, r in group.items() if phase != "quiet"}
    table = c.markdown(["load", "while", "throughput", "p50 ms", "p99 ms", "max ms", "failed",
                        "renewals (from /metrics)"], rows)
    missed = [name for name, ok in goals.items() if not ok]
    note = (f"{args.clients} concurrent wrk clients; the renewing rows cover only what ended "
            "between the storm's first and last renewal (daemon log timestamps, window in "
            f"brackets); at most {Policy().max_concurrent_renewals} renewals at once. Goal p99 < "
            f"{GOAL_P99_MS:g} ms while renewing: "
            + (f"missed for {', '.join(missed)}." if missed else "met in every storm."))
    c.write_result("renewing", {"settings": vars(args), "results": results, "goals": goals},
                   [table, note])


if __name__ == "__main__":
    main()

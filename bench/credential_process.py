"""credential-process: wall time per invocation, from the daemon's cache vs a fresh CreateSession.

SDKs run ``credential_process`` as a new process whenever they want credentials. Timed here,
one after another, each a fresh process:

- ``credential-sidecar credential-process NAME --socket PATH``: asks the running daemon over its
  control socket for the set it holds (standard library only, no upstream call);
- the baseline, what ``aws_signing_helper credential-process`` does on every invocation: read
  the certificate and key, sign, call CreateSession (bench/create_session_once.py, in Python:
  the Go helper cannot be installed here), against the emulator answering at once and with
  50 ms of latency (closer to a real call to AWS, which adds TLS and the network);
- ``python3 -c pass``: the interpreter's own start-up, a floor both Python figures include.

    .venv/bin/python bench/credential_process.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common as c

h = c.h


def timed(command: list[str], runs: int) -> list[float]:
    """Wall seconds of each of ``runs`` invocations (after one warm-up), checking the JSON."""
    times = []
    for i in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=h.clean_env())
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{command[:3]} failed: {done.stderr.strip()}")
        if done.stdout.strip():
            doc = json.loads(done.stdout)
            assert doc["Version"] == 1 and doc["AccessKeyId"].startswith("ASIA"), doc
        if i:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.05, help="emulator delay, seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp_name:
        tmp = Path(tmp_name)
        material = h.make_pki(tmp / "pki")
        sock = tmp / "run" / "control.sock"
        with c.emulator(tmp, [material.ca_file]) as emu, \
                h.daemon(tmp, c.connections(1, material, emu.url), log_level="info",
                         extra={"control": {"socket": str(sock)}}):
            ours = [str(Path(sys.executable).with_name("credential-sidecar")),
                    "credential-process", "c0000", "--socket", str(sock)]
            baseline = [sys.executable, str(c.BENCH / "create_session_once.py"),
                        "--certificate", str(material.cert), "--private-key", str(material.key),
                        "--endpoint", emu.url, "--trust-anchor-arn", h.TRUST_ANCHOR,
                        "--profile-arn", h.PROFILE, "--role-arn", h.ROLE]
            before = emu.stats()["calls"]
            runs = {"credential-process (daemon cache)": timed(ours, args.runs)}
            calls = emu.stats()["calls"]
            our_calls = calls - before
            runs["fresh CreateSession, emulator at 0 ms"] = timed(baseline, args.runs)
            emu.faults(delay_seconds=args.latency)
            runs[f"fresh CreateSession, emulator at {args.latency * 1000:g} ms"] = \
                timed(baseline, args.runs)
            upstream_calls = emu.stats()["calls"] - calls
            runs["python3 -c pass (interpreter floor)"] = timed([sys.executable, "-c", "pass"],
                                                               args.runs)
    ours_median = statistics.median(runs["credential-process (daemon cache)"])
    results = {name: {"median_ms": statistics.median(t) * 1000,
                      "p90_ms": c.percentile(t, 90) * 1000,
                      "ratio_to_credential_process": statistics.median(t) / ours_median}
               for name, t in runs.items()}
    rows = [[name, f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}",
             f"{r['ratio_to_credential_process']:.2f}"] for name, r in results.items()]
    table = c.markdown(["invocation (fresh process each)", "median ms", "p90 ms",
                        "ratio to credential-process"], rows)
    note = (f"{args.runs} invocations each (after one warm-up), one after another. "
            f"CreateSession calls: {our_calls} while credential-process ran, {upstream_calls} "
            "for the baselines (one per invocation).")
    c.write_result("credential_process", {"settings": vars(args), "results": results,
                                          "upstream_calls": {"credential_process": our_calls,
                                                             "baselines": upstream_calls}},
                   [table, note])


if __name__ == "__main__":
    main()

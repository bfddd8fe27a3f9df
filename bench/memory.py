"""Memory: the daemon's resident set with 1 000 connections and 10 000 live IMDS tokens.

RSS is ``VmRSS`` from ``/proc/<pid>/status``. Same-run baselines: the daemon with one connection
(what the program itself costs), and the 1 000-connection daemon before any token is issued.
IMDS tokens are sealed with an HMAC and stored nowhere, so issuing 10 000 of them should cost
nothing; each is then used once (a credentials GET with it) to prove all of them are live.
Goal: under 150 MB.

    .venv/bin/python bench/memory.py [--connections 1000] [--tokens 10000]
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import common as c

h = c.h
GOAL_MB = 150
CREDS = "/latest/meta-data/iam/security-credentials/c0000"


def issue_and_use(url: str, count: int) -> int:
    """PUT ``count`` tokens over one keep-alive connection, then GET credentials with each;
    returns how many GETs succeeded."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def call(method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    tokens = []
    for _ in range(count):
        status, body = call("PUT", "/latest/api/token",
                            {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        assert status == 200, status
        tokens.append(body.decode())
    assert len(set(tokens)) == count, "every token is different"
    ok = sum(call("GET", CREDS, {"X-aws-ec2-metadata-token": token})[0] == 200
             for token in tokens)
    conn.close()
    return ok


def ready_daemon_rss(tmp: Path, conns: list[dict[str, Any]], tokens: int = 0
                     ) -> dict[str, float]:
    with h.daemon(tmp, conns, log_level="info", wait_ready=False,
                  prefix=c.pinned(c.SERVER_CPU)) as daemon:
        h.wait_for(daemon.ready, timeout=120, what="the daemon to be ready")
        pid = daemon.process.proc.pid
        out = {"ready_mib": c.rss_mib(pid)}
        if tokens:
            out["tokens_used_ok"] = issue_and_use(daemon.url("imds:c0000"), tokens)
            out["after_tokens_mib"] = c.rss_mib(pid)
        out["peak_mib"] = c.peak_rss_mib(pid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        material = h.make_pki(tmp / "pki")
        with c.emulator(tmp, [material.ca_file]) as emu:
            (tmp / "one").mkdir()
            (tmp / "many").mkdir()
            one = ready_daemon_rss(tmp / "one", c.connections(1, material, emu.url))
            many = ready_daemon_rss(tmp / "many",
                                    c.connections(args.connections, material, emu.url),
                                    args.tokens)
    mb = 1.048576  # MiB -> MB
    per_connection_kib = (many["ready_mib"] - one["ready_mib"]) * 1024 / (args.connections - 1)
    rows = [
        ["1 connection, ready (baseline: the program)", f"{one['ready_mib'] * mb:.1f}", ""],
        [f"{args.connections} connections, ready", f"{many['ready_mib'] * mb:.1f}",
         f"{per_connection_kib:.0f} KiB per connection"],
        [f"... after issuing {args.tokens:,} IMDS tokens and using each once",
         f"{many['after_tokens_mib'] * mb:.1f}",
         f"{(many['after_tokens_mib'] - many['ready_mib']) * mb:+.1f} MB; "
         f"{many['tokens_used_ok']:,} of {args.tokens:,} tokens accepted"],
        ["peak (VmHWM) of the whole run", f"{many['peak_mib'] * mb:.1f}", ""],
    ]
    table = c.markdown(["daemon", "RSS MB", "note"], rows)
    goal = many["after_tokens_mib"] * mb < GOAL_MB
    note = f"Goal: under {GOAL_MB} MB with {args.connections} connections and {args.tokens:,} " \
           f"live tokens: {'met' if goal else 'missed'}."
    c.write_result("memory", {"settings": vars(args), "one": one, "many": many,
                              "per_connection_kib": per_connection_kib,
                              "goals": {"under_150_mb": goal}}, [table, note])


if __name__ == "__main__":
    main()

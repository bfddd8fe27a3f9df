"""Memory: the daemon's resident set with 1 000 connections and 10 000 live IMDS tokens.

RSS is ``VmRSS`` from ``/proc/<pid>/status``. Same-run baselines: a process that imports only
the libraries ``run`` cannot do without (``common.FLOOR_IMPORTS``: aiohttp, cryptography,
pydantic, structlog, prometheus_client, asyncio and ssl) and waits, the floor; the daemon with one
Roles Anywhere connection (what the program itself costs; goal: at most 45 MB), and the
1 000-connection daemon before any token is issued.
IMDS tokens are sealed with an HMAC and stored nowhere, so issuing 10 000 of them should cost
nothing; each is then used once (a credentials GET with it) to prove all of them are live.
Goal: under 150 MB. Our package is compiled first (``compileall``), as pip does when it installs
the wheel. The Go ``aws_signing_helper``'s 13 MB (issue #16) was measured outside this suite: it
cannot be installed here.

    .venv/bin/python bench/memory.py [--connections 1000] [--tokens 10000]
"""

from __future__ import annotations

import argparse
import compileall
import http.client
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import common as c

h = c.h
GOAL_MB = 150
GOAL_ONE_MB = 45
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


def floor_rss() -> float:
    """MiB resident in a process that has imported the floor's libraries and nothing else."""
    code = (f"import sys, {', '.join(c.FLOOR_IMPORTS)}\n"
            "print('ready', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([*c.pinned(c.SERVER_CPU), sys.executable, "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=h.clean_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        return c.rss_mib(proc.pid)
    finally:
        proc.communicate(b"", timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=10000)
    args = parser.parse_args()
    compileall.compile_dir(c.ROOT / "daemon", quiet=1)
    floor = floor_rss()
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
    one_mb = one["ready_mib"] * mb
    rows = [
        ["floor: a process importing only the libraries run needs", f"{floor * mb:.1f}",
         "1.00 of the floor"],
        ["1 Roles Anywhere connection, ready (the program)", f"{one_mb:.1f}",
         f"{one['ready_mib'] / floor:.2f} of the floor"],
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
    goal_one = one_mb <= GOAL_ONE_MB
    note = (f"Goals: under {GOAL_MB} MB with {args.connections} connections and "
            f"{args.tokens:,} live tokens: {'met' if goal else 'missed'}; one Roles Anywhere "
            f"connection at most {GOAL_ONE_MB} MB: {'met' if goal_one else 'missed'} "
            f"({one_mb:.1f} MB, of which the floor's libraries {floor * mb:.1f}). The Go "
            "aws_signing_helper's 13 MB (issue #16) was measured outside this suite; it cannot "
            "be installed here.")
    c.write_result("memory", {"settings": vars(args), "floor_mib": floor, "one": one,
                              "many": many, "per_connection_kib": per_connection_kib,
                              "goals": {"under_150_mb": goal, "one_connection_45_mb": goal_one}},
                   [table, note])


if __name__ == "__main__":
    main()

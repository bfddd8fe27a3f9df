"""Memory: the daemon's resident set with one connection, and with 1 000 connections and 10 000
live IMDS tokens, each next to the memory of the libraries it cannot do without.

Measured in two venvs, side by side:

- runtime-only: this checkout's wheel installed into a fresh venv with its dependencies and no
  extras (``common.installed_venv``), what ``pip install .`` gives users; the goals are judged here;
- the test venv the benchmark runs from (``pip install -e '.[test]'``), as the figures were taken
  before: it also holds rich, pygments and colorama (import-linter's dependencies), and structlog
  imports rich when it is there.

In each, RSS is ``VmRSS`` from ``/proc/<pid>/status`` and Anonymous is from
``/proc/<pid>/smaps_rollup`` (heaps and written pages, without the shared libraries' and
files' pages). Same-run baselines: processes that import, step by step, the interpreter alone,
asyncio and ssl, aiohttp, then every library ``run`` cannot do without
(``common.FLOOR_IMPORTS``: aiohttp, cryptography, pydantic, structlog, prometheus_client, asyncio
and ssl): the floor; then the daemon with one Roles Anywhere connection (what the program itself
costs; goal: at most 45 MB), and the 1 000-connection daemon before any token is issued. The
daemon runs under the venv's own interpreter; its mapped extension modules are checked to come
from that venv and from no other.
IMDS tokens are sealed with an HMAC and stored nowhere, so issuing 10 000 of them should cost
nothing; each is then used once (a credentials GET with it) to prove all of them are live.
Goal: under 150 MB. Our package is compiled (pip does it on install; in the test venv
``compileall`` does). The Go ``aws_signing_helper``'s 13 MB (issue #16) was measured outside
this suite: it cannot be installed here.

    .venv/bin/python bench/memory.py [--connections 1000] [--tokens 10000]
"""

from __future__ import annotations

import argparse
import compileall
import http.client
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import common as c

h = c.h
GOAL_MB = 150
GOAL_ONE_MB = 45
MB = 1.048576  # MiB -> MB
CREDS = "/latest/meta-data/iam/security-credentials/c0000"
# Where the floor's memory goes: each step imports its modules and every earlier step's.
STEPS = (
    ("python (the interpreter and site)", ()),
    ("+ asyncio, ssl", ("asyncio", "ssl")),
    ("+ aiohttp, aiohttp.web", ("aiohttp", "aiohttp.web")),
    ("+ cryptography, pydantic, structlog, prometheus_client: the floor (the libraries run needs)",
     c.FLOOR_IMPORTS),
)
RUNTIME, TEST = "runtime-only venv", "test venv"


@dataclass(frozen=True)
class Venv:
    """Where a set of processes runs: its root and interpreter."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"


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


def check_mapped(pid: int, venv: Venv, others: list[Venv], *, own: bool = True) -> None:
    """The process maps no file from the ``others``' venvs, and (``own``) extension modules from
    its own (cryptography's, pydantic-core's...: the stdlib's live outside every venv)."""
    files = c.mapped_files(pid)
    assert not own or any(f.startswith(f"{venv.root}/") for f in files), (
        f"pid {pid} maps nothing from {venv.root}")
    stray = sorted(f for f in files for o in others if f.startswith(f"{o.root}/"))
    assert not stray, f"pid {pid} maps files of another venv: {stray[:3]}"


def imports_memory(venv: Venv, modules: tuple[str, ...], others: list[Venv]) -> dict[str, Any]:
    """Memory of a process in ``venv`` that has imported ``modules`` and nothing else, and
    whether structlog's optional rich came along."""
    code = (f"import sys{''.join(', ' + m for m in modules)}\n"
            "print(int('rich' in sys.modules), len(sys.modules), flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([*c.pinned(c.SERVER_CPU), str(venv.python), "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=h.clean_env())
    try:
        assert proc.stdout is not None
        rich, count = proc.stdout.readline().split()
        check_mapped(proc.pid, venv, others, own=set(modules) >= set(c.FLOOR_IMPORTS))
        return {"rss_mib": c.rss_mib(proc.pid), "anonymous_mib": c.anonymous_mib(proc.pid),
                "rich": rich == b"1", "modules": int(count)}
    finally:
        proc.communicate(b"", timeout=30)


def ready_daemon(tmp: Path, conns: list[dict[str, Any]], venv: Venv, others: list[Venv],
                 tokens: int = 0) -> dict[str, Any]:
    """The daemon under ``venv``'s interpreter, once ready (and after ``tokens``)."""
    tmp.mkdir()
    with h.daemon(tmp, conns, log_level="info", wait_ready=False,
                  prefix=[*c.pinned(c.SERVER_CPU), *c.interpreter(venv.python)]) as daemon:
        h.wait_for(daemon.ready, timeout=120, what="the daemon to be ready")
        pid = daemon.process.proc.pid
        check_mapped(pid, venv, others)
        out: dict[str, Any] = {"ready_mib": c.rss_mib(pid),
                               "ready_anonymous_mib": c.anonymous_mib(pid)}
        if tokens:
            out["tokens_used_ok"] = issue_and_use(daemon.url("imds:c0000"), tokens)
            out["after_tokens_mib"] = c.rss_mib(pid)
            out["after_tokens_anonymous_mib"] = c.anonymous_mib(pid)
        out["peak_mib"] = c.peak_rss_mib(pid)
    return out


def measure(name: str, venv: Venv, others: list[Venv], tmp: Path, material: c.h.Pki,
            endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    steps: dict[str, dict[str, Any]] = {}
    modules: tuple[str, ...] = ()
    for label, more in STEPS:
        modules = tuple(dict.fromkeys((*modules, *more)))
        steps[label] = imports_memory(venv, modules, others)
    assert set(modules) == set(c.FLOOR_IMPORTS)
    home = tmp / name.replace(" ", "-")
    home.mkdir()
    one = ready_daemon(home / "one", c.connections(1, material, endpoint), venv, others)
    many = ready_daemon(home / "many", c.connections(args.connections, material, endpoint),
                        venv, others, args.tokens)
    return {"root": str(venv.root), "packages": c.installed_packages(venv.root),
            "imports": steps, "floor_mib": steps[STEPS[-1][0]]["rss_mib"], "one": one,
            "many": many, "per_connection_kib": (many["ready_mib"] - one["ready_mib"]) * 1024
            / max(1, args.connections - 1)}


def table_figures(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """One venv's RSS and Anonymous MB for each row of the table."""
    def pair(rss: float, anonymous: float | None) -> tuple[str, str]:
        return f"{rss * MB:.1f}", "" if anonymous is None else f"{anonymous * MB:.1f}"

    one, many = result["one"], result["many"]
    return {**{label: pair(m["rss_mib"], m["anonymous_mib"])
               for label, m in result["imports"].items()},
            "one": pair(one["ready_mib"], one["ready_anonymous_mib"]),
            "many": pair(many["ready_mib"], many["ready_anonymous_mib"]),
            "tokens": pair(many["after_tokens_mib"], many["after_tokens_anonymous_mib"]),
            "peak": pair(many["peak_mib"], None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=10000)
    args = parser.parse_args()
    compileall.compile_dir(c.ROOT / "daemon", quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        venvs = {RUNTIME: Venv(c.installed_venv(tmp / "runtime")),
                 TEST: Venv(Path(sys.prefix).resolve())}
        material = h.make_pki(tmp / "pki")
        with c.emulator(tmp, [material.ca_file]) as emu:
            results = {name: measure(name, venv, [v for v in venvs.values() if v != venv], tmp,
                                     material, emu.url, args)
                       for name, venv in venvs.items()}

    labels = {**{label: label for label, _ in STEPS},
              "one": "daemon, 1 Roles Anywhere connection, ready (the program)",
              "many": f"daemon, {args.connections} connections, ready",
              "tokens": f"... after issuing {args.tokens:,} IMDS tokens and using each once",
              "peak": f"peak (VmHWM) of the {args.connections}-connection daemon"}
    run, test = results[RUNTIME], results[TEST]
    notes = {**{label: f"{run['imports'][label]['rss_mib'] / run['floor_mib']:.2f} of the floor"
                for label, _ in STEPS},
             "one": f"{run['one']['ready_mib'] / run['floor_mib']:.2f} of the floor",
             "many": f"{run['per_connection_kib']:.0f} KiB per connection",
             "tokens": f"{(run['many']['after_tokens_mib'] - run['many']['ready_mib']) * MB:+.1f}"
                       f" MB; {run['many']['tokens_used_ok']:,} of {args.tokens:,} tokens "
                       "accepted",
             "peak": ""}
    figures = {name: table_figures(r) for name, r in results.items()}
    rows = [[labels[key], *(cell for name in (RUNTIME, TEST) for cell in figures[name][key]),
             notes[key]] for key in labels]
    table = c.markdown(["process", f"{RUNTIME}: RSS MB", "Anonymous MB", f"{TEST}: RSS MB",
                        "Anonymous MB", f"note ({RUNTIME})"], rows)

    one_mb, floor_mb = run["one"]["ready_mib"] * MB, run["floor_mib"] * MB
    goal = run["many"]["after_tokens_mib"] * MB < GOAL_MB
    goal_one = one_mb <= GOAL_ONE_MB
    rich = {name: r["imports"][STEPS[-1][0]]["rich"] for name, r in results.items()}
    extra = ({p.split("==")[0].lower() for p in test["packages"]}
             - {p.split("==")[0].lower() for p in run["packages"]})
    note = (f"The {RUNTIME} is this checkout's wheel installed with its dependencies and no extras "
            f"({len(run['packages'])} distributions); the {TEST} (`pip install -e '.[test]'`) "
            f"holds {len(extra)} more, among them "
            + ", ".join(p for p in ("rich", "pygments", "colorama") if p in extra)
            + f"; structlog loaded rich in the floor: {RUNTIME} "
            f"{'yes' if rich[RUNTIME] else 'no'}, {TEST} {'yes' if rich[TEST] else 'no'}. "
            f"Goals, judged in the {RUNTIME}: under {GOAL_MB} MB with {args.connections} "
            f"connections and {args.tokens:,} live tokens: {'met' if goal else 'missed'}; one "
            f"Roles Anywhere connection at most {GOAL_ONE_MB} MB: "
            f"{'met' if goal_one else 'missed'} ({one_mb:.1f} MB; "
            f"{test['one']['ready_mib'] * MB:.1f} in the {TEST}). "
            + (f"The floor alone, importing the libraries run needs and doing nothing, is "
               f"{floor_mb:.1f} MB: above the goal, which cannot be met while the daemon uses "
               "them. " if floor_mb > GOAL_ONE_MB else
               f"The floor alone is {floor_mb:.1f} MB. ")
            + "The Go aws_signing_helper's 13 MB (issue #16) was measured outside this suite; it "
            "cannot be installed here.")
    c.write_result("memory", {"settings": vars(args), "venvs": results,
                              "goals": {"under_150_mb": goal, "one_connection_45_mb": goal_one,
                                        "floor_above_45_mb": floor_mb > GOAL_ONE_MB}},
                   [table, note])


if __name__ == "__main__":
    main()

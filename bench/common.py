"""What the benchmarks share: the machine, the processes under test, wrk, and results.

The daemon and the emulator are started as real processes by the end-to-end tests' harness
(``tests/helpers/harness.py``), exactly as the tests start them. Load comes from ``wrk`` (Debian's
package) in its own process, pinned to its own CPU where the machine has one to spare.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.helpers.harness

from tests.helpers import harness as h  # noqa: E402

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
SERVER_CPU = "0"  # the process under test
# The libraries `run` cannot do without for one Roles Anywhere connection: HTTP server and client,
# signing and the cache's AES-GCM, config validation, logs, /metrics. The start-up and memory
# floors (bench/startup.py, bench/memory.py) are a process that imports these and nothing else.
FLOOR_IMPORTS = ("asyncio", "ssl", "aiohttp", "aiohttp.web", "cryptography.x509",
                 "cryptography.hazmat.primitives.ciphers.aead",
                 "cryptography.hazmat.primitives.asymmetric.ec",
                 "cryptography.hazmat.primitives.serialization", "pydantic.main", "structlog",
                 "prometheus_client")
LOAD_CPU = "1"  # wrk, and the emulator that stands in for AWS


# --- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on (they mean little without it)."""
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    import aiohttp

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
    }


def pinned(cpu: str) -> list[str]:
    """A command prefix that keeps a process on one CPU, when there are two to split."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", cpu]


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for pid {pid}")


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a process, in MiB."""
    return _status_mib(pid, "VmRSS")


def peak_rss_mib(pid: int) -> float:
    """The most resident memory a process has had (VmHWM), in MiB."""
    return _status_mib(pid, "VmHWM")


def anonymous_mib(pid: int) -> float:
    """Anonymous memory of a process (``/proc/<pid>/smaps_rollup``), in MiB: its heaps and what
    it wrote, without the shared libraries' and files' pages; NaN where the kernel has no
    rollup."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    return math.nan


def mapped_files(pid: int) -> set[str]:
    """The files a process has mapped (its interpreter, shared libraries, extension modules)."""
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            files.add(parts[5])
    return files


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (nginx's master and worker): what serving
    costs whichever process of the tree does the work."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += tree_cpu_seconds(int(child))
    return total


# --- a venv as users install it ------------------------------------------------------------------


def installed_venv(tmp: Path, *, dependencies: bool = True) -> Path:
    """This checkout's wheel (``pip wheel --no-deps``, as ``pip install .`` builds it) installed
    into a fresh venv under ``tmp``: with its dependencies from the index (or pip's cache) and no
    extras, or without any. Returns the venv; nothing from the venv the benchmark runs in (test
    extras, an editable install) is in it."""
    dist, venv = tmp / "dist", tmp / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", *([] if dependencies else ["--no-deps"]),
                    str(next(dist.glob("*.whl")))], check=True, capture_output=True)
    return venv


def installed_packages(venv: Path) -> list[str]:
    """``name==version`` of every distribution in a venv."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                           "list", "--format=freeze"], check=True, capture_output=True, text=True)
    return done.stdout.split()


def interpreter(python: Path) -> list[str]:
    """A command prefix (``h.daemon``'s ``prefix``) that runs the harness's command, which starts
    with this venv's ``sys.executable``, under ``python`` instead: ``sh`` drops that first word
    and execs the rest, so the process keeps its pid."""
    return ["sh", "-c", 'shift; exec "$0" "$@"', str(python)]


# --- results -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, result: dict[str, Any], tables: Sequence[str]) -> Path:
    """bench/results/<name>.json with the machine and the tables as printed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": machine(), **result, "tables": list(tables)}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    for table in tables:
        print(table, end="\n\n")
    print(f"written to {path.relative_to(ROOT)}")
    return path


# --- wrk -----------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one wrk run measured. A unit is a whole fetch (mode fetch) or one GET (mode get)."""

    target: str
    mode: str
    seconds: float
    requests: int
    units: int
    failed: int
    errors: dict[str, int]
    samples: list[tuple[float, float]] = field(repr=False)  # (end, latency) per unit

    @property
    def units_per_second(self) -> float:
        return self.units / self.seconds

    def latency_ms(self, q: float, start: float = 0.0, end: float = math.inf) -> float:
        """Percentile of unit latency, optionally only for units ending within [start, end]."""
        return 1000 * percentile([lat for t, lat in self.samples if start <= t <= end], q)

    def count(self, start: float, end: float) -> int:
        return sum(1 for t, _ in self.samples if start <= t <= end)

    def summary(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["samples"]
        doc.update(units_per_second=round(self.units_per_second, 1),
                   p50_ms=round(self.latency_ms(50), 3), p99_ms=round(self.latency_ms(99), 3),
                   max_ms=round(self.latency_ms(100), 3))
        return doc


def wrk(target: str, url: str, *, mode: str = "fetch", path: str = "/", auth: str | None = None,
        seconds: float = 5.0, connections: int = 8) -> Load:
    """Run wrk with bench/load.lua against ``url``: ``connections`` clients, one per thread."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile(prefix="wrk-", suffix=".txt", delete=False) as out:
        out_path = Path(out.name)
    env = dict(os.environ, BENCH_MODE=mode, BENCH_PATH=path, BENCH_OUT=str(out_path))
    if auth is not None:
        env["BENCH_AUTH"] = auth
    command = [*pinned(LOAD_CPU), "wrk", "-t", str(connections), "-c", str(connections),
               "-d", f"{seconds:g}s", "--timeout", "5s", "-s", str(BENCH / "load.lua"), url]
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        lines = out_path.read_text().splitlines()
    finally:
        out_path.unlink(missing_ok=True)
    samples, totals = [], {}
    for line in lines:
        if line.startswith("#"):
            words = line[1:].split()
            totals = {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
            continue
        end, latency = line.split()
        samples.append((float(end), float(latency)))
    errors = {k: totals[k] for k in ("connect", "read", "write", "status", "timeout")}
    return Load(target=target, mode=mode, seconds=totals["duration_us"] / 1e6,
                requests=totals["requests"], units=len(samples), failed=totals["bad"],
                errors=errors, samples=samples)


# --- processes under test ------------------------------------------------------------------------


def wait_port_file(path: Path, proc: subprocess.Popen[bytes], what: str) -> int:
    def ready() -> str | None:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        return (path.exists() and path.read_text().strip()) or None

    return int(h.wait_for(ready, what=f"{what}'s port file"))


@contextlib.contextmanager
def process(command: list[str], log: Path, env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped with SIGTERM (then killed) on the way out."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                env=env or h.clean_env(), cwd=str(log.parent))
    try:
        yield proc
    finally:
        h.Process(proc, log).stop()


@dataclass(frozen=True)
class Served:
    """A server under test: where it answers, and the process whose CPU time it spends."""

    url: str
    pid: int


@contextlib.contextmanager
def floor_server(tmp: Path, *options: str) -> Iterator[Served]:
    """bench/floor_server.py on the server CPU, with its ``options`` (``--raw``, ``--uvloop``)."""
    name = "-".join(["floor", *(option.lstrip("-") for option in options)])
    port_file = tmp / f"{name}.port"
    command = [*pinned(SERVER_CPU), sys.executable, str(BENCH / "floor_server.py"),
               "--port-file", str(port_file), *options]
    with process(command, tmp / f"{name}.log") as proc:
        port = wait_port_file(port_file, proc, f"the floor server ({name})")
        yield Served(f"http://127.0.0.1:{port}", proc.pid)


NGINX_CONF = """\
# Generated by bench/common.py: the native floor, fixed bodies from "return 200".
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 5s;
    keepalive_requests 100000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /latest/api/token {{ return 200 '{token}'; }}
        location ~ /$ {{ return 200 '{role}'; }}
        location / {{ return 200 '{credentials}'; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(tmp: Path, token: str, role: str, credentials: str) -> Iterator[Served]:
    """Debian's nginx answering fixed bodies with ``return 200`` (the native floor): one worker
    on the server CPU, run as the current user with its own prefix, pid and log files, no access
    log, keep-alive as long as aiohttp's. Its CPU is the master's and the worker's."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is not installed: apt-get install -y nginx")
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = h.free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, token=token, role=role,
                                      credentials=credentials))
    command = [*pinned(SERVER_CPU), nginx, "-p", str(prefix), "-c", str(conf),
               "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    with process(command, prefix / "stdout.log") as proc:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {proc.returncode}: "
                                   + (prefix / "error.log").read_text(errors="replace"))
            try:
                return h.http("GET", url + "/latest/meta-data/iam/security-credentials/")[0] == 200
            except OSError:
                return False

        h.wait_for(answers, what="nginx")
        yield Served(url, proc.pid)


@contextlib.contextmanager
def moto_server(tmp: Path) -> Iterator[Served]:
    """moto in server mode (its instance-metadata emulation) on the server CPU."""
    port = h.free_port()
    command = [*pinned(SERVER_CPU), str(Path(sys.executable).with_name("moto_server")),
               "-H", "127.0.0.1", "-p", str(port)]
    with process(command, tmp / "moto.log") as proc:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}")
            try:
                return h.http("GET", url + "/latest/meta-data/iam/security-credentials/")[0] == 200
            except OSError:
                return False

        h.wait_for(answers, timeout=60, what="moto_server")
        yield Served(url, proc.pid)


def clock_env(clock_file: Path) -> dict[str, str]:
    """Environment for a process whose clocks the benchmark moves (clock.OffsetClock)."""
    from credential_sidecar.clock import TEST_CLOCK_ENV

    return h.clean_env(**{TEST_CLOCK_ENV: str(clock_file)})


@contextlib.contextmanager
def emulator(tmp: Path, cas: list[Path], env: dict[str, str] | None = None
             ) -> Iterator[h.Emulator]:
    """The Roles Anywhere emulator on the load CPU (it plays AWS, not this host)."""
    with h.emulator(tmp, cas, env=env, prefix=pinned(LOAD_CPU)) as emu:
        yield emu


def connections(count: int, material: h.Pki, endpoint: str, **extra: Any
                ) -> list[dict[str, Any]]:
    """``count`` Roles Anywhere connections named c0000..., all with one certificate."""
    return [h.connection(f"c{i:04d}", material, endpoint, **extra) for i in range(count)]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def get_text(url: str) -> str:
    status, _, body = h.http("GET", url)
    if status != 200:
        raise RuntimeError(f"GET {url}: {status}")
    return body.decode()


def log_times(daemon: h.Daemon, event: str) -> list[float]:
    """Unix times of a daemon log event (its JSON lines carry ISO timestamps)."""
    out = []
    for entry in daemon.events():
        if entry.get("event") == event and "timestamp" in entry:
            out.append(datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
                       .timestamp())
    return out


def now() -> float:
    return time.time()

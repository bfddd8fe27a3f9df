"""Run Debian's tinyproxy (1.11) in the foreground on a free loopback port, with a temp config.

Findings (tinyproxy 1.11.1, Debian 12):

* ``tinyproxy -d -c FILE`` stays in the foreground; as root without ``User`` it warns "You
  SHOULD set a UserName in the config file. Using current user instead." and runs.
* Loopback destinations are allowed: there is no built-in block of 127.0.0.0/8; ``Allow``
  lines govern *clients* only (with none, every client is allowed).
* ``BasicAuth user pass``: no ``Proxy-Authorization`` -> ``HTTP/1.0 407 Proxy Authentication
  Required`` + ``Proxy-Authenticate: Basic realm="Tinyproxy"``; a *wrong* password ->
  ``HTTP/1.0 401 Unauthorized`` (not 407).
* ``ConnectPort 443``: CONNECT to any other port -> ``HTTP/1.1 403 Access violation``
  (log: "Refused CONNECT method on port N"); plain-http GETs still pass.
* ``Allow`` for another network only -> ``403 Access denied`` for us.
* ``LogLevel Info`` logs each request line, ``Request (file descriptor N): CONNECT host:port
  HTTP/1.1``, and the refusals (``LogLevel Connect`` omits "Refused CONNECT method on port N").
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TINYPROXY = "/usr/sbin/tinyproxy"
BASIC_AUTH = ("alice", "s3cret")  # the user and password the tests' auth proxies want
_REQUEST_RE = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def binary() -> str | None:
    for candidate in (TINYPROXY, "/usr/bin/tinyproxy"):
        if Path(candidate).exists():
            return candidate
    return None


@dataclass
class Tinyproxy:
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request the proxy logged, in order."""
        return [(m[1], m[2]) for m in _REQUEST_RE.finditer(self.log())]

    def connects(self) -> list[str]:
        return [target for method, target in self.requests() if method == "CONNECT"]


def credentials_file(path: Path, user: str, password: str) -> Path:
    """A proxy_credentials_file as the daemon wants it: ``user:password`` in a 0600 file."""
    path.write_text(f"{user}:{password}\n")
    path.chmod(0o600)
    return path


def _config(
    port: int,
    log_path: Path,
    basic_auth: tuple[str, str] | None,
    connect_ports: Sequence[int] | None,
    allow: Sequence[str] | None,
) -> str:
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "MaxClients 20",
        "LogLevel Info",
        f'LogFile "{log_path}"',
        "DisableViaHeader Yes",
    ]
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    for p in connect_ports or ():
        lines.append(f"ConnectPort {p}")
    for a in allow or ():
        lines.append(f"Allow {a}")
    return "\n".join(lines) + "\n"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def run_tinyproxy(
    workdir: Path,
    *,
    basic_auth: tuple[str, str] | None = None,
    connect_ports: Sequence[int] | None = None,
    allow: Sequence[str] | None = None,
    ready_within: float = 10.0,
) -> Iterator[Tinyproxy]:
    """Start tinyproxy; stop it (and wait for it) on exit, whatever happened."""
    exe = binary()
    if exe is None:
        raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy)")
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):  # a free port may be taken before tinyproxy binds it
        port = free_port()
        log_path = workdir / f"tinyproxy-{port}.log"
        conf = workdir / f"tinyproxy-{port}.conf"
        conf.write_text(_config(port, log_path, basic_auth, connect_ports, allow))
        stderr_path = workdir / f"tinyproxy-{port}.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [exe, "-d", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        try:
            deadline = time.monotonic() + ready_within
            while time.monotonic() < deadline and process.poll() is None:
                if _listening(port):
                    break
                time.sleep(0.02)
            if process.poll() is not None:
                if attempt < 4:
                    continue
                raise RuntimeError(
                    f"tinyproxy exited ({process.returncode}): {stderr_path.read_text()}"
                )
            if not _listening(port):
                raise RuntimeError(f"tinyproxy did not listen on {port} in {ready_within}s")
            yield Tinyproxy(port, log_path, process)
            return
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
    raise RuntimeError("tinyproxy could not bind a port")


def proxy_fixture(
    *,
    basic_auth: tuple[str, str] | None = None,
    connect_ports: Sequence[int] | None = None,
    allow: Sequence[str] | None = None,
) -> Callable[[pytest.TempPathFactory], Iterator[Tinyproxy]]:
    """A module-scoped fixture running one tinyproxy variant: ``auth_proxy = proxy_fixture(...)``.

    A missing tinyproxy fails the test (tests/setup/network.sh installs it).
    """

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
        with run_tinyproxy(
            tmp_path_factory.mktemp("tinyproxy"),
            basic_auth=basic_auth,
            connect_ports=connect_ports,
            allow=allow,
        ) as proxy:
            yield proxy

    return fixture

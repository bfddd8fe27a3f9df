"""moto_server over TLS (its own -c/-k options, with a test CA's certificate) on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.tinyproxy import free_port
from tests.helpers.tls_pki import CA


@dataclass
class MotoTLS:
    url: str
    ca_pem: Path
    process: subprocess.Popen[bytes]


def moto_binary() -> str | None:
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.exists() else shutil.which("moto_server")


def _tls_ready(port: int, ca_pem: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca_pem))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
    except OSError:
        return False


@contextlib.contextmanager
def run_moto_tls(workdir: Path, *, ready_within: float = 30.0) -> Iterator[MotoTLS]:
    exe = moto_binary()
    if exe is None:
        raise RuntimeError("moto_server not installed (pip install 'moto[server]')")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = CA.new()
    ca_pem = ca.write(workdir / "moto-ca.pem")
    cert, key = ca.issue_server("127.0.0.1", "localhost").write(workdir, "moto-server")
    port = free_port()
    log = open(workdir / "moto.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    process = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
    )
    try:
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline and process.poll() is None:
            if _tls_ready(port, ca_pem):
                break
            time.sleep(0.05)
        if process.poll() is not None or not _tls_ready(port, ca_pem):
            raise RuntimeError(
                f"moto_server did not start: {(workdir / 'moto.log').read_text()[-2000:]}"
            )
        yield MotoTLS(f"https://127.0.0.1:{port}", ca_pem, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()

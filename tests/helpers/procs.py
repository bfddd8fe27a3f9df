"""Processes the client tests start (always stopped by their own pid), bounded polling, and an
environment with no AWS or proxy setting in it.

Standard library only: tests/setup/clients.sh runs go_clients.py, which imports this, with the
system python3 before the venv exists."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]  # the repository
PYTHON = sys.executable
T = TypeVar("T")

CLEAN_ENV_DROP = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_V1_DISABLED", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_SDK_LOAD_CONFIG", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
    "all_proxy", "NO_PROXY", "no_proxy", "RESTIC_PASSWORD", "RESTIC_REPOSITORY",
)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The machine's environment without any AWS or proxy setting, HOME pointed at `home`.

    The AWS config and credential files point at paths that do not exist, so no client finds a
    profile by accident.
    """
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV_DROP}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
    )
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], T | None], *, timeout: float = 20.0,
               interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s ({attempts} polls) waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def held_listener(address: str | tuple[str, int]) -> Iterator[socket.socket]:
    """A non-blocking listening socket that outlives the server under test, as one systemd
    passes does: at a Unix socket path (made 0660) or a (host, port)."""
    unix = isinstance(address, str)
    held = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.bind(address)
        if isinstance(address, str):
            os.chmod(address, 0o660)
        held.listen(16)
        held.setblocking(False)
        yield held
    finally:
        held.close()


def assert_left_in_queue(client: socket.socket, queued: socket.socket, request: bytes) -> None:
    """``queued`` (the client's connection, taken from the held listening socket after a stop)
    still holds ``request`` untouched for the next process, and nothing came back to ``client``:
    neither an answer nor a close."""
    with queued:
        client.setblocking(False)
        try:
            client.recv(1)
        except BlockingIOError:
            pass
        else:
            raise AssertionError("the stopped server answered or closed a queued connection")
        assert queued.recv(65536) == request, "the queued request was read"


def read_until_closed(client: socket.socket) -> bytes:
    """Everything a peer sends until it closes the connection; a reset raises."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago (for servers that cannot report theirs)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A process this test run started; stop() ends it (and only it) by pid."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return int(self.popen.returncode)


@contextlib.contextmanager
def started(name: str, args: Sequence[str], log_path: Path,
            env: Mapping[str, str] | None = None) -> Iterator[Proc]:
    """Start `args` with output to `log_path`; always stopped on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    popen = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=dict(env) if env else None)
    proc = Proc(name, popen, log_path, log)
    try:
        yield proc
    finally:
        proc.stop()


def read_json_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None while it does not exist yet."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(value, dict):
        raise AssertionError(f"{path} does not hold a JSON object")
    return value


def wait_ready_file(proc: Proc, path: Path, timeout: float = 20.0) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()}")
        return read_json_file(path)

    return wait_until(ready, timeout=timeout, what=f"{proc.name} ready file")


def http(method: str, url: str, headers: Mapping[str, str] | None = None,
         body: bytes | None = None, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request (loopback or an address inside our own namespace)."""
    if not url.startswith(("http://127.", "http://[::1]", "http://169.254.169.254",
                           "http://[fd00:ec2::254]", "http://localhost")):
        raise ValueError(f"refusing a request to {url}: loopback or namespace addresses only")
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), dict(response.headers), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), bytes(exc.read())

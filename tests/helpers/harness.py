"""Real processes on loopback: the emulator and the daemon, as users run them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credential_sidecar.devtools import pki

ACCOUNT = "111122223333"
REGION = "us-east-1"
TRUST_ANCHOR = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:trust-anchor/e2e-anchor"
PROFILE = f"arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:profile/e2e-profile"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/e2e"
CLI = [sys.executable, "-m", "credential_sidecar"]
CLEAN_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def free_port() -> int:
    """A loopback port that was free a moment ago (for configs that must keep a port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def http(method: str, url: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


IMDS_TTL = "X-aws-ec2-metadata-token-ttl-seconds"
IMDS_CREDS = "latest/meta-data/iam/security-credentials/"


def imds_read(base: str) -> tuple[str, dict[str, Any]]:
    """What an SDK does: token PUT, role name, then the credentials document."""
    code, _, token = http("PUT", base + "latest/api/token", {IMDS_TTL: "60"})
    assert code == 200
    headers = {"X-aws-ec2-metadata-token": token.decode()}
    code, _, role = http("GET", base + IMDS_CREDS, headers)
    assert code == 200
    code, _, body = http("GET", base + IMDS_CREDS + role.decode(), headers)
    assert code == 200, body
    return role.decode(), json.loads(body)


@dataclass
class Pki:
    dir: Path
    ca: pki.Issued
    leaf: pki.Issued
    cert: Path
    key: Path
    ca_file: Path
    intermediates: Path | None = None


def make_pki(directory: Path, key_type: pki.KeyType = "p256", *, with_intermediate: bool = False,
             name: str = "client") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca(f"{name} root CA", key_type)
    issuer, intermediates = ca, None
    if with_intermediate:
        issuer = pki.make_intermediate(ca, f"{name} intermediate CA", key_type)
        intermediates = directory / f"{name}-chain.pem"
        intermediates.write_bytes(issuer.cert_pem())
    leaf = pki.make_leaf(issuer, f"{name}.test.invalid", key_type)
    cert = directory / f"{name}.crt"
    cert.write_bytes(leaf.cert_pem())
    key = pki.write_private(directory / f"{name}.key", leaf.key_pem())
    ca_file = directory / f"{name}-ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    return Pki(directory, ca, leaf, cert, key, ca_file, intermediates)


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_cli(args: list[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one credential-sidecar command to completion."""
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), check=False)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV_KEYS}
    env.update(extra)
    return env


def start(args: list[str], log: Path, env: dict[str, str] | None = None, *,
          sockets: list[tuple[str, socket.socket]] | None = None,
          prefix: list[str] | None = None) -> Process:
    """``sockets``: (name, listening socket) handed over as systemd would (see activate.py);
    ``prefix``: a command that execs the rest (to start the daemon under some restriction)."""
    prefix = list(prefix or [])
    if sockets:
        specs = [f"{sock.fileno()}={name}" for name, sock in sockets]
        prefix += [sys.executable, str(Path(__file__).with_name("activate.py")), *specs, "--"]
    with log.open("wb") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(prefix + CLI + args, stdout=handle, stderr=subprocess.STDOUT,
                                env=env or clean_env(), cwd=str(log.parent),
                                pass_fds=[sock.fileno() for _, sock in sockets or []])
    return Process(proc, log)


@dataclass
class Emulator:
    process: Process
    url: str

    def stats(self) -> dict[str, Any]:
        status, _, body = http("GET", self.url + "/_emulator/stats")
        assert status == 200
        return json.loads(body)  # type: ignore[no-any-return]

    def faults(self, **faults: Any) -> None:
        status, _, body = http("POST", self.url + "/_emulator/faults",
                               {"Content-Type": "application/json"}, json.dumps(faults).encode())
        assert status == 200, body


@contextmanager
def emulator(tmp: Path, cas: list[Path], *, role_arns: tuple[str, ...] = (ROLE,),
             extra: list[str] | None = None, env: dict[str, str] | None = None,
             prefix: list[str] | None = None) -> Iterator[Emulator]:
    port_file = tmp / "emulator.port"
    args = ["emulator", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            "--trust-anchor-arn", TRUST_ANCHOR, "--profile-arn", PROFILE]
    for ca in cas:
        args += ["--ca", str(ca)]
    for role in role_arns:
        args += ["--role-arn", role]
    process = start(args + (extra or []), tmp / "emulator.log", env, prefix=prefix)
    try:
        port = wait_for(lambda: port_file.exists() and port_file.read_text().strip(),
                        what="the emulator's port file")
        yield Emulator(process, f"http://127.0.0.1:{port}")
    finally:
        process.stop()


def connection(name: str, material: Pki, endpoint: str, **extra: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "name": name, "type": "roles-anywhere", "certificate": str(material.cert),
        "private_key": str(material.key), "trust_anchor_arn": TRUST_ANCHOR,
        "profile_arn": PROFILE, "role_arn": ROLE, "session_name": f"{name}-e2e",
        "duration_seconds": 3600, "endpoint": endpoint,
    }
    if material.intermediates:
        conn["intermediates"] = str(material.intermediates)
    conn.update(extra)
    return conn


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for our configs: tables, arrays of tables, scalars and lists."""
    out: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            out.append(f"[{key}]")
            out += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        else:
            for item in value:
                out.append(f"[[{key}]]")
                out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        out.append("")
    return "\n".join(out)


@dataclass
class Daemon:
    process: Process
    config_path: Path
    doors: dict[str, str] = field(default_factory=dict)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.process.lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def url(self, door: str) -> str:
        return self.doors[door]

    def ready(self) -> bool:
        status, _, _ = http("GET", self.url("health") + "readyz")
        return status == 200


def daemon_config(tmp: Path, connections: list[dict[str, Any]], *,
                  imds: list[dict[str, Any]] | None = None, log_level: str = "debug",
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "daemon": {"state_dir": str(tmp / "state"), "log_format": "json", "log_level": log_level},
        "health": {"listen": "127.0.0.1:0"},
    }
    if imds is None:
        imds = [{"listen": "127.0.0.1:0", "connection": connections[0]["name"]}]
    if imds:
        config["imds"] = imds
    config.update(extra or {})
    config["connections"] = connections
    return config


@contextmanager
def daemon(tmp: Path, connections: list[dict[str, Any]], *,
           imds: list[dict[str, Any]] | None = None, log_level: str = "debug",
           wait_ready: bool = True, env: dict[str, str] | None = None,
           extra: dict[str, Any] | None = None, log_name: str = "daemon.log",
           expect_exit: int | None = 0,
           sockets: list[tuple[str, socket.socket]] | None = None,
           prefix: list[str] | None = None) -> Iterator[Daemon]:
    config = daemon_config(tmp, connections, imds=imds, log_level=log_level, extra=extra)
    path = tmp / "config.toml"
    path.write_text(to_toml(config))
    process = start(["run", "--config", str(path)], tmp / log_name, env, sockets=sockets,
                    prefix=prefix)
    handle = Daemon(process, path)
    expected = 1 + len(config.get("imds", [])) + (1 if "container" in config else 0)
    expected += 1 if "control" in config else 0

    def listening() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError("daemon exited early:\n" + "\n".join(process.lines()[-30:]))
        handle.doors = {
            e["door"]: e["address"] for e in handle.events() if e.get("event") == "listening"
        }
        return len(handle.doors) >= expected

    try:
        wait_for(listening, what="the daemon's listeners")
        if wait_ready:
            wait_for(handle.ready, what="the daemon to be ready")
        yield handle
    finally:
        code = process.stop()
        if expect_exit is not None:
            assert code == expect_exit, (
                f"daemon exit code {code}:\n" + "\n".join(process.lines()[-30:])
            )

"""Socket activation: the test holds the listening sockets, as systemd's .socket unit does, and
hands them to the real daemon with LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import harness as h


@contextmanager
def listening(*names: str) -> Iterator[list[tuple[str, socket.socket]]]:
    sockets = []
    for name in names:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sockets.append((name, sock))
    try:
        yield sockets
    finally:
        for _, sock in sockets:
            sock.close()


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def listening_events(d: h.Daemon) -> dict[str, dict[str, Any]]:
    return {e["door"]: e for e in d.events() if e.get("event") == "listening"}


def imds_credentials(base: str) -> dict[str, Any]:
    status, _, token = h.http("PUT", base + "latest/api/token",
                              {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200
    path = base + "latest/meta-data/iam/security-credentials/reports"
    status, _, body = h.http("GET", path, {"X-aws-ec2-metadata-token": token.decode()})
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def raw_get(sock_address: tuple[str, int], path: str) -> socket.socket:
    """Connect and send a request now; the answer is read later (see test below)."""
    client = socket.create_connection(sock_address, timeout=60)
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    return client


def read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    client.close()
    return b"".join(chunks)


def test_named_sockets_are_served(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu, \
            listening("imds", "container", "health") as sockets:
        (_, imds), (_, container), (_, health) = sockets
        token_file = tmp_path / "reports.token"
        conn = h.connection("reports", material, emu.url, container_token_file=str(token_file))
        with h.daemon(tmp_path, [conn], sockets=sockets,
                      extra={"container": {"listen": "127.0.0.1:0"}}) as d:
            events = listening_events(d)
            for door, sock in (("imds:reports", imds), ("container", container),
                               ("health", health)):
                assert events[door]["address"] == url_of(sock), events[door]
                assert events[door]["activated"] is True
            assert imds_credentials(url_of(imds))["Code"] == "Success"
            status, _, body = h.http("GET", url_of(container) + "v1/credentials/reports",
                                     {"Authorization": token_file.read_text()})
            assert status == 200 and json.loads(body)["AccessKeyId"].startswith("ASIA")
            status, _, _ = h.http("GET", url_of(health) + "readyz")
            assert status == 200


def test_a_restart_refuses_no_connection(tmp_path: Path) -> None:
    """While systemd holds the port, a client connecting between two daemon runs waits."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu, listening("health") as sockets:
        (_, health), = sockets
        conn = h.connection("reports", material, emu.url)
        with h.daemon(tmp_path, [conn], imds=[], sockets=sockets) as first:
            assert first.ready()
        assert first.process.proc.returncode == 0
        # No daemon runs now. The connection is accepted by the kernel (the socket is still
        # listening, held here) and the request waits in the queue.
        client = raw_get(health.getsockname(), "/readyz")
        with h.daemon(tmp_path, [conn], imds=[], sockets=sockets, log_name="second.log",
                      wait_ready=False):
            answer = read_all(client)
        # Answered by the second daemon: ready (200) or, before its first renewal, 503.
        assert answer.split(b" ", 2)[1] in (b"200", b"503"), answer[:200]
        assert b'"ready"' in answer, answer[:300]


def test_one_socket_unit_is_matched_by_address(tmp_path: Path) -> None:
    """One .socket unit names every fd alike: the configured address decides."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu, \
            listening("credential-sidecar.socket", "credential-sidecar.socket",
                      "bogus") as sockets:
        (_, imds), (_, health), (_, stray) = sockets
        conn = h.connection("reports", material, emu.url)
        imds_listen = f"127.0.0.1:{imds.getsockname()[1]}"
        health_listen = f"127.0.0.1:{health.getsockname()[1]}"
        with h.daemon(tmp_path, [conn], sockets=sockets,
                      imds=[{"listen": imds_listen, "connection": "reports"}],
                      extra={"health": {"listen": health_listen}}) as d:
            events = listening_events(d)
            assert events["imds:reports"]["activated"] and events["health"]["activated"]
            assert imds_credentials(url_of(imds))["Code"] == "Success"
            closed = [e for e in d.events()
                      if e.get("event") == "no listener for this inherited socket; closing it"]
            assert [e["fd_name"] for e in closed] == ["bogus"]
            assert closed[0]["address"] == f"127.0.0.1:{stray.getsockname()[1]}"


def test_without_activation_the_daemon_binds_itself(tmp_path: Path) -> None:
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        env = h.clean_env(LISTEN_PID="1", LISTEN_FDS="2", LISTEN_FDNAMES="imds:health")
        with h.daemon(tmp_path, [h.connection("reports", material, emu.url)], env=env) as d:
            assert not any(e["activated"] for e in listening_events(d).values())
            assert any(e.get("event") == "ignoring LISTEN_FDS meant for another process"
                       for e in d.events())


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate (Debian package systemd) is not installed")
def test_systemd_socket_activate_starts_the_daemon_on_the_first_connection(
    tmp_path: Path,
) -> None:
    """systemd's own tool: it listens, and execs the daemon when the first client connects."""
    material = h.make_pki(tmp_path / "pki")
    with h.emulator(tmp_path, [material.ca_file]) as emu:
        port = h.free_port()
        config = h.daemon_config(tmp_path, [h.connection("reports", material, emu.url)],
                                 imds=[])
        path = tmp_path / "config.toml"
        path.write_text(h.to_toml(config))
        with (tmp_path / "activated.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=health",
                 sys.executable, "-m", "credential_sidecar", "run", "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        process = h.Process(proc, tmp_path / "activated.log")
        try:
            h.wait_for(lambda: any("Listening on" in line for line in process.lines()),
                       what="systemd-socket-activate to listen")
            answer = read_all(raw_get(("127.0.0.1", port), "/healthz"))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            events = [json.loads(line) for line in process.lines() if line.startswith("{")]
            (event,) = [e for e in events if e.get("event") == "listening"]
            assert event["door"] == "health" and event["activated"]
            assert event["address"] == f"http://127.0.0.1:{port}/"
        finally:
            assert process.stop() == 0

"""The control socket: who is admitted, the protocol, and the socket file's life."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from credential_sidecar.client import Unreachable, ask, socket_from_config
from credential_sidecar.doors import control
from credential_sidecar.doors.audit import AuditTrail
from credential_sidecar.doors.control import ControlServer, Peer, admits, bind_socket, peer_of
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.testing import FakeClock, FakeSource


@dataclass(frozen=True)
class Conn:
    allowed_uids: list[int] = field(default_factory=list)
    allowed_gids: list[int] = field(default_factory=list)


@pytest.mark.parametrize(
    ("conn", "peer", "expected"),
    [
        (Conn(), Peer(1, 0, 0), True),  # root, always
        (Conn(), Peer(1, 999, 999), True),  # the daemon's own uid
        (Conn(), Peer(1, 1001, 1001), False),
        (Conn(allowed_uids=[1001]), Peer(1, 1001, 1001), True),
        (Conn(allowed_uids=[1001]), Peer(1, 1002, 1001), False),
        (Conn(allowed_gids=[50]), Peer(1, 1002, 50), True),  # primary group
        (Conn(allowed_gids=[50]), Peer(1, 1002, 1002, (7, 50)), True),  # supplementary group
        (Conn(allowed_gids=[50]), Peer(1, 1002, 1002, (7, 51)), False),
        (Conn(allowed_uids=[50]), Peer(1, 1002, 50), False),  # a uid list never admits a gid
    ],
)
def test_who_is_admitted(conn: Conn, peer: Peer, expected: bool) -> None:
    assert admits(conn, peer, daemon_uid=999) is expected


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="cs-") as name:
        yield Path(name)


def test_the_socket_is_0660_in_a_new_0750_directory(sock_dir: Path) -> None:
    path = sock_dir / "run" / "control.sock"
    sock = bind_socket(path)
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    finally:
        sock.close()


def test_a_stale_socket_is_replaced_a_live_one_or_a_file_refused(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    stale = bind_socket(path)
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert path.exists()
    live = bind_socket(path)
    try:
        with pytest.raises(OSError, match="in use by another running daemon"):
            bind_socket(path)
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        bind_socket(path)
    assert path.read_text() == "not a socket", "a regular file is never removed"


def test_the_kernel_names_the_peer(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    server = bind_socket(path)
    server.setblocking(True)
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            conn, _ = server.accept()
            with conn:
                peer = peer_of(conn)
    finally:
        server.close()
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert set(peer.groups) >= set(os.getgroups()) - {os.getegid()}


@dataclass
class Running:
    server: ControlServer
    manager: CredentialManager
    path: Path
    grants: dict[str, Conn]
    answers: list[tuple[str, int]]


@pytest.fixture
async def running(sock_dir: Path) -> AsyncIterator[Running]:
    clock = FakeClock()
    sources = {"app": FakeSource(clock, 3600, "app"), "down": FakeSource(clock, 3600, "down")}
    manager = CredentialManager(sources, clock)
    await manager.renew("app")
    grants = {"app": Conn(), "down": Conn()}
    answers: list[tuple[str, int]] = []
    server = ControlServer(sock_dir / "control.sock", manager, grants.get,
                           lambda: {"ready": False, "connections": []},
                           on_answer=lambda door, status: answers.append((door, status)),
                           audit=AuditTrail(clock))
    await server.start()
    try:
        yield Running(server, manager, server.path, grants, answers)
    finally:
        await server.stop()
    assert not server.path.exists(), "the socket file is removed at stop"


async def _ask(path: Path, request: object) -> dict[str, object]:
    return await asyncio.to_thread(ask, path, request)  # type: ignore[arg-type]


async def test_credentials_are_the_version_1_document_and_the_use_is_recorded(
    running: Running,
) -> None:
    with structlog.testing.capture_logs() as logs:
        answer = await _ask(running.path, {"op": "credentials", "name": "app"})
        again = await _ask(running.path, {"op": "credentials", "name": "app"})
    creds = running.manager.get("app")
    assert creds is not None
    assert answer == again == {"ok": True, "credentials": creds.process_document()}
    used = running.manager.states["app"].used_by
    assert list(used) == [("control", f"uid {os.geteuid()}")]
    audit = [e for e in logs if e.get("audit")]  # the same set again: no second line
    assert audit == [{"event": "credentials handed out", "log_level": "info", "audit": True,
                      "door": "control", "connection": "app", "uid": os.geteuid(),
                      "access_key_id": creds.access_key_id}]


@pytest.mark.parametrize(
    ("request_", "code", "status"),
    [
        ({"op": "credentials", "name": "nope"}, "NotFound", 404),
        ({"op": "credentials", "name": "down"}, "CredentialsUnavailable", 503),
        ({"op": "credentials"}, "BadRequest", 400),
        ({"op": "credentials", "name": 7}, "BadRequest", 400),
        ({"op": "rotate"}, "BadRequest", 400),
        (["op", "status"], "BadRequest", 400),
    ],
)
async def test_refusals_say_why(running: Running, request_: object, code: str,
                                status: int) -> None:
    answer = await _ask(running.path, request_)
    assert answer["ok"] is False and answer["code"] == code
    assert running.answers == [("control", status)], "counted for /metrics like HTTP statuses"
    assert isinstance(answer["message"], str) and answer["message"]
    assert "credentials" not in answer


def test_a_peer_that_is_not_admitted_is_refused_by_uid(running: Running) -> None:
    stranger = Peer(4242, 1001, 1001)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            answer = running.server.answer(b'{"op": "credentials", "name": "app"}\n', stranger)
    assert answer == {"ok": False, "code": "Forbidden",
                      "message": "uid 1001 may not read connection app"}
    assert [e for e in logs if e.get("audit")] == [  # once a minute, however often asked
        {"event": "credentials refused", "log_level": "warning", "audit": True,
         "door": "control", "connection": "app", "uid": 1001, "pid": 4242}]
    running.grants["app"] = Conn(allowed_uids=[1001])
    answer = running.server.answer(b'{"op": "credentials", "name": "app"}\n', stranger)
    assert answer["ok"] is True


async def test_malformed_lines_and_several_requests_on_one_connection(running: Running) -> None:
    reader, writer = await asyncio.open_unix_connection(str(running.path))
    try:
        writer.write(b"not json\n" + b'{"op": "status"}\n')
        await writer.drain()
        first = json.loads(await reader.readline())
        second = json.loads(await reader.readline())
    finally:
        writer.close()
        await writer.wait_closed()
    assert first["code"] == "BadRequest"
    assert second == {"ok": True, "ready": False, "connections": []}


async def test_the_client_reports_a_daemon_that_is_not_there(sock_dir: Path) -> None:
    with pytest.raises(Unreachable, match="No such file"):
        ask(sock_dir / "absent.sock", {"op": "status"})


def test_the_socket_path_is_read_from_the_config_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[control]\nsocket = "run/control.sock"\n')
    assert socket_from_config(str(config)) == tmp_path / "run" / "control.sock"
    config.write_text('[health]\nlisten = "127.0.0.1:0"\n')
    assert socket_from_config(str(config)) is None


def test_a_crash_answers_internal_error_and_is_counted(running: Running) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("bug")

    running.server.status = broken
    answer = running.server.answer(b'{"op": "status"}\n', Peer(1, 0, 0))
    assert answer == {"ok": False, "code": "InternalError", "message": "see the daemon's log"}
    assert running.answers == [("control", 500)]


async def test_clients_beyond_a_uids_share_are_closed_at_connect(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "MAX_CLIENTS_PER_UID", 2)
    held = [await asyncio.open_unix_connection(str(running.path)) for _ in range(2)]
    for reader, writer in held:  # both admitted: each answers
        writer.write(b'{"op": "status"}\n')
        assert json.loads(await reader.readline())["ok"] is True
    reader, writer = await asyncio.open_unix_connection(str(running.path))
    assert await asyncio.wait_for(reader.read(), 10) == b""  # the third: closed at once
    assert running.server.rejected == 1
    for _, w in [*held, (reader, writer)]:
        w.close()


async def test_a_client_trickling_its_request_is_closed_as_an_idle_one_would_be(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle bound covers a whole request, not each read: one byte at a time, each well
    inside the bound, must not hold a client's place (and the per-uid share) for ever."""
    monkeypatch.setattr(control, "IDLE_SECONDS", 0.5)
    reader, writer = await asyncio.open_unix_connection(str(running.path))
    closed = asyncio.ensure_future(reader.read())
    try:
        for byte in b'{"op": "status"' * 20:  # 300 bytes, one each 0.1 s: 30 s in all
            writer.write(bytes([byte]))
            done, _ = await asyncio.wait([closed], timeout=0.1)
            if done:
                break
        assert closed.done(), "still open after 30 s of trickling"
        assert closed.result() == b""
    finally:
        closed.cancel()
        writer.close()


@pytest.mark.parametrize("line", [b"[" * 60000 + b"\n", b'{"op": ' + b"{" * 20000 + b"\n",
                                  b'{"op": "status", "x": ' + b"[" * 9 + b"]" * 9 + b"}\n"])
async def test_deep_nesting_is_a_bad_request_not_a_crash(
    running: Running, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(running.path))
    try:
        writer.write(line)
        await writer.drain()
        answer = json.loads(await reader.readline())
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer["code"] == "BadRequest" and "nested deeper than 8" in answer["message"]
    assert running.answers == [("control", 400)]
    assert "Traceback" not in caplog.text


def test_brackets_inside_strings_do_not_count() -> None:
    from credential_sidecar.doors.control import _depth

    assert _depth(b'{"op": "[[[[[[[[[[[[\\"{{{{{{{{{{{{"}') == 1

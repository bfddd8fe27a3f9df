"""A stop of the control socket never costs a client its answer, with or without socket
activation: it stops accepting, answers every request received, and leaves new connections to
the next process (queued in systemd's socket, or refused by path until the next one binds).

"Activated" here: the test holds the listening socket, as systemd's .socket unit does, and the
server gets a duplicate, as the daemon does from LISTEN_FDS.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from credential_sidecar.doors import control
from credential_sidecar.doors.control import ControlServer, check_inherited
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.testing import FakeClock, FakeSource
from tests.helpers.procs import assert_left_in_queue, held_listener, read_until_closed

REQUEST = b'{"op": "credentials", "name": "app"}\n'


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="cs-") as name:
        yield Path(name)


@asynccontextmanager
async def serving(path: Path, sock: socket.socket | None = None) -> AsyncIterator[ControlServer]:
    clock = FakeClock()
    manager = CredentialManager({"app": FakeSource(clock, 3600, "app")}, clock)
    await manager.renew("app")
    server = ControlServer(path, manager, {"app": object()}.get,  # type: ignore[arg-type]
                           lambda: {"ready": True}, sock=sock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(10)
        client.connect(str(path))
    except OSError:
        client.close()
        raise
    return client


def _answered(data: bytes) -> bool:
    lines = data.splitlines()
    return len(lines) == 1 and json.loads(lines[0])["credentials"]["Version"] == 1


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("turns", range(6))
async def test_a_request_sent_as_the_stop_begins_is_answered(sock_dir: Path, turns: int) -> None:
    """Without activation nobody takes the queue after this process: whatever loop turn the
    stop lands on, the client connected before it gets its whole answer, then end of file."""
    async with serving(sock_dir / "control.sock") as server:
        with _connect(server.path) as client:
            client.sendall(REQUEST)
            await _turns(turns)
            await server.stop()
            assert _answered(await asyncio.to_thread(read_until_closed, client))


@pytest.mark.parametrize("turns", range(6))
async def test_activated_a_request_is_answered_or_left_queued_for_the_next_process(
    sock_dir: Path, turns: int,
) -> None:
    path = sock_dir / "control.sock"
    with held_listener(str(path)) as held:
        async with serving(path, held.dup()) as server:
            with _connect(path) as client:
                client.sendall(REQUEST)
                await _turns(turns)
                await server.stop()
                try:
                    queued = held.accept()[0]
                except BlockingIOError:
                    assert _answered(await asyncio.to_thread(read_until_closed, client))
                else:
                    assert_left_in_queue(client, queued, REQUEST)
        assert stat.S_ISSOCK(path.lstat().st_mode), "systemd's socket file was removed"


async def test_a_request_half_sent_when_the_stop_begins_is_waited_for_and_answered(
    sock_dir: Path,
) -> None:
    async with serving(sock_dir / "control.sock") as server:
        with _connect(server.path) as client:
            client.sendall(REQUEST[:10])
            await _until(lambda: any(c.transport for c in server._clients.values()))
            stopping = asyncio.create_task(server.stop())
            await _turns(20)
            assert not stopping.done(), "the stop did not wait for the rest of the request"
            client.sendall(REQUEST[10:])
            assert _answered(await asyncio.to_thread(read_until_closed, client))
            await stopping


async def test_a_connection_idle_after_its_answer_is_closed_at_once(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only requests hold a stop; the idle connection sees end of file, not a reset."""
    monkeypatch.setattr(control, "SHUTDOWN_SECONDS", 60.0)
    async with serving(sock_dir / "control.sock") as server:
        with _connect(server.path) as client:
            client.sendall(REQUEST)
            first = await asyncio.to_thread(client.recv, 65536)
            assert _answered(first)
            await _until(lambda: all(c.idle for c in server._clients.values()))
            await asyncio.wait_for(server.stop(), 10)
            assert await asyncio.to_thread(read_until_closed, client) == b""


async def test_a_client_that_never_sends_holds_a_stop_only_for_the_bound(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control, "SHUTDOWN_SECONDS", 0.2)
    async with serving(sock_dir / "control.sock") as server:
        with _connect(server.path) as client:
            await _until(lambda: bool(server._clients))
            await asyncio.wait_for(server.stop(), 10)
            assert await asyncio.to_thread(read_until_closed, client) == b""


async def test_after_the_stop_begins_no_new_client_reaches_this_process(sock_dir: Path) -> None:
    """Without activation the file is gone at once (ENOENT: the client retries until the next
    process binds); with it, the new connection waits in systemd's queue, unread."""
    async with serving(sock_dir / "control.sock") as server:
        with _connect(server.path) as holding:
            holding.sendall(REQUEST[:10])  # keeps the stop going while the test connects
            await _until(lambda: any(c.transport for c in server._clients.values()))
            stopping = asyncio.create_task(server.stop())
            await _turns(2)
            with pytest.raises(FileNotFoundError):
                _connect(server.path)
            holding.sendall(REQUEST[10:])
            await stopping
    path = sock_dir / "activated.sock"
    with held_listener(str(path)) as held:
        async with serving(path, held.dup()) as server:
            with _connect(path) as holding:
                holding.sendall(REQUEST[:10])
                await _until(lambda: any(c.transport for c in server._clients.values()))
                stopping = asyncio.create_task(server.stop())
                await _turns(2)
                with _connect(path) as late:
                    late.sendall(REQUEST)
                    holding.sendall(REQUEST[10:])
                    await stopping
                    assert _answered(await asyncio.to_thread(read_until_closed, holding))
                    queued = held.accept()[0]
                    with queued:
                        assert queued.recv(4096) == REQUEST


async def test_a_socket_file_it_did_not_bind_is_never_removed(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    async with serving(path):
        path.unlink()  # say, an operator; then someone else's daemon binds the path
        with held_listener(str(path)):
            pass
    assert stat.S_ISSOCK(path.lstat().st_mode)


# --- what systemd passed: served only when nobody else could use or swap it -------------------


def test_an_inherited_socket_others_may_connect_to_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with held_listener(str(path)):
        assert check_inherited(path) is True
        os.chmod(path, 0o666)
        with pytest.raises(OSError, match="0666: anyone could connect to it"):
            check_inherited(path)
        os.chmod(path, 0o660)
        os.chmod(sock_dir, 0o777)
        with pytest.raises(OSError, match=r"control socket directory .* has mode 0777"):
            check_inherited(path)
        os.chmod(sock_dir, 0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file someone else's takes root")
def test_an_inherited_socket_someone_else_owns_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with held_listener(str(path)):
        os.chown(path, 4242, -1)
        with pytest.raises(OSError, match="belongs to uid 4242"):
            check_inherited(path)


async def test_an_inherited_socket_whose_file_is_gone_is_replaced_by_one_bound_here(
    sock_dir: Path,
) -> None:
    """Stopping the service removes its RuntimeDirectory= and systemd's socket file with it:
    serving a name nobody can reach would fail every client, so the daemon binds anew."""
    path = sock_dir / "control.sock"
    with held_listener(str(path)) as held:
        path.unlink()
        async with serving(path, held.dup()) as server:
            assert server.sock is None
            with _connect(path) as client:
                client.sendall(REQUEST)
                assert _answered(await asyncio.to_thread(client.recv, 65536))
        assert not path.is_socket(), "a socket this process bound is removed at stop"


async def _until(predicate: Callable[[], bool], turns: int = 1000) -> None:
    """Loop turns until ``predicate()``; a connection reaching the server takes a few, and the
    thread-free test would otherwise have to sleep."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0.001 if _ > 100 else 0)
    raise AssertionError(f"not reached: {predicate}")

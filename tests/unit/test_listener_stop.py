"""A stop never costs a client its answer: it stops accepting, answers every connection already
accepted, and leaves the rest queued on the listening socket for the next process (issue 11).

The listening socket is held here as systemd holds it under socket activation; the listener gets
a duplicate, as the daemon does from LISTEN_FDS.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from credential_sidecar.doors import listener as listener_module
from credential_sidecar.doors.listener import Listener
from tests.helpers.procs import assert_left_in_queue, held_listener, read_until_closed
from tests.helpers.tls_servers import hello_app

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _client(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.settimeout(5)
    return client


async def _queued(held: socket.socket) -> socket.socket | None:
    try:
        return held.accept()[0]
    except BlockingIOError:
        return None


@pytest.mark.parametrize("turns", range(8))
async def test_a_connection_accepted_as_the_stop_begins_is_answered_or_left_queued(
    turns: int,
) -> None:
    """Whatever loop turn the stop lands on, relative to asyncio's accept (which makes the
    transport one turn later, in a task), the client gets its whole answer, or its connection
    is still in the queue for the next process: never a reset or a close without an answer."""
    with held_listener(("127.0.0.1", 0)) as held:
        listener = Listener("test", hello_app(), "127.0.0.1", 0, sock=held.dup())
        port = await listener.start()
        with _client(port) as client:
            client.sendall(REQUEST)
            for _ in range(turns):
                await asyncio.sleep(0)
            await listener.stop()
            queued = await _queued(held)
            if queued is None:
                try:
                    answer = await asyncio.to_thread(read_until_closed, client)
                except TimeoutError:
                    pytest.fail("accepted, then neither answered nor left in the queue: the"
                                " process would reset it as it exits")
                assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")
            else:
                assert_left_in_queue(client, queued, REQUEST)


async def test_a_connection_accepted_before_its_request_is_answered_with_connection_close(
) -> None:
    with held_listener(("127.0.0.1", 0)) as held:
        listener = Listener("test", hello_app(), "127.0.0.1", 0, sock=held.dup())
        port = await listener.start()
        with _client(port) as client:
            for _ in range(100):  # accepted and given its protocol
                await asyncio.sleep(0.01)
                if await _accepted(listener):
                    break
            stopping = asyncio.create_task(listener.stop())
            await asyncio.sleep(0.1)
            assert not stopping.done(), "the stop did not wait for the first request"
            client.sendall(REQUEST)  # only now
            answer = await asyncio.to_thread(read_until_closed, client)
            await stopping
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head


async def _accepted(listener: Listener) -> bool:
    runner = listener._runner  # the test looks inside; the daemon never needs to
    return runner is not None and runner.server is not None and bool(runner.server.connections)


async def test_idle_keep_alive_connections_are_closed_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answered connection that sent nothing since is closed cleanly (EOF, not a reset) at
    once: only connections that still owe an answer hold a stop."""
    monkeypatch.setattr(listener_module, "FIRST_REQUEST_GRACE", 30.0)
    with held_listener(("127.0.0.1", 0)) as held:
        listener = Listener("test", hello_app(), "127.0.0.1", 0, sock=held.dup())
        port = await listener.start()
        with _client(port) as client:
            client.sendall(REQUEST)
            first = await asyncio.to_thread(client.recv, 65536)
            assert first.startswith(b"HTTP/1.1 200") and b"hello" in first
            began = time.monotonic()
            await listener.stop()
            assert time.monotonic() - began < 5
            assert await asyncio.to_thread(read_until_closed, client) == b""


async def test_a_client_that_never_sends_holds_a_stop_only_for_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "FIRST_REQUEST_GRACE", 0.3)
    with held_listener(("127.0.0.1", 0)) as held:
        listener = Listener("test", hello_app(), "127.0.0.1", 0, sock=held.dup())
        port = await listener.start()
        with _client(port):
            for _ in range(100):
                await asyncio.sleep(0.01)
                if await _accepted(listener):
                    break
            began = time.monotonic()
            await listener.stop()
            assert 0.25 < time.monotonic() - began < 5

"""Every listener is bounded: idle connections close, and a door or one uid holds only its share."""

from __future__ import annotations

import asyncio

import pytest

from credential_sidecar.clock import SystemClock
from credential_sidecar.doors import listener as listener_module
from credential_sidecar.doors.access import Access, ConnectionGate
from credential_sidecar.doors.audit import AuditTrail
from credential_sidecar.doors.listener import Listener
from credential_sidecar.doors.peers import PeerFinder
from tests.helpers.tls_servers import hello_app


class _Gate(ConnectionGate):
    """Says when its last connection is gone."""

    empty = asyncio.Event()

    def release(self, transport: asyncio.BaseTransport) -> None:
        super().release(transport)
        if self.open == 0:
            self.empty.set()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def test_connections_beyond_a_uids_share_are_closed_at_accept() -> None:
    rejected: list[tuple[str, str]] = []
    finder = PeerFinder()
    access = Access(finder, lambda name: None, AuditTrail(SystemClock()))
    gate = _Gate("test", access, max_per_uid=2,
                 on_reject=lambda door, reason: rejected.append((door, reason)))
    listener = Listener("test", hello_app(), "127.0.0.1", 0, gate=gate)
    port = await listener.start()
    try:
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        # The three over the share are closed without a word.
        assert all([await _closed(reader) for reader, _ in pairs[2:]])
        assert rejected == [("test", "peer_full")] * 3
        assert gate.per_uid == {0: 2} and gate.open == 2
        reader, writer = pairs[0]  # the two admitted ones are served
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        for _, writer in pairs:
            writer.close()
        # Closing frees the share: a new connection is admitted.
        await asyncio.wait_for(gate.empty.wait(), 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await listener.stop()
        finder.close()


async def test_a_door_holds_at_most_its_connections() -> None:
    gate = ConnectionGate("test", None, max_connections=3)
    listener = Listener("test", hello_app(), "127.0.0.1", 0, gate=gate)
    port = await listener.start()
    try:
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        assert await _closed(pairs[3][0])
        assert gate.open == 3
        for _, writer in pairs:
            writer.close()
    finally:
        await listener.stop()


async def test_idle_and_half_sent_requests_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "IDLE_SECONDS", 0.2)
    listener = Listener("test", hello_app(), "127.0.0.1", 0)
    port = await listener.start()
    try:
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET / HTTP/1.1\r\nHost: 127.")  # never finishes its headers
        assert await _closed(silent[0]) and await _closed(partial[0])
        for _, writer in (silent, partial):
            writer.close()
    finally:
        await listener.stop()

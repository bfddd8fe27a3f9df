"""What the daemon tells systemd: the one-line status, READY=1 on time, reload and stop notices.

The manager runs on a FakeClock; notifications go to a real Unix datagram socket.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.systemd.link import ServiceLink, summary
from credential_sidecar.systemd.notify import Notifier
from credential_sidecar.testing import FakeClock
from credential_sidecar.upstream.base import FixedIdentity, UpstreamError


class Source(FixedIdentity):
    """Issues 3600 s sets; `gate` holds the first fetch back, `failing` refuses."""

    def __init__(self, clock: FakeClock, name: str) -> None:
        self.clock = clock
        self.name = name
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing: UpstreamError | None = None

    async def fetch(self) -> Credentials:
        await self.gate.wait()
        if self.failing is not None:
            raise self.failing
        now = self.clock.time()
        return Credentials(
            access_key_id="ASIA" + secrets.token_hex(8).upper(),
            secret_access_key=secrets.token_urlsafe(30),
            session_token=secrets.token_urlsafe(60),
            expiration=utc(now + 3600),
            issued_at=utc(now),
        )

    async def binding(self) -> str:
        return "binding"

    async def close(self) -> None:
        return None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


@pytest.fixture
async def manager(clock: FakeClock) -> AsyncIterator[CredentialManager]:
    sources = {name: Source(clock, name) for name in ("reports", "backups", "extra")}
    mgr = CredentialManager(sources, clock, rng=random.Random(3))  # type: ignore[arg-type]
    yield mgr
    await mgr.stop()


async def test_summary_counts_and_the_next_renewal(
    clock: FakeClock, manager: CredentialManager
) -> None:
    assert summary(manager, ["reports", "backups"]) == (
        "0/3 connections ready; not ready: reports (no credentials yet), "
        "backups (no credentials yet)"
    )
    await manager.start()
    await clock.advance(0)
    line = summary(manager, ["reports", "backups"])
    # Renewal falls at 50-60 % of the hour left: due in 24-30 minutes.
    head, _, due = line.partition("; next renewal in ")
    assert head == "3/3 connections ready"
    assert due.endswith("m") and 24 <= int(due[:-1]) <= 30
    await clock.advance(30 * 60 + 1)  # past every renewal point: all renewed, new hour ahead
    assert summary(manager, []).startswith("3/3 connections ready; next renewal in ")


async def test_summary_names_a_failing_connection(
    clock: FakeClock, manager: CredentialManager
) -> None:
    manager.sources["backups"].failing = UpstreamError(  # type: ignore[attr-defined]
        "AccessDeniedException", "no")
    await manager.start()
    await clock.advance(0)
    line = summary(manager, ["reports", "backups"])
    assert line.startswith("2/3 connections ready; not ready: backups (AccessDeniedException)")


async def test_ready_waits_for_every_required_connection(
    clock: FakeClock, manager: CredentialManager, receiver: socket.socket
) -> None:
    gate = manager.sources["backups"].gate  # type: ignore[attr-defined]
    gate.clear()
    notifier = Notifier(receiver.getsockname())
    link = ServiceLink(notifier, manager, lambda: ["reports", "backups"], ready_timeout=3600)
    await manager.start()
    link.start()
    await clock.advance(0)
    await asyncio.sleep(0)
    assert not link.announced and received(receiver) == []
    gate.set()
    await clock.advance(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert link.announced
    (message,) = received(receiver)
    assert message["READY"] == "1"
    assert message["STATUS"].startswith("3/3 connections ready; next renewal in ")
    await link.close()


async def test_ready_after_the_timeout_when_a_connection_is_stuck(
    clock: FakeClock, manager: CredentialManager, receiver: socket.socket
) -> None:
    manager.sources["backups"].gate.clear()  # type: ignore[attr-defined]
    notifier = Notifier(receiver.getsockname())
    link = ServiceLink(notifier, manager, lambda: ["reports", "backups"], ready_timeout=0)
    await manager.start()
    await clock.advance(0)
    link.start()
    for _ in range(5):
        await asyncio.sleep(0)
    (message,) = received(receiver)
    assert message["READY"] == "1"
    assert message["STATUS"].startswith(
        "2/3 connections ready; not ready: backups (no credentials yet)")
    await link.close()


async def test_optional_only_is_ready_at_once(
    clock: FakeClock, manager: CredentialManager, receiver: socket.socket
) -> None:
    for source in manager.sources.values():
        source.gate.clear()  # type: ignore[attr-defined]
    link = ServiceLink(Notifier(receiver.getsockname()), manager, lambda: [], ready_timeout=60)
    await manager.start()
    link.start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert [m["READY"] for m in received(receiver)] == ["1"]
    await link.close()


async def test_reload_and_stop_notices(
    clock: FakeClock, manager: CredentialManager, receiver: socket.socket
) -> None:
    link = ServiceLink(Notifier(receiver.getsockname()), manager, lambda: [], ready_timeout=60)
    await manager.start()
    await clock.advance(0)
    link.reloading()
    link.reloaded("reload refused: config invalid (1 problem(s))")
    link.update_status(force=True)
    link.reloading()
    link.reloaded(None)
    link.stopping()
    messages = received(receiver)
    assert [sorted(m) for m in messages] == [
        ["MONOTONIC_USEC", "RELOADING", "STATUS"],
        ["READY", "STATUS"],
        ["STATUS"],
        ["MONOTONIC_USEC", "RELOADING", "STATUS"],
        ["READY", "STATUS"],
        ["STATUS", "STOPPING"],
    ]
    refused = "reload refused: config invalid (1 problem(s)); 3/3 connections ready"
    assert messages[1]["STATUS"].startswith(refused)
    assert messages[2]["STATUS"].startswith(refused), "the refusal stays until a good reload"
    assert messages[4]["STATUS"].startswith("3/3 connections ready")
    await link.close()


async def test_status_is_sent_only_when_it_changes(
    clock: FakeClock, manager: CredentialManager, receiver: socket.socket
) -> None:
    link = ServiceLink(Notifier(receiver.getsockname()), manager, lambda: [], ready_timeout=60)
    await manager.start()
    await clock.advance(0)
    link.update_status()
    link.update_status()
    assert len(received(receiver)) == 1
    await clock.advance(120)  # "next renewal in" drops by two minutes
    link.update_status()
    assert len(received(receiver)) == 1
    await link.close()


def test_ready_timeout_setting() -> None:
    from credential_sidecar.config.errors import ConfigError
    from credential_sidecar.config.load import parse_config

    conn = {"name": "k", "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE"}
    assert parse_config({"connections": [conn]}).daemon.ready_timeout_seconds == 60
    ok = parse_config({"daemon": {"ready_timeout_seconds": 0}, "connections": [conn]})
    assert ok.daemon.ready_timeout_seconds == 0
    for bad, message in [(-1, "must be at least 0"), (3601, "must be at most 3600"),
                         ("60", "must be an integer"), (1.5, "must be an integer")]:
        with pytest.raises(ConfigError) as err:
            parse_config({"daemon": {"ready_timeout_seconds": bad}, "connections": [conn]})
        assert err.value.problems == [f"daemon.ready_timeout_seconds: {message}"], bad

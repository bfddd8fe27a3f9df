"""Availability rules that need no daemon process: the cache key, a full disk, readiness of
doors, a pending reload, and upstream answers that are not AWS-shaped."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from credential_sidecar.config.load import parse_config
from credential_sidecar.config.model import AccessKeysConnection
from credential_sidecar.files import FileError, atomic_write
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.state.cache import load_or_create_key
from credential_sidecar.testing import FakeClock, FakeSource, settle
from credential_sidecar.upstream.access_keys import AccessKeySource
from credential_sidecar.upstream.base import UpstreamError

OUTAGE = UpstreamError("InternalServerException", "upstream down", 503)


def test_a_short_key_the_daemon_made_is_set_aside_and_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / "cache-key"
    key_file.write_bytes(b"")  # what an older version left on a full disk
    key_file.chmod(0o600)
    key = load_or_create_key(key_file)
    assert len(key) == 32 and key_file.read_bytes() == key
    assert (tmp_path / "cache-key.damaged").read_bytes() == b""


def test_a_short_key_the_operator_provides_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "cache-key"
    key_file.write_bytes(b"short")
    key_file.chmod(0o600)
    with pytest.raises(FileError, match="exactly 32 bytes"):
        load_or_create_key(key_file, ours=False)
    assert key_file.read_bytes() == b"short"


def _fill(path: Path) -> None:
    """Write until the filesystem refuses (unbuffered, so nothing is left to flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, filled to the last block (the test runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        _fill(mount / "filler")
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_leaves_the_old_file_whole_and_no_temp_file(full_disk: Path) -> None:
    target = full_disk / "records.json"
    (full_disk / "filler").unlink()
    atomic_write(target, b"old contents\n")
    _fill(full_disk / "filler")
    with pytest.raises(OSError):
        atomic_write(target, b"x" * 200_000)
    assert target.read_bytes() == b"old contents\n"
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "records.json"]


def test_no_cache_key_is_left_behind_by_a_full_disk(full_disk: Path) -> None:
    key_file = full_disk / "cache-key"
    with pytest.raises(OSError):
        load_or_create_key(key_file)
    assert not key_file.exists(), "a half-written key would be trusted at the next start"
    (full_disk / "filler").unlink()
    assert len(load_or_create_key(key_file)) == 32


async def test_a_pending_reload_keeps_the_old_set_until_the_new_source_has_one() -> None:
    clock = FakeClock()
    old = FakeSource(clock, 3600, "old")
    manager = CredentialManager({"conn": old}, clock, rng=random.Random(1))
    await manager.start()
    await settle()
    first = manager.get("conn")
    assert first is not None
    new = FakeSource(clock, 1800, "new")
    new.failing = OUTAGE
    await manager.replace("conn", new, "changed duration_seconds")
    await settle()
    assert manager.get("conn") is first, "the old set must keep being served"
    state = manager.states["conn"]
    assert state.phase(clock.time(), manager.policy) == "reload pending"
    assert "changed duration_seconds" in (manager.pending_reloads()["conn"])
    assert "upstream down" in manager.pending_reloads()["conn"]
    new.failing = None
    await clock.advance(130)  # past the first retry
    await settle()
    assert manager.get("conn") is new.issued[-1]
    assert manager.pending_reloads() == {}
    # Had it never succeeded, the old set would have been served until its last minute only.
    await manager.stop()


async def test_a_connection_still_reading_its_cache_says_restoring() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    class SlowStore:
        async def save(self, name: str, binding: str, creds: object) -> None:
            return None

        async def load(self, name: str, binding: str) -> None:
            await gate.wait()

        async def mark_pending(self, name: str, reason: str | None) -> None:
            return None

        async def pending(self, name: str) -> str | None:
            return None

    manager = CredentialManager({"conn": FakeSource(clock, 3600)}, clock, store=SlowStore())
    restoring = asyncio.create_task(manager.restore())
    await settle()
    assert manager.problems() == {"conn": "restoring from the cache"}
    assert manager.states["conn"].phase(clock.time(), manager.policy) == "restoring"
    gate.set()
    await restoring
    assert manager.problems() == {"conn": "no credentials yet"}


@pytest.fixture
async def html_sts() -> AsyncIterator[str]:
    """An 'STS' that answers what a captive portal or a misrouted proxy would."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Welcome to the hotel network</body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_html_answer_from_sts_is_a_malformed_response(
    html_sts: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
    secret.chmod(0o600)
    config = parse_config({"connections": [{
        "name": "keys", "type": "access-keys", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key_file": str(secret), "endpoint": html_sts,
    }]})
    connection = config.connections[0]
    assert isinstance(connection, AccessKeysConnection)
    source = AccessKeySource(connection, FakeClock(), learn=False, timeout=5)
    try:
        with pytest.raises(UpstreamError) as caught:
            await source.fetch()
    finally:
        await source.close()
    assert caught.value.code == "MalformedResponse"
    assert "not an AWS response" in caught.value.message


async def test_a_token_file_that_cannot_be_made_is_named_and_retried(tmp_path: Path) -> None:
    from credential_sidecar.devtools import pki
    from credential_sidecar.server import TOKEN_RETRY_SECONDS, Daemon

    ca = pki.make_ca("test CA", "p256")
    leaf = pki.make_leaf(ca, "client", "p256")
    (tmp_path / "c.crt").write_bytes(leaf.cert_pem())
    pki.write_private(tmp_path / "c.key", leaf.key_pem())
    blocker = tmp_path / "tokens"
    blocker.write_text("a file where the token directory should be")
    config = parse_config({
        "daemon": {"state_dir": str(tmp_path / "state")},
        "container": {"listen": "127.0.0.1:0"},
        "connections": [{
            "name": "app", "type": "roles-anywhere", "certificate": str(tmp_path / "c.crt"),
            "private_key": str(tmp_path / "c.key"), "session_name": "test",
            "trust_anchor_arn": "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/t",
            "profile_arn": "arn:aws:rolesanywhere:us-east-1:111122223333:profile/p",
            "role_arn": "arn:aws:iam::111122223333:role/r", "endpoint": "http://127.0.0.1:9",
            "container_token_file": str(blocker / "app.token"),
        }],
    })
    clock = FakeClock()
    daemon = Daemon(config, clock=clock)
    await daemon.start()
    try:
        problems = daemon.door_problems()
        assert list(problems) == ["container:app"] and str(blocker) in problems["container:app"]
        blocker.unlink()
        blocker.mkdir(mode=0o700)
        await settle()  # the retry chore is asleep on the clock
        await clock.advance(TOKEN_RETRY_SECONDS + 1)
        for _ in range(200):  # the retry runs its file work in a thread
            if not daemon.door_problems():
                break
            await asyncio.sleep(0.01)
        assert daemon.door_problems() == {}
        assert (blocker / "app.token").exists()
    finally:
        await daemon.stop()


def test_a_wildcard_listener_accepts_address_literals_but_no_foreign_name() -> None:
    from credential_sidecar.doors.guards import HostGuard

    guard = HostGuard("0.0.0.0")
    guard.port = 9913
    for host in ("127.0.0.1:9913", "10.1.2.3:9913", "[fd00::5]:9913", "localhost:9913", None):
        assert guard.allows(host), host
    for host in ("attacker.example:9913", "127.0.0.1:80", "rebind.127.0.0.1.nip.io:9913"):
        assert not guard.allows(host), host
    assert not HostGuard("127.0.0.1").allows("10.1.2.3")


class _BoundSource(FakeSource):
    """A fake upstream whose identity (what the cache binds a set to) is named."""

    def __init__(self, clock: FakeClock, lifetime: int, binding: str) -> None:
        super().__init__(clock, lifetime, binding)
        self._binding = binding

    async def binding(self) -> str:
        return self._binding


async def test_a_pending_reload_survives_a_restart(tmp_path: Path) -> None:
    from credential_sidecar.state.cache import CredentialCache

    key = bytes(range(32))
    clock = FakeClock()
    old = _BoundSource(clock, 3600, "old-settings")
    first = CredentialManager({"conn": old}, clock, rng=random.Random(1),
                              store=CredentialCache(tmp_path, key))
    await first.start()
    await settle()
    served = first.get("conn")
    assert served is not None
    new = _BoundSource(clock, 3600, "new-settings")
    new.failing = OUTAGE
    await first.replace("conn", new, "changed role_arn")
    await settle()
    await first.stop()  # as good as a kill: nothing more is written

    again = _BoundSource(clock, 3600, "new-settings")
    again.failing = OUTAGE
    second = CredentialManager({"conn": again}, clock, rng=random.Random(2),
                               store=CredentialCache(tmp_path, key))
    await second.start()
    await settle()
    restored = second.get("conn")
    assert restored is not None and restored.access_key_id == served.access_key_id
    assert "changed role_arn" in second.pending_reloads()["conn"]
    assert again.calls >= 1, "the restarted daemon keeps trying the new settings"
    again.failing = None
    await clock.advance(130)
    for _ in range(300):  # the renewal persists its set, then clears the mark, in threads
        if not (tmp_path / "conn.pending").exists():
            break
        await asyncio.sleep(0.01)
    assert not (tmp_path / "conn.pending").exists()
    assert second.get("conn") is again.issued[-1]
    assert second.pending_reloads() == {}
    await second.stop()

    third = CredentialManager({"conn": _BoundSource(clock, 3600, "new-settings")}, clock,
                              store=CredentialCache(tmp_path, key))
    await third.restore()
    assert third.get("conn") is not None and third.pending_reloads() == {}

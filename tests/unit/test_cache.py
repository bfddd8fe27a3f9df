"""The persistent cache: sealed, bound to the identity, and never trusted blindly."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from credential_sidecar.clock import utc
from credential_sidecar.credentials import Credentials
from credential_sidecar.files import FileError
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.state.cache import CredentialCache, load_or_create_key, seal
from credential_sidecar.testing import FakeClock, FakeSource

NOW = 1_800_000_000.0


SECRET = "canary-secret-0123456789abcdefghijklmnop"


def creds(lifetime: float = 3600, secret: str = SECRET) -> Credentials:
    return Credentials("ASIAEXAMPLE000000001", secret, "token-" + "x" * 40,
                       utc(NOW + lifetime), utc(NOW), "111122223333")


@pytest.fixture
def cache(tmp_path: Path) -> CredentialCache:
    return CredentialCache(tmp_path / "cache", load_or_create_key(tmp_path / "cache-key"))


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert load_or_create_key(tmp_path / "k") == key and len(key) == 32


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_key(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(FileError, match="0644"):
        load_or_create_key(tmp_path / "k")


async def test_round_trip_and_nothing_in_the_clear(cache: CredentialCache) -> None:
    original = creds()
    await cache.save("app", "binding-1", original)
    blob = cache.path("app").read_bytes()
    assert original.secret_access_key.encode() not in blob
    assert original.session_token.encode() not in blob
    assert stat.S_IMODE(os.stat(cache.path("app")).st_mode) == 0o600
    assert await cache.load("app", "binding-1") == original


async def test_a_changed_identity_or_name_does_not_open(cache: CredentialCache) -> None:
    await cache.save("app", "binding-1", creds())
    assert await cache.load("app", "binding-2") is None
    os.rename(cache.path("app"), cache.path("other"))
    assert await cache.load("other", "binding-1") is None


async def test_a_cancelled_write_never_lands_after_a_later_one(
    cache: CredentialCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal cancelled by a reload leaves its write running in a thread; the reload's own
    write must still be the one on disk (else a restart finds the old settings' set)."""
    release, started, landed = threading.Event(), threading.Event(), threading.Event()
    plain_write = cache._write

    def slow_first_write(name: str, blob: bytes) -> None:
        if started.is_set():
            plain_write(name, blob)
            return
        started.set()
        release.wait(10)
        plain_write(name, blob)
        landed.set()

    monkeypatch.setattr(cache, "_write", slow_first_write)
    older = asyncio.create_task(cache.save("app", "old-settings", creds()))
    assert await asyncio.to_thread(started.wait, 10)
    older.cancel()
    newer = asyncio.create_task(cache.save("app", "new-settings", creds()))
    await asyncio.sleep(0.01)
    release.set()
    await newer
    with pytest.raises(asyncio.CancelledError):
        await older
    assert await asyncio.to_thread(landed.wait, 10)
    assert await cache.load("app", "new-settings") is not None


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign-key", "garbage"])
async def test_corrupt_truncated_or_foreign_files_are_ignored(
    cache: CredentialCache, tmp_path: Path, damage: str
) -> None:
    await cache.save("app", "b", creds())
    path = cache.path("app")
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign-key":
        path.write_bytes(seal(os.urandom(32), "app", "b", creds()))
    else:
        path.write_bytes(b"{not a cache file at all}")
    assert await cache.load("app", "b") is None


async def test_manager_serves_a_fresh_cached_set_without_calling_upstream(
    cache: CredentialCache,
) -> None:
    clock = FakeClock(start=NOW + 600)
    await cache.save("conn", "fake-binding", creds())
    source = FakeSource(clock, 3600)
    manager = CredentialManager({"conn": source}, clock, rng=random.Random(1), store=cache)
    await manager.start()
    try:
        await clock.advance(0)
        served = manager.get("conn")
        assert served is not None and served.access_key_id == "ASIAEXAMPLE000000001"
        assert source.calls == 0
        assert manager.states["conn"].restored
        # It is renewed on the ordinary schedule, and the new set is persisted.
        await clock.advance(1800)
        assert source.calls == 1
        persisted = None
        for _ in range(500):  # the write happens on a worker thread: give it real time
            persisted = await cache.load("conn", "fake-binding")
            if persisted is not None and persisted.access_key_id != "ASIAEXAMPLE000000001":
                break
            await asyncio.sleep(0.01)
        assert persisted is not None
        assert persisted.access_key_id == source.issued[0].access_key_id
        assert persisted.secrets() == source.issued[0].secrets()
    finally:
        await manager.stop()


async def test_manager_renews_at_once_when_the_cached_set_is_too_old(
    cache: CredentialCache,
) -> None:
    clock = FakeClock(start=NOW + 3600 - 30)  # 30 s left: below the 60 s floor
    await cache.save("conn", "fake-binding", creds())
    source = FakeSource(clock, 3600)
    manager = CredentialManager({"conn": source}, clock, rng=random.Random(1), store=cache)
    await manager.start()
    try:
        await clock.advance(0)
        assert source.calls == 1
        assert manager.get("conn") is source.issued[0]
    finally:
        await manager.stop()

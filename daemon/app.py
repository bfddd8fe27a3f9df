"""The daemon assembled: config -> connections -> manager -> servers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import aiohttp

from daemon import logs
from daemon.clock import Clock, SystemClock
from daemon.config import Config, ConfigError, RolesAnywhereConnection, load_config
from daemon.credentials import iso_z
from daemon.guards import HostGuard
from daemon.health import HealthApp
from daemon.imds import ImdsApp, ImdsIdentity
from daemon.listeners import Listener
from daemon.manager import CredentialManager, Policy
from daemon.rolesanywhere import RolesAnywhereSource, account_of
from daemon.upstream import CredentialSource, UpstreamError

log = logs.get_logger()


class UnsupportedSource:
    """Stands in for a connection type this build cannot serve yet; always says why."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind

    async def fetch(self):  # type: ignore[no-untyped-def]
        raise UpstreamError("Unsupported", f"connection type {self.kind!r} is not supported yet")

    async def close(self) -> None:
        return None


class Daemon:
    def __init__(
        self, config: Config, *, clock: Clock | None = None, policy: Policy | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.policy = policy
        self.listeners: list[Listener] = []
        self.http: aiohttp.ClientSession | None = None
        self.manager: CredentialManager | None = None

    def _source(self, connection: object) -> CredentialSource:
        if isinstance(connection, RolesAnywhereConnection):
            return RolesAnywhereSource(connection, self.clock, http=self.http)
        name = getattr(connection, "name", "?")
        return UnsupportedSource(name, getattr(connection, "type", "?"))

    def _required(self) -> list[str]:
        return [c.name for c in self.config.connections if not c.optional]

    def _describe(self, name: str) -> dict[str, object]:
        c = self.config.connection(name)
        row: dict[str, object] = {"type": c.type, "region": c.region, "notes": c.notes}
        row["role_arn"] = getattr(c, "role_arn", None)
        source = self.manager.sources[name] if self.manager else None
        if isinstance(source, RolesAnywhereSource):
            identity = source.identity.current()
            row["certificate_not_after"] = iso_z(identity.not_after) if identity else None
        return row

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        sources = {c.name: self._source(c) for c in self.config.connections}
        manager = self.manager = CredentialManager(sources, self.clock, policy=self.policy)
        for listener in self.config.imds:
            conn = self.config.connection(listener.connection)
            guard = HostGuard(listener.listen.host, aliases=("169.254.169.254",))
            imds = ImdsApp(
                ImdsIdentity(conn.name, conn.region, account_of(conn.role_arn or "")),
                lambda name=conn.name: manager.get(name),
                self.clock,
                guard,
                allow_imdsv1=listener.allow_imdsv1,
                on_served=lambda _req, name=conn.name: manager.record_use(name, f"imds:{name}"),
            )
            await self._listen(f"imds:{conn.name}", imds.app, listener.listen, guard)
        if self.config.health is not None:
            health = HealthApp(manager, self._required, self._describe)
            await self._listen("health", health.app, self.config.health.listen, None)
        await manager.start()

    async def _listen(self, door, app, address, guard: HostGuard | None) -> None:  # type: ignore[no-untyped-def]
        listener = Listener(door, app, address.host, address.port)
        self.listeners.append(listener)
        port = await listener.start()
        if guard is not None:
            guard.port = port

    def url(self, door: str) -> str:
        return next(listener.url for listener in self.listeners if listener.door == door)

    async def stop(self) -> None:
        for listener in self.listeners:
            await listener.stop()
        if self.manager is not None:
            await self.manager.stop()
        if self.http is not None:
            await self.http.close()


async def serve(config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(config)
    try:
        await daemon.start()
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        await daemon.stop()
        return 1
    ready = asyncio.create_task(_announce_ready(daemon))
    await stop.wait()
    log.info("stopping")
    ready.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ready
    await daemon.stop()
    log.info("stopped")
    return 0


async def _announce_ready(daemon: Daemon) -> None:
    assert daemon.manager is not None
    await daemon.manager.wait_ready(daemon._required())
    log.info("ready", connections=len(daemon.config.connections))


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logs.configure(config.daemon.log_format, config.daemon.log_level)
    return asyncio.run(serve(config))

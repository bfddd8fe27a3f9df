"""The daemon assembled: config -> connections -> manager -> servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp

from credential_sidecar import logs
from credential_sidecar.clock import Clock, clock_from_env
from credential_sidecar.config.changes import changed_fields, only_key_changed, same_source
from credential_sidecar.config.model import (
    AccessKeysConnection,
    Config,
    Connection,
    ImdsListener,
    RolesAnywhereConnection,
)
from credential_sidecar.doors.access import Access, ConnectionGate
from credential_sidecar.doors.audit import AuditTrail
from credential_sidecar.doors.container import ALIASES as CONTAINER_ALIASES
from credential_sidecar.doors.container import ContainerApp
from credential_sidecar.doors.container_tokens import TokenBook
from credential_sidecar.doors.control import ControlServer
from credential_sidecar.doors.credentials_file import CredentialsFiles
from credential_sidecar.doors.guards import HostGuard
from credential_sidecar.doors.health import HealthApp, readiness, status_rows
from credential_sidecar.doors.imds import ImdsApp, ImdsIdentity
from credential_sidecar.doors.listener import Listener
from credential_sidecar.doors.metrics import Metrics
from credential_sidecar.doors.peers import PeerFinder
from credential_sidecar.files import FileError
from credential_sidecar.renewal.manager import CredentialManager
from credential_sidecar.renewal.schedule import Policy
from credential_sidecar.state.cache import (
    CredentialCache,
    default_key_path,
    derive_key,
    load_or_create_key,
)
from credential_sidecar.state.records import ConnectionRecords
from credential_sidecar.state.tokens import TokenKeeper
from credential_sidecar.state.trust import check_state_dir
from credential_sidecar.systemd.activation import SocketPool, Where
from credential_sidecar.upstream.base import CredentialSource
from credential_sidecar.upstream.roles_anywhere import RolesAnywhereSource, account_of

log = logs.get_logger()

# (aiohttp app, Address, host guard or None[, hop limit])
Door = tuple[Any, Any, HostGuard | None] | tuple[Any, Any, HostGuard | None, int]
IMDS_ALIASES = ("169.254.169.254", "fd00:ec2::254")  # EC2's IPv4 and IPv6 IMDS addresses


class Daemon:
    def __init__(
        self, config: Config, *, clock: Clock | None = None, policy: Policy | None = None,
        sockets: SocketPool | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets or SocketPool()  # listening sockets systemd passed us, if any
        self.clock = clock or clock_from_env()
        self.policy = policy
        self.listeners: list[Listener] = []
        self.http: aiohttp.ClientSession | None = None
        self.manager: CredentialManager | None = None
        self.metrics: Metrics | None = None
        self.tokens = TokenBook()  # container tokens, kept in sync with the connections
        self.control: ControlServer | None = None
        self.records = ConnectionRecords(config.daemon.state_dir)  # ids, created, modified
        self.token_key: bytes | None = None  # IMDS tokens: derived from the cache key
        self.token_keeper: TokenKeeper | None = None  # container tokens kept across reboots
        self.listen_problems: dict[str, str] = {}  # door -> why it is not listening
        self.credential_files: CredentialsFiles | None = None  # [[credentials_file]]
        self._chores: list[asyncio.Task[None]] = []
        self.access: Access | None = None  # built with the first TCP door (_access)
        self.audit = AuditTrail(self.clock)  # every door's hand-outs and refusals
        self._by_name: tuple[Config | None, dict[str, Any]] = (None, {})  # see _grantee

    def _source(self, connection: object) -> CredentialSource:
        if isinstance(connection, RolesAnywhereConnection):
            return RolesAnywhereSource(connection, self.clock, http=self.http,
                                       daemon_ca_bundle=self.config.daemon.ca_bundle)
        if isinstance(connection, AccessKeysConnection):
            from credential_sidecar.upstream.access_keys import AccessKeySource

            return AccessKeySource(connection, self.clock,
                                   warn_after_days=self.config.daemon.key_age_warning_days,
                                   daemon_ca_bundle=self.config.daemon.ca_bundle)
        raise TypeError(f"no credential source for {type(connection).__name__}")

    def _required(self) -> list[str]:
        return [c.name for c in self.config.connections if not c.optional]

    def _describe(self, name: str) -> dict[str, object]:
        c = self.config.connection(name)
        row: dict[str, object] = {"type": c.type, "region": c.region, "notes": c.notes}
        row.update(self.records.row(name))  # id, created, modified
        row["role_arn"] = getattr(c, "role_arn", None)
        source = self.manager.sources.get(name) if self.manager else None
        if source is not None:  # certificate expiry and key store, or key id and age
            row.update(source.describe())
        row["optional"] = c.optional
        if self.credential_files is not None:
            row["credentials_files"] = [str(f.path) for f in self.credential_files.files
                                        if name in f.connections]
        if self.config.container is not None and name in self.tokens.paths:
            row["container_token_file"] = str(self.tokens.paths[name])
        return row

    def _store(self) -> CredentialCache | None:
        state_dir = self.config.daemon.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key_file = self.config.daemon.cache_key_file or default_key_path(state_dir)
            key = load_or_create_key(key_file, ours=key_file.parent == state_dir)
        except (OSError, FileError) as exc:
            log.warning("credential cache disabled: sets will not survive a restart",
                        error=str(exc))
            return None
        self.token_key = derive_key(key, "imds-token")
        self.token_keeper = TokenKeeper(state_dir / "kept-tokens", key)
        return CredentialCache(state_dir / "cache", key)

    def _doors(self, config: Config) -> dict[str, tuple[object, Callable[[], Door]]]:
        """Every listener the config asks for: door name -> (its settings, how to build it)."""
        doors: dict[str, tuple[object, Callable[[], Door]]] = {}
        seen: dict[str, int] = {}
        for listener in config.imds:  # several per connection: imds:NAME, imds:NAME:2, ...
            n = seen[listener.connection] = seen.get(listener.connection, 0) + 1
            door = f"imds:{listener.connection}" + (f":{n}" if n > 1 else "")
            doors[door] = (listener, partial(self._imds_door, listener))
        if config.container is not None:
            doors["container"] = (config.container, self._container_door)
        if config.health is not None:
            doors["health"] = (config.health, self._health_door)
        return doors

    def _container_door(self) -> Door:
        assert self.config.container is not None
        manager = self._manager()
        self.tokens.sync(self.config.connections, self.config.daemon.state_dir,
                         self.token_keeper)
        guard = HostGuard(self.config.container.listen.host, aliases=CONTAINER_ALIASES)
        container = ContainerApp(self.tokens, manager.get, guard, access=self._access())
        return container.app, self.config.container.listen, guard

    def _imds_door(self, listener: ImdsListener) -> Door:
        manager = self._manager()
        conn = self.config.connection(listener.connection)
        guard = HostGuard(listener.listen.host, aliases=IMDS_ALIASES)
        name = conn.name
        imds = ImdsApp(
            ImdsIdentity(name, conn.region, account_of(getattr(conn, "role_arn", None) or "")),
            lambda: manager.get(name),
            self.clock,
            guard,
            allow_imdsv1=listener.allow_imdsv1,
            # One key per listener: a token from one connection's door is refused at another's.
            token_key=derive_key(self.token_key, f"imds:{name}") if self.token_key else None,
            access=self._access(),
            door=f"imds:{name}",
        )
        return imds.app, listener.listen, guard, listener.hop_limit

    def _health_door(self) -> Door:
        assert self.config.health is not None
        guard = HostGuard(self.config.health.listen.host)  # DNS rebinding: /status, /metrics
        health = HealthApp(self._manager(), self._required, self._describe, self.door_problems,
                           guard=guard)
        health.app.router.add_get("/metrics", self._metrics().handle)
        return health.app, self.config.health.listen, guard

    # -- who may take a set over TCP (doors/access.py) ----------------------------------------

    def _access(self) -> Access:
        """One Access for every TCP door: the kernel's peer lookup, the per-connection cache,
        the allowed_uids/allowed_gids rule, the audit trail."""
        if self.access is None:
            self.access = Access(PeerFinder(), self._grantee, self.audit,
                                 record_use=self._manager().record_use,
                                 count=self._metrics().handout)
        return self.access

    def _check_paths(self) -> None:
        """Refuse to start on a state_dir (or cache key, cache entry) the daemon did not make:
        FileError naming the path (state/trust.py)."""
        daemon = self.config.daemon
        check_state_dir(daemon.state_dir,
                        daemon.cache_key_file or default_key_path(daemon.state_dir))

    def _gate(self, door: str) -> ConnectionGate:
        """Each TCP door's cap on open connections, in all and per peer uid."""
        return ConnectionGate(door, self._access(), on_reject=self._metrics().rejected)

    def _metrics(self) -> Metrics:
        assert self.metrics is not None, "metrics are built with the manager"
        return self.metrics

    def _control_status(self) -> dict[str, object]:
        """The control socket's status op: /status rows plus readiness."""
        body = readiness(self._manager(), self._required(), self.door_problems())
        body.setdefault("not_ready", {})
        body["connections"] = status_rows(self._manager(), self._describe)
        return body

    def _grantee(self, name: str) -> Any:
        """Asked on every credential request: a dict per config, not a scan of its connections
        (Config.connection), which cost each request time in proportion to their number."""
        config, by_name = self._by_name
        if config is not self.config:
            config, by_name = self._by_name = (
                self.config, {c.name: c for c in reversed(self.config.connections)})  # first wins
        return by_name.get(name)

    async def _start_control(self) -> None:
        if self.config.control is None:
            return
        path = self.config.control.socket
        self.control = ControlServer(path, self._manager(), self._grantee, self._control_status,
                                     on_answer=self._metrics().count, audit=self.audit,
                                     sock=self.sockets.socket_for(ControlServer.door, path))
        await self.control.start()

    async def _stop_control(self) -> None:
        if self.control is not None:
            await self.control.stop()
            self.control = None

    def _manager(self) -> CredentialManager:
        assert self.manager is not None, "the manager is built before any door"
        return self.manager

    async def start(self) -> None:
        await asyncio.to_thread(self._check_paths)
        await asyncio.to_thread(self.records.sync, self.config.connections, self.clock.time())
        self.http = aiohttp.ClientSession()
        sources = {c.name: self._source(c) for c in self.config.connections}
        self.manager = CredentialManager(
            sources, self.clock, policy=self.policy, store=self._store()
        )
        self.metrics = Metrics(self.manager, self._describe)
        self.manager.on_upstream = self.metrics.observe_upstream
        self.credential_files = CredentialsFiles(self.clock, self.manager.get)
        self.manager.on_renewed.append(self.credential_files.renewed)
        # Every cached set is restored before a door accepts anyone: a restart never answers
        # "no credentials yet" for a set that sits fresh in the cache.
        await self.manager.restore()
        await self.credential_files.start(self.config.credentials_file)
        doors = self._doors(self.config)
        listens: dict[str, Where] = {
            door: spec.listen for door, (spec, _) in doors.items()}  # type: ignore[attr-defined]
        if self.config.control is not None:
            listens[ControlServer.door] = self.config.control.socket
        self.sockets.assign(listens)
        for door, (_, build) in doors.items():
            await self._listen(door, *build())
        self.sockets.release_unclaimed()
        await self._start_control()
        await self.manager.start()
        self._chores.append(asyncio.create_task(self._retry_token_files(), name="token-files"))

    def door_problems(self) -> dict[str, str]:
        """What keeps a door from serving a connection: listeners not bound, token files."""
        problems = dict(self.listen_problems)
        if self.config.container is not None:
            problems.update({f"container:{name}": why for name, why in self.tokens.problems.items()
                             if name in {c.name for c in self.config.connections}})
        if self.credential_files is not None:
            problems.update(self.credential_files.door_problems())
        return problems

    async def _retry_token_files(self) -> None:
        """A token file that could not be made (full disk, a missing directory) is tried again
        on a schedule, not only at the next reload; /readyz names it meanwhile."""
        while True:
            await self.clock.sleep(TOKEN_RETRY_SECONDS)
            if self.config.container is not None and self.tokens.problems:
                await asyncio.to_thread(self.tokens.sync, self.config.connections,
                                        self.config.daemon.state_dir, self.token_keeper)

    async def _listen(self, door, app, address, guard: HostGuard | None,  # type: ignore[no-untyped-def]
                      hop_limit: int | None = None) -> None:
        sock = self.sockets.socket_for(door, address)
        self._metrics().attach(door, app)
        listener = Listener(door, app, address.host, address.port, sock=sock,
                            gate=self._gate(door), hop_limit=hop_limit)
        port = await listener.start()
        self.listeners.append(listener)
        self.listen_problems.pop(door, None)
        if guard is not None:
            guard.port = port

    async def reload(self, config: Config) -> None:
        """Apply a new config: unchanged connections keep their sets and schedules."""
        manager = self._manager()
        # Records first, so /status never shows the new settings with the old modified time.
        await asyncio.to_thread(self.records.sync, config.connections, self.clock.time())
        old, self.config = self.config, config
        if config.daemon.state_dir != old.daemon.state_dir:
            log.warning("state_dir changes take effect at the next restart")
        logs.configure(config.daemon.log_format, config.daemon.log_level)
        before = {c.name: c for c in old.connections}
        after = {c.name: c for c in config.connections}
        for name in before.keys() - after.keys():
            await manager.remove(name)
            log.info("connection removed", connection=name)
        for name, conn in after.items():
            await self._reload_connection(before.get(name), conn)
        old_doors, new_doors = self._doors(old), self._doors(config)
        for listener in list(self.listeners):
            spec = new_doors.get(listener.door)
            if spec is None or spec[0] != old_doors.get(listener.door, (None,))[0]:
                await listener.stop()
                self.listeners.remove(listener)
        running = {listener.door for listener in self.listeners}
        for door in list(self.listen_problems):
            if door not in new_doors:
                del self.listen_problems[door]
        for door, (_, build) in new_doors.items():
            if door not in running:
                try:
                    await self._listen(door, *build())
                except OSError as exc:  # the other doors still get their new settings
                    self.listen_problems[door] = f"not listening: {exc.strerror or exc}"
                    log.error("a listener could not start", door=door, error=str(exc))
        if config.container is not None and "container" in running:
            self.tokens.sync(config.connections, config.daemon.state_dir,  # new, changed files
                             self.token_keeper)
        if config.control != old.control:
            await self._stop_control()
            await self._start_control()
        if self.credential_files is not None:
            await self.credential_files.reload(config.credentials_file)

    async def _reload_connection(self, before: Connection | None, after: Connection) -> None:
        """Keep what a reload did not change; make before break what it did."""
        name, manager = after.name, self._manager()
        if before is None:
            await manager.add(name, self._source(after))
            log.info("connection started", connection=name)
            return
        source = manager.sources[name]  # every connection of the running config has one
        if before == after:  # SIGHUP also re-reads certificate and secret key files
            if await source.recheck():
                manager.refresh_now(name)
        elif same_source(before, after):
            log.info("connection settings changed; credentials unaffected", connection=name)
        elif only_key_changed(before, after) and await source.rekey(after):
            manager.refresh_now(name)  # the current set stays served until the new key's
        else:
            reason = "changed " + ", ".join(changed_fields(before, after))
            await manager.replace(name, self._source(after), reason)
            log.info("connection changed: new settings get their first set while the current"
                     " one keeps being served", connection=name, reason=reason)

    def url(self, door: str) -> str:
        return next(listener.url for listener in self.listeners if listener.door == door)

    async def stop(self) -> None:
        """Every door at once: stop accepting, answer what was accepted, close idle keep-alive
        connections (bounded by the listeners' shutdown timeout, well under systemd's
        TimeoutStopSec), then the schedules."""
        for chore in self._chores:
            chore.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        await asyncio.gather(self._stop_control(), *(lst.stop() for lst in self.listeners))
        self.listeners.clear()
        if self.manager is not None:
            await self.manager.stop()
        if self.credential_files is not None:
            await self.credential_files.stop()
        if self.http is not None:
            await self.http.close()
        if self.access is not None:
            self.access.finder.close()
        self.sockets.close()


TOKEN_RETRY_SECONDS = 30.0












